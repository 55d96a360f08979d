"""StageQueues: what a producer puts on the queue is what the Functions host can read (base64 JSON pointers)."""

from __future__ import annotations

import base64
import json

import pytest

from shared.errors import FailRun
from shared.queues import MAX_ENCODED_MESSAGE_BYTES, BadMessage, StageMessage, StageQueues, encode_message
from shared.settings import Settings


@pytest.mark.azurite
def test_sent_message_is_base64_json_as_the_host_expects(azurite, queue_service, queue_prefix):
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r", "batch": 17})

    (stored,) = queue_service.get_queue_client(queue_prefix).peek_messages()

    assert json.loads(base64.b64decode(stored.content)) == {"v": 1, "export": "vip", "runId": "r", "batch": 17}


@pytest.mark.azurite
def test_delayed_message_is_invisible_until_the_delay_passes(azurite, queue_service, queue_prefix):
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "e", "runId": "r"}, 60)

    client = queue_service.get_queue_client(queue_prefix)
    assert client.peek_messages() == []
    assert client.get_queue_properties().approximate_message_count == 1


@pytest.mark.azurite
def test_ensure_queues_creates_each_queue_and_its_poison_twin(azurite, queue_service, queue_prefix):
    names = [f"{queue_prefix}-plan", f"{queue_prefix}-send"]

    checked = StageQueues.from_connection_string(azurite).ensure_queues(names)
    StageQueues.from_connection_string(azurite).ensure_queues(names)  # twice: already there is fine

    existing = sorted(q.name for q in queue_service.list_queues(name_starts_with=queue_prefix))
    assert existing == sorted(checked) == sorted(names + [n + "-poison" for n in names])


@pytest.mark.azurite
def test_from_settings_uses_the_connection_string(azurite, queue_service, queue_prefix):
    settings = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})

    StageQueues.from_settings(settings).send(queue_prefix, StageMessage("vip", "r", batch=3))

    (stored,) = queue_service.get_queue_client(queue_prefix).peek_messages()
    assert StageMessage.parse(base64.b64decode(stored.content)) == StageMessage("vip", "r", batch=3)


def test_message_too_large_after_base64_is_refused_with_the_sizes():
    # 48 KiB of JSON is 64 KiB of base64: just over the limit.
    big = {"v": 1, "export": "e", "runId": "r", "note": "x" * (48 * 1024)}

    with pytest.raises(BadMessage, match=f"limit is {MAX_ENCODED_MESSAGE_BYTES}") as caught:
        encode_message(big)

    assert isinstance(caught.value, FailRun)


def test_lists_are_refused_so_contact_data_cannot_ride_in_a_message():
    with pytest.raises(BadMessage, match="contacts"):
        encode_message({"v": 1, "export": "e", "runId": "r", "contacts": [{"email": "a@example.com"}]})


def test_stage_message_round_trips_with_extra_fields_and_counts_attempts():
    message = StageMessage("vip", "20261129T0605Z-ab12", batch=17, extra={"stage": "send"})

    parsed = StageMessage.parse(encode_message(message.retried().to_dict()))

    assert parsed.to_dict() == {
        "v": 1,
        "export": "vip",
        "runId": "20261129T0605Z-ab12",
        "batch": 17,
        "attempt": 1,
        "stage": "send",
    }


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"not json", "not JSON"),
        (b'{"v": 2, "export": "e", "runId": "r"}', "version 2"),
        (b'{"v": 1, "runId": "r"}', "lacks 'export'"),
        (b'{"v": 1, "export": "e", "runId": "r", "batch": -1}', "'batch'"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_message_is_refused_with_the_reason(body, problem):
    with pytest.raises(BadMessage, match=problem):
        StageMessage.parse(body)


def test_settings_without_queue_storage_say_what_to_set():
    with pytest.raises(FailRun, match="AzureWebJobsStorage__queueServiceUri"):
        StageQueues.from_settings(Settings())
