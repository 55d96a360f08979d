"""A stand-in for the Azure Functions host, for tests: drives any ``func.FunctionApp`` over REAL Azurite queues.

The real host cannot run offline (Core Tools downloads it; the container image needs Docker), so this reproduces
the host's *documented* queue-trigger semantics, reading everything from the app itself:

- which functions exist, their trigger types, queue names (``%SETTING%`` expressions resolved from
  ``app_settings``), connection names and argument names come from ``app.get_functions()``: nothing is duplicated;
- ``batchSize``, ``maxDequeueCount``, ``visibilityTimeout`` and ``messageEncoding`` come from host.json
  (``extensions.queues``), with the extension's defaults (16, 5, 0 s, base64) when absent;
- ``pump()``: receive up to ``batchSize`` messages (hidden for 10 minutes, like the host's initial dequeue),
  skip-to-poison any message already past ``maxDequeueCount``, base64-decode, build a real
  ``azure.functions.QueueMessage`` (id, body, dequeue_count, times, pop_receipt), call the user function;
  on success delete the message; on an exception (or undecodable base64) make it visible again after
  ``visibilityTimeout`` (``update_message``), or, once ``dequeue_count >= maxDequeueCount``, copy it unchanged to
  ``<queue>-poison`` (created if missing) and delete the original. A queue whose name already ends in ``-poison``
  has no poison queue of its own: its failures are retried without limit, as in the host;
- ``http(method, route, ...)``: finds the HTTP function whose route template (``{name}``, ``{name:constraint}``,
  ``{name?}``, ``{*rest}``) and methods match, calls it with a real ``func.HttpRequest`` (route params filled);
  an exception becomes a 500 response (recorded in ``errors``), an unmatched route a 404;
- ``timer(name)``: calls a timer function with ``azure.functions.timer.TimerRequest(past_due=...)``.

What it does NOT reproduce (only a deployment shows these; keep the post-deploy smoke test):
- concurrency: messages are processed one at a time, in one thread, in receive order; the host runs up to
  ``batchSize + newBatchThreshold`` per function per instance in parallel, across many instances;
- polling and timing: no ``maxPollingInterval`` back-off, no visibility renewal while a function runs, no
  ``functionTimeout``; a function that runs past the 10-minute initial visibility is not handled;
- scaling, instances, host restarts and crash-redelivery (it never loses a message mid-invocation);
- output bindings, input bindings and ``func.Context``: only the trigger argument is passed (a function that needs
  more raises ``UnsupportedBinding``); return values are ignored for queue and timer functions;
- HTTP: no auth-level/function-key checks, no 230 s response cut, no ``x-ms-*`` headers, no CORS, no
  ``routePrefix`` other than host.json's value; timer: no schedule evaluation, ``use_monitor``, singleton lock or
  ``run_on_startup`` (tests call ``timer()`` when they want a fire);
- identity-based connections and Key Vault references in app settings: connections are connection strings;
- retry policies (``@app.retry``), Application Insights, the host's own logs and metrics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueClient, QueueServiceClient

from shared.settings import AZURITE_CONNECTION_STRING

# Defaults of the Storage-queues extension (5.x) when host.json leaves a value out.
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_DEQUEUE_COUNT = 5
DEFAULT_VISIBILITY_TIMEOUT = timedelta(0)
# The host dequeues with a 10-minute visibility and renews it while the function runs; we just use 10 minutes.
INITIAL_VISIBILITY_SECONDS = 600
POISON_SUFFIX = "-poison"
DEFAULT_ROUTE_PREFIX = "api"
BASE_URL = "http://localhost:7071"


class UnsupportedBinding(RuntimeError):
    """The function needs a binding the stand-in does not provide (see the module docstring)."""


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    visibility_timeout: timedelta = DEFAULT_VISIBILITY_TIMEOUT
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, host: Mapping[str, Any]) -> QueueOptions:
        queues = host.get("extensions", {}).get("queues", {})
        return cls(
            batch_size=int(queues.get("batchSize", DEFAULT_BATCH_SIZE)),
            max_dequeue_count=int(queues.get("maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT)),
            visibility_timeout=_timespan(queues.get("visibilityTimeout")) or DEFAULT_VISIBILITY_TIMEOUT,
            message_encoding=str(queues.get("messageEncoding", "base64")).lower(),
        )


@dataclass(frozen=True)
class Invocation:
    function: str
    queue: str
    message_id: str
    dequeue_count: int
    outcome: str  # "succeeded" | "failed" (will be retried) | "poisoned" (moved to <queue>-poison)
    error: BaseException | None = None


@dataclass
class PumpResult:
    invocations: list[Invocation] = field(default_factory=list)
    idle: bool = False  # True: every trigger queue had no visible message when pump() returned

    def outcomes(self, function: str | None = None) -> list[str]:
        return [i.outcome for i in self.invocations if function is None or i.function == function]


@dataclass(frozen=True)
class _QueueFunction:
    name: str
    queue: str
    arg_name: str
    connection: str
    user_function: Callable[..., Any]


@dataclass(frozen=True)
class _HttpFunction:
    name: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    arg_name: str
    user_function: Callable[..., Any]


class HostStandIn:
    def __init__(
        self,
        app: func.FunctionApp,
        *,
        host_json: Path | str | Mapping[str, Any] | None = None,
        app_settings: Mapping[str, str] | None = None,
        queue_prefix: str = "",
    ) -> None:
        host = _load_host_json(host_json)
        # Put in front of every physical queue name, so test runs sharing one Azurite (parallel checkouts) never
        # take each other's messages; the app's producer must add the same prefix (concurrent_host.PrefixedQueues).
        self.queue_prefix = queue_prefix
        self.options = QueueOptions.from_host_json(host)
        self.route_prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", DEFAULT_ROUTE_PREFIX)
        self.app_settings = {"AzureWebJobsStorage": AZURITE_CONNECTION_STRING, **(app_settings or {})}
        self.errors: list[BaseException] = []  # exceptions turned into HTTP 500s
        self._queue_functions: list[_QueueFunction] = []
        self._http_functions: list[_HttpFunction] = []
        self._timer_functions: dict[str, tuple[str, Callable[..., Any]]] = {}
        self._services: dict[str, QueueServiceClient] = {}
        for fn in app.get_functions():
            self._index(fn)

    # -- indexing: everything from the app's own binding metadata -----------------------------------------------

    def _index(self, fn: Any) -> None:
        trigger = fn.get_trigger().get_dict_repr()
        name, user_function, kind = fn.get_function_name(), fn.get_user_function(), trigger["type"]
        if kind == "queueTrigger":
            self._queue_functions.append(
                _QueueFunction(
                    name,
                    self._resolve(trigger["queueName"]),
                    trigger["name"],
                    trigger.get("connection") or "AzureWebJobsStorage",
                    user_function,
                )
            )
        elif kind == "httpTrigger":
            methods = trigger.get("methods")
            self._http_functions.append(
                _HttpFunction(
                    name,
                    _route_pattern(trigger.get("route") or name),
                    frozenset(str(getattr(m, "value", m)).upper() for m in methods) if methods else None,
                    trigger["name"],
                    user_function,
                )
            )
        elif kind == "timerTrigger":
            self._timer_functions[name] = (trigger["name"], user_function)

    def _resolve(self, value: str) -> str:
        """Binding expressions ``%SETTING%`` are app-setting look-ups, as in the host."""

        def setting(match: re.Match[str]) -> str:
            try:
                return self.app_settings[match.group(1)]
            except KeyError:
                raise KeyError(f"binding expression %{match.group(1)}% has no app setting") from None

        return re.sub(r"%([^%]+)%", setting, value)

    @property
    def queue_names(self) -> dict[str, str]:
        """Function name -> the queue it is triggered by."""
        return {f.name: f.queue for f in self._queue_functions}

    def queue_client(self, queue: str, connection: str = "AzureWebJobsStorage") -> QueueClient:
        """A raw client (no encode/decode policy): content is exactly what is stored. ``queue`` is the app's name
        for it (without ``queue_prefix``)."""
        if connection not in self._services:
            conn = self.app_settings[connection]
            if conn == "UseDevelopmentStorage=true":
                conn = AZURITE_CONNECTION_STRING
            self._services[connection] = QueueServiceClient.from_connection_string(conn)
        return self._services[connection].get_queue_client(self.queue_prefix + queue)

    # -- queues ---------------------------------------------------------------------------------------------------

    def pump(self, *, until_idle: bool = True, max_seconds: float = 30.0) -> PumpResult:
        """Deliver queued messages to their functions; with ``until_idle`` keep going until no trigger queue has
        a visible message (messages hidden by a visibility timeout are not waited for), else do one round.
        Stops after ``max_seconds`` (``result.idle`` is then False), e.g. for a poison handler that keeps failing."""
        result = PumpResult()
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            delivered = 0
            for fn in self._queue_functions:
                delivered += self._pump_once(fn, result)
            if delivered == 0:
                result.idle = True
                return result
            if not until_idle:
                return result
        return result

    def _pump_once(self, fn: _QueueFunction, result: PumpResult) -> int:
        client = self.queue_client(fn.queue, fn.connection)
        try:
            batch = list(
                client.receive_messages(
                    messages_per_page=self.options.batch_size,
                    max_messages=self.options.batch_size,
                    visibility_timeout=INITIAL_VISIBILITY_SECONDS,
                )
            )
        except ResourceNotFoundError:
            return 0  # the host keeps polling a queue that does not exist yet
        for message in batch:
            result.invocations.append(self._deliver(fn, client, message))
        return len(batch)

    def _deliver(self, fn: _QueueFunction, client: QueueClient, message: Any) -> Invocation:
        has_poison_queue = not fn.queue.endswith(POISON_SUFFIX)
        limit = self.options.max_dequeue_count
        if has_poison_queue and message.dequeue_count > limit:
            # Already past the limit (e.g. the host died while handling it): poisoned without an invocation.
            self._poison(fn, client, message)
            return Invocation(fn.name, fn.queue, message.id, message.dequeue_count, "poisoned")
        error: BaseException | None = None
        try:
            body = self._decode(message.content)
            queue_message = QueueMessage(
                id=message.id,
                body=body,
                dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
            _call(fn.user_function, {fn.arg_name: queue_message}, fn.name)
        except UnsupportedBinding:
            raise
        except Exception as exc:  # the host catches everything a function raises
            error = exc
        if error is None:
            client.delete_message(message.id, message.pop_receipt)
            return Invocation(fn.name, fn.queue, message.id, message.dequeue_count, "succeeded")
        if has_poison_queue and message.dequeue_count >= limit:
            self._poison(fn, client, message)
            return Invocation(fn.name, fn.queue, message.id, message.dequeue_count, "poisoned", error)
        client.update_message(
            message.id,
            message.pop_receipt,
            visibility_timeout=int(self.options.visibility_timeout.total_seconds()),
        )
        return Invocation(fn.name, fn.queue, message.id, message.dequeue_count, "failed", error)

    def _decode(self, content: str) -> bytes:
        if self.options.message_encoding == "none":
            return content.encode("utf-8")
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            # The host cannot bind a non-base64 message: the invocation fails and counts as an attempt.
            raise ValueError(f"message is not base64 (messageEncoding is {self.options.message_encoding})") from exc

    def _poison(self, fn: _QueueFunction, client: QueueClient, message: Any) -> None:
        poison = self.queue_client(fn.queue + POISON_SUFFIX, fn.connection)
        with contextlib.suppress(ResourceExistsError):
            poison.create_queue()
        poison.send_message(message.content)  # copied unchanged (still encoded), as the host does
        client.delete_message(message.id, message.pop_receipt)

    # -- HTTP and timer -------------------------------------------------------------------------------------------

    def http(
        self,
        method: str,
        route: str,
        body: bytes | str | Mapping[str, Any] | list[Any] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> func.HttpResponse:
        """Invoke the HTTP function matching ``route`` (with or without the ``/api/`` prefix)."""
        path = route.lstrip("/")
        if self.route_prefix and path.startswith(self.route_prefix + "/"):
            path = path[len(self.route_prefix) + 1 :]
        method = method.upper()
        all_headers = dict(headers or {})
        if isinstance(body, Mapping | list):
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body or b""
        for fn in self._http_functions:
            match = fn.pattern.fullmatch(path)
            if not match or (fn.methods is not None and method not in fn.methods):
                continue
            route_params = {k: v for k, v in match.groupdict().items() if v is not None}
            prefix = f"/{self.route_prefix}" if self.route_prefix else ""
            url = f"{BASE_URL}{prefix}/{path}" + (f"?{urlencode(params)}" if params else "")
            request = func.HttpRequest(
                method, url, headers=all_headers, params=dict(params or {}), route_params=route_params, body=data
            )
            try:
                response = _call(fn.user_function, {fn.arg_name: request}, fn.name)
            except UnsupportedBinding:
                raise
            except Exception as exc:
                self.errors.append(exc)
                return func.HttpResponse("Internal Server Error", status_code=500)
            if isinstance(response, func.HttpResponse):
                return response
            return func.HttpResponse(b"" if response is None else str(response), status_code=200)
        return func.HttpResponse("Not Found", status_code=404)

    def timer(self, name: str, *, past_due: bool = False) -> None:
        """Fire the timer function ``name`` once. An exception propagates (the host would log it and not retry)."""
        try:
            arg_name, user_function = self._timer_functions[name]
        except KeyError:
            raise KeyError(f"no timer function {name!r}; timers: {sorted(self._timer_functions)}") from None
        _call(user_function, {arg_name: TimerRequest(past_due=past_due)}, name)


def _call(user_function: Callable[..., Any], kwargs: dict[str, Any], name: str) -> Any:
    params = inspect.signature(user_function).parameters
    missing = [p for p, spec in params.items() if p not in kwargs and spec.default is inspect.Parameter.empty]
    if missing:
        raise UnsupportedBinding(f"function {name!r} needs {missing}; the stand-in passes only the trigger argument")
    result = user_function(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]
    return result


def _route_pattern(template: str) -> re.Pattern[str]:
    """ASP.NET-style route template -> regex with one named group per parameter."""
    parts: list[str] = []
    for segment in template.strip("/").split("/"):
        param = re.fullmatch(r"\{(\*?)([A-Za-z_]\w*)(?::[^}?]+)?(\?)?\}", segment)
        if not param:
            parts.append("/" + re.escape(segment))
        elif param.group(1):
            parts.append(f"/(?P<{param.group(2)}>.+)")
        elif param.group(3):
            parts.append(f"(?:/(?P<{param.group(2)}>[^/]+))?")
        else:
            parts.append(f"/(?P<{param.group(2)}>[^/]+)")
    return re.compile("".join(parts).removeprefix("/"))


def _timespan(value: str | None) -> timedelta | None:
    """host.json TimeSpan ``[d.]hh:mm:ss[.fff]``."""
    if not value:
        return None
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value.strip())
    if not match:
        raise ValueError(f"host.json time span {value!r} is not [d.]hh:mm:ss")
    days, hours, minutes, seconds = match.groups()
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds))


def _load_host_json(host_json: Path | str | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if host_json is None:
        return {}
    if isinstance(host_json, Mapping):
        return host_json
    return json.loads(Path(host_json).read_text(encoding="utf-8"))
