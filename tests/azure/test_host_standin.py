"""The host stand-in follows the Functions host's documented queue semantics over real Azurite queues.

Each test defines a throw-away FunctionApp whose queue names are unique to the test.
"""

from __future__ import annotations

import base64
import json

import azure.functions as func
import pytest
from azure.storage.queue import QueueServiceClient

from shared.queues import StageQueues
from tests.azure.host_standin import HostStandIn, UnsupportedBinding

# visibilityTimeout 0: a failed message is visible again at once, so retries need no waiting.
FAST_RETRY_HOST = {
    "version": "2.0",
    "extensions": {"queues": {"batchSize": 4, "maxDequeueCount": 3, "visibilityTimeout": "00:00:00"}},
}


def flaky_app(queue: str, failures: int, seen: list[func.QueueMessage]) -> func.FunctionApp:
    """A queue function that raises on its first ``failures`` deliveries of any message."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.queue_trigger(arg_name="msg", queue_name=queue, connection="AzureWebJobsStorage")
    def work(msg: func.QueueMessage) -> None:
        seen.append(msg)
        if len(seen) <= failures:
            raise RuntimeError(f"failure {len(seen)}")

    return app


def visible_bodies(service: QueueServiceClient, queue: str) -> list[str]:
    return [base64.b64decode(m.content).decode() for m in service.get_queue_client(queue).peek_messages(32)]


@pytest.mark.azurite
def test_success_delivers_decoded_body_and_deletes_the_message(azurite, queue_service, queue_prefix):
    seen: list[func.QueueMessage] = []
    host = HostStandIn(flaky_app(queue_prefix, 0, seen), host_json=FAST_RETRY_HOST)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r1"})

    result = host.pump()

    assert result.idle and result.outcomes() == ["succeeded"]
    assert json.loads(seen[0].get_body()) == {"v": 1, "export": "vip", "runId": "r1"}
    assert seen[0].dequeue_count == 1 and seen[0].id
    assert visible_bodies(queue_service, queue_prefix) == []
    assert queue_service.get_queue_client(queue_prefix).get_queue_properties().approximate_message_count == 0


@pytest.mark.azurite
def test_failures_below_max_dequeue_count_are_retried_then_succeed(azurite, queue_service, queue_prefix):
    seen: list[func.QueueMessage] = []
    host = HostStandIn(flaky_app(queue_prefix, 2, seen), host_json=FAST_RETRY_HOST)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r2"})

    result = host.pump()

    assert result.outcomes() == ["failed", "failed", "succeeded"]
    assert [m.dequeue_count for m in seen] == [1, 2, 3]
    assert queue_service.get_queue_client(queue_prefix).get_queue_properties().approximate_message_count == 0


@pytest.mark.azurite
def test_message_failing_max_dequeue_count_times_moves_to_poison_queue_unchanged(azurite, queue_service, queue_prefix):
    seen: list[func.QueueMessage] = []
    host = HostStandIn(flaky_app(queue_prefix, 99, seen), host_json=FAST_RETRY_HOST)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r3"})

    result = host.pump()

    assert result.outcomes() == ["failed", "failed", "poisoned"]  # maxDequeueCount 3 from host.json
    assert str(result.invocations[-1].error) == "failure 3"
    assert visible_bodies(queue_service, queue_prefix) == []
    assert [json.loads(b) for b in visible_bodies(queue_service, queue_prefix + "-poison")] == [
        {"v": 1, "export": "vip", "runId": "r3"}
    ]


@pytest.mark.azurite
def test_default_max_dequeue_count_is_five_without_host_json(azurite, queue_service, queue_prefix):
    seen: list[func.QueueMessage] = []
    host = HostStandIn(flaky_app(queue_prefix, 99, seen))
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r4"})

    result = host.pump()

    assert result.outcomes() == ["failed"] * 4 + ["poisoned"]


@pytest.mark.azurite
def test_failed_message_stays_hidden_for_host_json_visibility_timeout(azurite, queue_service, queue_prefix):
    seen: list[func.QueueMessage] = []
    slow_retry = {"extensions": {"queues": {"maxDequeueCount": 3, "visibilityTimeout": "00:01:00"}}}
    host = HostStandIn(flaky_app(queue_prefix, 99, seen), host_json=slow_retry)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "vip", "runId": "r5"})

    result = host.pump()

    assert result.idle and result.outcomes() == ["failed"]  # not retried: hidden for a minute
    client = queue_service.get_queue_client(queue_prefix)
    assert client.peek_messages() == []
    assert client.get_queue_properties().approximate_message_count == 1


@pytest.mark.azurite
def test_plain_text_message_is_undecodable_and_ends_in_poison_without_reaching_the_function(
    azurite, queue_service, queue_prefix
):
    seen: list[func.QueueMessage] = []
    host = HostStandIn(flaky_app(queue_prefix, 0, seen), host_json=FAST_RETRY_HOST)
    client = queue_service.get_queue_client(queue_prefix)
    client.create_queue()
    client.send_message('{"v": 1}')  # no base64 policy: the classic producer bug

    result = host.pump()

    assert result.outcomes() == ["failed", "failed", "poisoned"]
    assert seen == []


@pytest.mark.azurite
def test_queue_name_binding_expression_is_resolved_from_app_settings(azurite, queue_service, queue_prefix):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    seen: list[bytes] = []

    @app.queue_trigger(arg_name="item", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
    def work(item: func.QueueMessage) -> None:
        seen.append(item.get_body())

    host = HostStandIn(app, app_settings={"WORK_QUEUE": queue_prefix}, host_json=FAST_RETRY_HOST)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "e", "runId": "r6"})

    assert host.queue_names == {"work": queue_prefix}
    assert host.pump().outcomes() == ["succeeded"]
    assert json.loads(seen[0]) == {"v": 1, "export": "e", "runId": "r6"}


@pytest.mark.azurite
def test_function_needing_an_output_binding_is_reported_as_unsupported(azurite, queue_prefix):
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.queue_trigger(arg_name="msg", queue_name=queue_prefix, connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name=queue_prefix + "-out", connection="AzureWebJobsStorage")
    def forward(msg: func.QueueMessage, out: func.Out[str]) -> None:
        out.set(msg.get_body().decode())

    host = HostStandIn(app, host_json=FAST_RETRY_HOST)
    StageQueues.from_connection_string(azurite).send(queue_prefix, {"v": 1, "export": "e", "runId": "r7"})

    with pytest.raises(UnsupportedBinding, match="out"):
        host.pump()


def http_app(calls: list[func.HttpRequest]) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="exports/{name}/runs", methods=["POST"])
    def start_run(req: func.HttpRequest) -> func.HttpResponse:
        calls.append(req)
        return func.HttpResponse(json.dumps({"export": req.route_params["name"]}), status_code=202)

    @app.route(route="exports/{name}/runs/{run_id}", methods=["GET"])
    def run_status(req: func.HttpRequest) -> func.HttpResponse:
        calls.append(req)
        if req.route_params["run_id"] == "boom":
            raise RuntimeError("status unreadable")
        return func.HttpResponse(req.route_params["run_id"], status_code=200)

    @app.timer_trigger(schedule="%EXPORT_SCHEDULE%", arg_name="timer")
    def scheduled(timer: func.TimerRequest) -> None:
        calls.append(timer)

    return app


def test_http_route_params_query_and_json_body_reach_the_function():
    calls: list = []
    host = HostStandIn(http_app(calls))

    response = host.http("POST", "/api/exports/vip/runs", body={"dryRun": True}, params={"full": "1"})

    assert response.status_code == 202 and json.loads(response.get_body()) == {"export": "vip"}
    request = calls[0]
    assert request.method == "POST" and request.route_params == {"name": "vip"}
    assert request.params == {"full": "1"} and request.get_json() == {"dryRun": True}
    assert request.url == "http://localhost:7071/api/exports/vip/runs?full=1"


def test_http_method_and_route_select_the_function():
    calls: list = []
    host = HostStandIn(http_app(calls))

    assert host.http("GET", "exports/vip/runs/r-17").get_body() == b"r-17"
    assert host.http("GET", "exports/vip/runs").status_code == 404  # only POST is bound there
    assert host.http("POST", "exports/vip/nothing").status_code == 404


def test_http_exception_becomes_500_and_is_recorded():
    host = HostStandIn(http_app([]))

    response = host.http("GET", "exports/vip/runs/boom")

    assert response.status_code == 500
    assert [str(e) for e in host.errors] == ["status unreadable"]


def test_timer_fires_with_a_timer_request():
    calls: list = []
    host = HostStandIn(http_app(calls))

    host.timer("scheduled", past_due=True)

    assert len(calls) == 1 and calls[0].past_due is True
