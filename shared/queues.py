"""Storage-queue hand-off between the stages of the Functions orchestrator.

A message is a small pointer to work already written to the object store, e.g.
``{"v": 1, "export": "vip", "runId": "20261129T0605Z-ab12", "batch": 17, "attempt": 0}``: never contact data
(the queue limit is 64 KiB, and a queue is no place for personal data). Messages are base64-encoded because the
Functions queue trigger expects base64 by default; plain text would fail to decode and, after maxDequeueCount
silent failures, land in the poison queue.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.errors import ConfigError, FailRun
from shared.names import POISON_SUFFIX, STAGE_QUEUES

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.settings import Settings

MESSAGE_VERSION = 1
# Storage queues refuse messages over 64 KiB after encoding; base64 leaves about 48 KiB of JSON.
MAX_ENCODED_MESSAGE_BYTES = 64 * 1024
# A message may only be made invisible for up to 7 days (the default time-to-live) when sent.
MAX_DELAY_SECONDS = 7 * 24 * 3600
# Values a pointer message may carry. Lists and objects are refused so a batch of contacts can never be
# smuggled into a message by mistake.
_SCALARS = (str, int, float, bool, type(None))


class BadMessage(FailRun):
    """A queue message does not follow the pointer schema (or is too large). A code bug, not a transient."""


@dataclass(frozen=True)
class StageMessage:
    """The pointer every stage message carries; ``extra`` holds a stage's own small scalar fields."""

    export: str
    run_id: str
    batch: int | None = None
    attempt: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"v": MESSAGE_VERSION, "export": self.export, "runId": self.run_id}
        if self.batch is not None:
            message["batch"] = self.batch
        message["attempt"] = self.attempt
        for key, value in self.extra.items():
            if key in message:
                raise BadMessage(f"extra field {key!r} clashes with a schema field")
            message[key] = value
        _check_scalars(message)
        return message

    def retried(self) -> StageMessage:
        """The same pointer with ``attempt`` + 1: for re-sending with a delay (a re-sent message's dequeue count
        starts again at 1, so the attempt number is what bounds retries)."""
        return StageMessage(self.export, self.run_id, self.batch, self.attempt + 1, dict(self.extra))

    @classmethod
    def parse(cls, body: str | bytes | Mapping[str, Any]) -> StageMessage:
        """From a decoded queue body (``func.QueueMessage.get_body()``) or an already parsed dict."""
        if isinstance(body, Mapping):
            data = dict(body)
        else:
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadMessage(f"queue message is not JSON: {exc}") from None
            except RecursionError:
                raise BadMessage("queue message is nested too deeply to be one of ours") from None
        if not isinstance(data, dict):
            raise BadMessage("queue message is not a JSON object")
        if data.get("v") != MESSAGE_VERSION:
            raise BadMessage(f"queue message version {data.get('v')!r} is not {MESSAGE_VERSION}")
        export, run_id = data.get("export"), data.get("runId")
        if not isinstance(export, str) or not export or not isinstance(run_id, str) or not run_id:
            raise BadMessage("queue message lacks 'export' or 'runId'")
        batch, attempt = data.get("batch"), data.get("attempt", 0)
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 0):
            raise BadMessage(f"queue message 'batch' must be a whole number >= 0, not {batch!r}")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            raise BadMessage(f"queue message 'attempt' must be a whole number >= 0, not {attempt!r}")
        _check_scalars(data)
        extra = {k: v for k, v in data.items() if k not in ("v", "export", "runId", "batch", "attempt")}
        return cls(export, run_id, batch, attempt, extra)


def encode_message(message: Mapping[str, Any]) -> str:
    """The JSON text that is sent, after checking that its base64 form fits in a queue message."""
    _check_scalars(message)
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    encoded = len(base64.b64encode(text.encode("utf-8")))
    if encoded >= MAX_ENCODED_MESSAGE_BYTES:
        raise BadMessage(
            f"queue message is {encoded} bytes after base64 encoding; the limit is {MAX_ENCODED_MESSAGE_BYTES}. "
            "Messages must point at data in the object store, not carry it."
        )
    return text


def _check_scalars(message: Mapping[str, Any]) -> None:
    for key, value in message.items():
        if not isinstance(key, str) or not isinstance(value, _SCALARS):
            raise BadMessage(f"queue message field {key!r} must be a scalar (a pointer, never a list of data)")


class StageQueues:
    """Sends stage messages and creates the stage queues (and their poison twins)."""

    def __init__(self, service: QueueServiceClient) -> None:
        self._service = service
        self._clients: dict[str, QueueClient] = {}

    @classmethod
    def from_connection_string(cls, connection_string: str) -> StageQueues:
        return cls(QueueServiceClient.from_connection_string(connection_string))

    @classmethod
    def from_settings(cls, settings: Settings, credential: TokenCredential | None = None) -> StageQueues:
        """Connection string (Azurite, local) or the identity-based queue endpoint the Functions host also uses."""
        if settings.storage_connection_string:
            return cls.from_connection_string(settings.storage_connection_string)
        if settings.queue_service_uri:
            if credential is None:
                # Imported here: only needed in Azure; keeps cold starts short.
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
            return cls(QueueServiceClient(settings.queue_service_uri, credential=credential))
        raise ConfigError(
            "no Azure queue storage configured: set AzureWebJobsStorage (a connection string, or "
            "UseDevelopmentStorage=true for Azurite) or AzureWebJobsStorage__queueServiceUri (+ __clientId)",
            source="environment",
        )

    def client(self, queue_name: str) -> QueueClient:
        """A client that base64-encodes on send and decodes on receive, as the Functions host does."""
        if queue_name not in self._clients:
            self._clients[queue_name] = self._service.get_queue_client(
                queue_name,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )
        return self._clients[queue_name]

    def send(self, queue_name: str, message: Mapping[str, Any] | StageMessage, delay_seconds: int = 0) -> str:
        """Enqueue one pointer message, invisible for ``delay_seconds``; returns the queue's message id."""
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"delay_seconds must be between 0 and {MAX_DELAY_SECONDS}, not {delay_seconds}")
        data = message.to_dict() if isinstance(message, StageMessage) else message
        text = encode_message(data)
        queue = self.client(queue_name)
        try:
            sent = queue.send_message(text, visibility_timeout=delay_seconds or None)
        except ResourceNotFoundError:
            # Locally the queue may not exist yet; in Azure the template creates every queue up front.
            self._create(queue_name)
            sent = queue.send_message(text, visibility_timeout=delay_seconds or None)
        return sent.id

    def ensure_queues(self, names: Iterable[str] = STAGE_QUEUES) -> list[str]:
        """Create each stage queue and its ``-poison`` twin if missing; returns every name checked."""
        checked: list[str] = []
        for name in names:
            for queue_name in (name, name + POISON_SUFFIX):
                self._create(queue_name)
                checked.append(queue_name)
        return checked

    def _create(self, queue_name: str) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._service.create_queue(queue_name)
