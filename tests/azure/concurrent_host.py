"""A concurrent stand-in for the Azure Functions host, for tests: several worker PROCESSES, each polling every queue
of the app with several threads, over REAL Azurite queues.

``host_standin.HostStandIn`` runs one message at a time in one thread. Real Flex Consumption runs several instances,
each with several invocations at once; messages are delivered at least once, sometimes to two instances at the same
moment; instances die mid-invocation and their messages come back after the lease. This stand-in reproduces that:

- **bindings from the app**: every worker imports the app module (``function_app`` by default) and reads its queue
  functions from ``app.get_functions()`` (queue names with ``%SETTING%`` resolved from ``app_settings``), exactly as
  ``HostStandIn`` does. Each physical queue name gets ``queue_prefix`` in front so tests sharing one Azurite never see
  each other's messages (the app's producer must use the same prefix: see ``PrefixedQueues``);
- **workers**: ``workers`` processes (``multiprocessing`` spawn: a fresh interpreter, like a new instance), each
  with one poller per queue function and ``threads`` invocation threads per stage function (one per ``-poison``
  function). Like the host, a poller receives as many messages at once as it has free threads (the host receives
  ``batchSize`` and fetches again when ``newBatchThreshold`` are left; this fetches whenever a thread is free);
- **lease**: a message is received invisible for ``Timing.lease_seconds`` and the lease is renewed every
  ``Timing.renew_seconds`` while the function runs (the host: 10 min, renewed). When a worker dies, the message
  becomes visible again when its lease runs out and its ``dequeue_count`` has grown: a redelivery after a crash;
- **success** deletes the message; an **exception** makes it visible again after host.json's ``visibilityTimeout``
  (time-scaled: ``Timing.retry_visibility_seconds``); once ``dequeue_count >= maxDequeueCount`` it is copied
  unchanged to ``<queue>-poison`` and deleted; a message received with ``dequeue_count > maxDequeueCount`` (its
  last deliveries died with their instances) is poisoned without an invocation, as the host does;
- **SIGKILL at a chosen point** (``KillPoint``), implemented at the process boundary in the worker only: the
  worker wraps ``requests.Session.request`` (the Omnisend side: "right after a POST /batches") and
  ``azure.storage.blob.BlobClient.upload_blob`` (the store: "before writing a blob whose name matches"). No product
  code knows about it;
- ``kill(i)`` / ``kill_busy()`` SIGKILL a worker from outside; ``restart_dead()`` starts a fresh process in a dead
  worker's place (``auto_restart`` does it in the background, like the platform replacing an instance);
- **twin delivery** (``twin_functions``): the first delivery of a message to those functions makes the message
  visible again at once, so another thread or worker receives it too and both run at the same moment (what happens
  when a lease lapses under a slow invocation); the loser's delete fails on its stale pop receipt and is ignored;
- ``timer(name)`` fires a timer function in the test process (``HostStandIn.timer``); ``http(name, ...)`` calls
  an HTTP function there (by function name; ``HostStandIn.http`` matches routes);
- **events**: each worker appends JSON lines to its own file (invocations, HTTP requests to Omnisend with their
  times and status, kills), flushed per line so a SIGKILL loses at most a half line, which is skipped.

Time scaling (``Timing``): the host's 10-minute lease becomes a few seconds and its 30 s retry visibility about one,
so a scenario with crashes finishes in seconds; queue visibility is whole seconds in the Storage API, so nothing is
scaled below one second.

What it does NOT model: the scale controller (the number of workers is fixed by the test), ``functionTimeout``,
``newBatchThreshold`` exactly (see above), ``maxPollingInterval``'s exact back-off curve (an idle poller backs off
from ``Timing.min_poll_seconds`` to ``Timing.max_poll_seconds``; poison queues to 2 s), clock skew between
instances, a network partition between an instance and storage, graceful drain on scale-in (a stopped worker is
killed), and everything ``HostStandIn`` lists for HTTP and timers.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
POISON_SUFFIX = "-poison"
DEFAULT_MAX_DEQUEUE_COUNT = 5
# host.json maxPollingInterval (2 s): how often an idle poison queue is polled.
POISON_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Timing:
    """Host time constants, scaled so that crash scenarios take seconds. Queue visibilities are whole seconds."""

    # The host hides a received message for 10 minutes and renews that while the function runs; 3 s makes a dead
    # instance's message come back within 3 s (and is still well above a normal invocation's length here).
    lease_seconds: int = 3
    # Renew the lease this often while the function runs (the host renews at half the visibility).
    renew_seconds: float = 1.0
    # host.json visibilityTimeout (30 s) scaled: how long a message that raised stays hidden before its retry.
    retry_visibility_seconds: int = 1
    # Polling back-off of an idle thread (host.json maxPollingInterval is 2 s); short, so delayed messages are
    # picked up close to the moment they become visible.
    min_poll_seconds: float = 0.05
    max_poll_seconds: float = 0.25


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL the worker process at a point, at most ``times`` times in all workers' lifetimes of ``worker``.

    ``when``: ``"after-post"`` (a recorded request whose method and URL path match ``match``, e.g.
    ``POST .*/batches$``, got its answer: the POST reached Omnisend, nothing after it ran), ``"before-blob-write"``
    or ``"after-blob-write"`` (a blob ``container/name`` matching ``match`` is about to be / was just uploaded, e.g.
    ``/final\\.json$`` around finalise's claim).
    ``worker``: only in that worker index (None: any). ``nth``: the nth matching event in that process (1 = first).
    """

    when: str
    match: str
    worker: int | None = None
    nth: int = 1
    times: int = 1


@dataclass
class HostConfig:
    app_module: str = "function_app"
    queue_prefix: str = ""
    app_settings: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    # "module:function" called with **bootstrap_kwargs in every worker (and by the test process if it wants),
    # after the app module is imported: wires the app's dependencies (e.g. sets function_app._orchestrator).
    bootstrap: str | None = None
    bootstrap_kwargs: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 4
    # Threads of particular functions (by function name), e.g. more for the send stage; others get ``threads``.
    function_threads: Mapping[str, int] = field(default_factory=dict)
    # Longest idle polling interval of particular functions (others: Timing.max_poll_seconds), e.g. the host's
    # own 2 s for stages whose pick-up lag does not matter, to spare a shared CPU.
    function_poll_seconds: Mapping[str, float] = field(default_factory=dict)
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    timing: Timing = field(default_factory=Timing)
    kill_points: tuple[KillPoint, ...] = ()
    twin_functions: tuple[str, ...] = ()
    events_dir: str = ""
    # HTTP requests whose URL matches this are recorded (and can be kill points): the Omnisend simulator's base
    # URL. Storage calls also go through ``requests`` (azure-core) and are not recorded.
    http_match: str = r"^$"


# --------------------------------------------------------------------------------------------- the parent side


class ConcurrentHost:
    """Starts and supervises the worker processes; reads their events. Use as a context manager."""

    def __init__(self, config: HostConfig, workers: int = 2, *, auto_restart: bool = True) -> None:
        if not config.events_dir:
            raise ValueError("HostConfig.events_dir is required (one events file per worker process)")
        Path(config.events_dir).mkdir(parents=True, exist_ok=True)
        self.config = config
        self.auto_restart = auto_restart
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[Any] = [None] * workers
        self._generation = [0] * workers
        self._kill_budget = self._ctx.Array("i", [kp.times for kp in config.kill_points], lock=False)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.kills: list[dict[str, Any]] = []  # kills made from outside (kill(), kill_busy())
        self.restarts = 0
        self._bootstrapped = False

    def __enter__(self) -> ConcurrentHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for i in range(len(self._procs)):
            self._spawn(i)
        self.wait_ready()
        if self.auto_restart:
            self._supervisor = threading.Thread(target=self._supervise, name="host-supervisor", daemon=True)
            self._supervisor.start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every live worker has indexed the app and started polling."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = {(e["w"], e["gen"]) for e in self.events() if e["ev"] == "ready"}
            if all((i, self._generation[i]) in ready for i, p in enumerate(self._procs) if p is not None):
                return
            time.sleep(0.1)
        raise TimeoutError("worker processes did not start polling in time; see their events files")

    def _spawn(self, i: int) -> None:
        self._generation[i] += 1
        proc = self._ctx.Process(
            target=_worker_main, args=(self.config, i, self._generation[i], self._kill_budget),
            name=f"host-worker-{i}", daemon=True,
        )
        proc.start()
        self._procs[i] = proc

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            self.restart_dead()

    def restart_dead(self) -> list[int]:
        """Start a fresh process for every worker that died; returns their indexes."""
        restarted = []
        with self._lock:
            if self._stopping.is_set():
                return restarted
            for i, proc in enumerate(self._procs):
                if proc is not None and not proc.is_alive():
                    proc.join(0)
                    self._spawn(i)
                    self.restarts += 1
                    restarted.append(i)
        return restarted

    def kill(self, i: int, reason: str = "test") -> dict[str, Any]:
        """SIGKILL worker i now (it finishes nothing); returns what it had in flight, from its events."""
        with self._lock:
            proc = self._procs[i]
            in_flight = self.in_flight(i)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        record = {"t": time.time(), "worker": i, "pid": proc.pid, "reason": reason, **in_flight}
        self.kills.append(record)
        return record

    def kill_busy(self, rng: random.Random, function: str | None = None) -> dict[str, Any] | None:
        """SIGKILL a random live worker that has an invocation in flight (of ``function``, if given)."""
        busy = [i for i, p in enumerate(self._procs) if p is not None and p.is_alive()
                and self.in_flight(i)["invocations"].get(function or "*", 0) > 0]
        if not busy:
            return None
        return self.kill(rng.choice(busy), reason="random")

    def in_flight(self, i: int, gen: int | None = None) -> dict[str, Any]:
        """What worker i's current process (or its process number ``gen``) started and did not finish:
        invocations per function (``"*"``: all) and recorded POSTs without an answer."""
        gen = self._generation[i] if gen is None else gen
        open_invocations: dict[str, int] = {}
        posts = 0
        for e in self._events_of(i):
            if e.get("gen") != gen:
                continue
            if e["ev"] == "invoke":
                open_invocations[e["fn"]] = open_invocations.get(e["fn"], 0) + 1
                open_invocations["*"] = open_invocations.get("*", 0) + 1
            elif e["ev"] == "done":
                open_invocations[e["fn"]] -= 1
                open_invocations["*"] -= 1
            elif e["ev"] == "http-start" and e["method"] == "POST":
                posts += 1
            elif e["ev"] == "http" and e["method"] == "POST":
                posts -= 1
        return {"invocations": open_invocations, "postsInFlight": posts}

    def timer(self, name: str, *, past_due: bool = False) -> None:
        """Fire the app's timer function ``name`` once, in the test process (which must have run the bootstrap)."""
        from azure.functions.timer import TimerRequest

        app = importlib.import_module(self.config.app_module).app
        if self.config.bootstrap and not self._bootstrapped:
            self.bootstrap_here()
        # Built from the app's builders: get_functions() may only run once per process (it rejects a second
        # indexing as duplicate names), and the test process may have indexed the app already (HostStandIn).
        for builder in app._function_builders:
            f = builder.build(app.auth_level)
            trigger = f.get_trigger().get_dict_repr()
            if f.get_function_name() == name and trigger["type"] == "timerTrigger":
                f.get_user_function()(**{trigger["name"]: TimerRequest(past_due=past_due)})
                return
        raise KeyError(f"no timer function {name!r} in {self.config.app_module}")

    def http(self, name: str, method: str, path: str, *, route_params: Mapping[str, str] | None = None,
             body: Any = None) -> Any:
        """Call the app's HTTP function ``name`` once, in the test process (a real ``func.HttpRequest`` with these
        route parameters and JSON ``body``), like an HTTP request reaching one instance; its HttpResponse."""
        import azure.functions as func

        app = importlib.import_module(self.config.app_module).app
        if self.config.bootstrap and not self._bootstrapped:
            self.bootstrap_here()
        for builder in app._function_builders:  # not get_functions(): see timer()
            f = builder.build(app.auth_level)
            trigger = f.get_trigger().get_dict_repr()
            if f.get_function_name() == name and trigger["type"] == "httpTrigger":
                request = func.HttpRequest(method.upper(), f"http://localhost:7071/api/{path.lstrip('/')}",
                                           body=b"" if body is None else json.dumps(body).encode(),
                                           route_params=dict(route_params or {}))
                return f.get_user_function()(**{trigger["name"]: request})
        raise KeyError(f"no HTTP function {name!r} in {self.config.app_module}")

    def bootstrap_here(self) -> None:
        """Run the bootstrap in the test process too (for timer and HTTP calls made from the test)."""
        importlib.import_module(self.config.app_module)
        if self.config.bootstrap:
            mod_name, _, fn_name = self.config.bootstrap.partition(":")
            getattr(importlib.import_module(mod_name), fn_name)(**self.config.bootstrap_kwargs)
        self._bootstrapped = True

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self._procs) if p is not None and p.is_alive()]

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        with self._lock:
            for proc in self._procs:
                if proc is not None and proc.is_alive():
                    os.kill(proc.pid, signal.SIGKILL)
            for proc in self._procs:
                if proc is not None:
                    proc.join(10)

    # -- events -------------------------------------------------------------------------------------------------

    def _events_of(self, i: int) -> Iterator[dict[str, Any]]:
        path = Path(self.config.events_dir) / f"worker-{i}.jsonl"
        if not path.exists():
            return
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a line cut by a SIGKILL

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [e for i in range(len(self._procs)) for e in self._events_of(i)]
        out.sort(key=lambda e: e["t"])
        return [e for e in out if kind is None or e["ev"] == kind]

    def invocations(self, function: str | None = None) -> list[dict[str, Any]]:
        """Finished invocations (``ev == "done"``): fn, queue, id, dq (dequeue count), outcome, worker, times."""
        return [e for e in self.events("done") if function is None or e["fn"] == function]

    def http_requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """Answered HTTP requests the workers made (to Omnisend): t (answer time), method, path, status."""
        return [e for e in self.events("http") if (method is None or e["method"] == method)
                and (path is None or re.search(path, e["path"]))]


class PrefixedQueues:
    """The app's queue producer with the test's queue prefix in front of every queue name (same as the workers)."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def send(self, queue_name: str, message: Any, delay_seconds: int = 0) -> str:
        return self.inner.send(self.prefix + queue_name, message, delay_seconds)


# --------------------------------------------------------------------------------------------- the worker side


class _Events:
    def __init__(self, path: Path, worker: int, gen: int) -> None:
        self._f = path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._base = {"w": worker, "gen": gen, "pid": os.getpid()}

    def emit(self, ev: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "ev": ev, **self._base, **fields}, default=str)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()


@dataclass
class _QueueFn:
    name: str
    queue: str  # physical (prefixed) queue name
    arg_name: str
    user_function: Callable[..., Any]
    poison: bool


class _Lease:
    def __init__(self, client: Any, receipt: str) -> None:
        self.client = client
        self.receipt = receipt
        self.lock = threading.Lock()  # a renewal and the final delete/update never use the receipt at once
        self.finished = False
        self.lost = False


class _Leases:
    """Renews the visibility of messages being processed, so a long invocation keeps its message while it runs."""

    def __init__(self, timing: Timing, events: _Events) -> None:
        self._timing = timing
        self._events = events
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="lease-renewer", daemon=True).start()

    @contextlib.contextmanager
    def hold(self, client: Any, message: Any) -> Iterator[_Lease]:
        lease = _Lease(client, message.pop_receipt)
        with self._lock:
            self._held[message.id] = lease
        try:
            yield lease
        finally:
            with self._lock:
                self._held.pop(message.id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self._timing.renew_seconds)
            with self._lock:
                items = list(self._held.items())
            for message_id, lease in items:
                with lease.lock:
                    if lease.finished or lease.lost:
                        continue
                    try:
                        lease.receipt = lease.client.update_message(
                            message_id, lease.receipt, visibility_timeout=self._timing.lease_seconds).pop_receipt
                    except Exception as exc:
                        # A twin took the message over, or the lease lapsed before this renewal: the invocation
                        # finishes anyway and another delivery may run beside it. Recorded for diagnosis.
                        lease.lost = True
                        self._events.emit("lease-lost", id=message_id, error=type(exc).__name__)


def _worker_main(config: HostConfig, index: int, gen: int, kill_budget: Any) -> None:
    sys.path.insert(0, str(REPO))
    os.environ.update(config.env)
    events = _Events(Path(config.events_dir) / f"worker-{index}.jsonl", index, gen)
    _install_process_hooks(config, index, kill_budget, events)

    from azure.functions.queue import QueueMessage
    from azure.storage.queue import QueueServiceClient

    from shared.settings import AZURITE_CONNECTION_STRING

    module = importlib.import_module(config.app_module)
    if config.bootstrap:
        mod_name, _, fn_name = config.bootstrap.partition(":")
        getattr(importlib.import_module(mod_name), fn_name)(**config.bootstrap_kwargs)
    settings = {"AzureWebJobsStorage": AZURITE_CONNECTION_STRING, **config.app_settings}
    service = QueueServiceClient.from_connection_string(settings["AzureWebJobsStorage"])
    functions = _queue_functions(module.app, settings, config.queue_prefix)
    leases = _Leases(config.timing, events)

    def loop(fn: _QueueFn, capacity: int) -> None:
        """One poller per function, like the host: receive as many messages as there are free invocation threads
        (at most 32, the Storage API's limit), run each on a thread of this function's pool."""
        client = service.get_queue_client(fn.queue)
        poison_client = service.get_queue_client(fn.queue + POISON_SUFFIX)
        pool = ThreadPoolExecutor(capacity, thread_name_prefix=fn.name)
        free = threading.Semaphore(capacity)
        idle = config.timing.min_poll_seconds
        # Poison queues are rare: polled at the host's own maxPollingInterval, to spare the shared CPU.
        max_idle = POISON_POLL_SECONDS if fn.poison else config.function_poll_seconds.get(
            fn.name, config.timing.max_poll_seconds)

        def run(message: Any) -> None:
            try:
                _deliver(fn, client, poison_client, message)
            finally:
                free.release()

        while True:
            free.acquire()
            wanted = 1
            while wanted < min(capacity, 32) and free.acquire(blocking=False):
                wanted += 1
            try:
                got = list(client.receive_messages(max_messages=wanted, messages_per_page=wanted,
                                                   visibility_timeout=config.timing.lease_seconds))
            except Exception:  # the queue does not exist yet, or storage hiccuped: the host keeps polling
                got = []
            for _ in range(wanted - len(got)):
                free.release()
            if not got:
                time.sleep(idle)
                idle = min(max_idle, idle * 2)
                continue
            idle = config.timing.min_poll_seconds
            for message in got:
                pool.submit(run, message)

    def _deliver(fn: _QueueFn, client: Any, poison_client: Any, message: Any) -> None:
        limit = config.max_dequeue_count
        if not fn.poison and message.dequeue_count > limit:
            _poison(client, poison_client, message, message.pop_receipt)
            events.emit("poisoned", fn=fn.name, queue=fn.queue, id=message.id, dq=message.dequeue_count,
                        invoked=False)
            return
        if fn.name in config.twin_functions and message.dequeue_count == 1:
            with contextlib.suppress(Exception):
                # Visible again at once: another thread or worker receives it now and runs it beside this one.
                message.pop_receipt = client.update_message(message.id, message.pop_receipt,
                                                            visibility_timeout=0).pop_receipt
            events.emit("twin", fn=fn.name, id=message.id)
        with leases.hold(client, message) as lease:
            events.emit("invoke", fn=fn.name, queue=fn.queue, id=message.id, dq=message.dequeue_count)
            t0 = time.time()
            error: BaseException | None = None
            try:
                body = base64.b64decode(message.content, validate=True)
                fn.user_function(**{fn.arg_name: QueueMessage(
                    id=message.id, body=body, dequeue_count=message.dequeue_count,
                    expiration_time=message.expires_on, insertion_time=message.inserted_on,
                    time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt)})
            except Exception as exc:  # the host catches everything a function raises
                error = exc
            lease.lock.acquire()  # no renewal from here on; released once the message is settled
            lease.finished = True
        receipt = lease.receipt
        outcome = "succeeded"
        try:
            if error is None:
                client.delete_message(message.id, receipt)
            elif not fn.poison and message.dequeue_count >= limit:
                _poison(client, poison_client, message, receipt)
                outcome = "poisoned"
            else:
                client.update_message(message.id, receipt,
                                      visibility_timeout=config.timing.retry_visibility_seconds)
                outcome = "failed"
        except Exception as exc:  # stale pop receipt: a twin (or a redelivery) owns the message now
            outcome = ("succeeded" if error is None else "failed") + "-lost-message"
            error = error or exc
        finally:
            lease.lock.release()
        events.emit("done", fn=fn.name, queue=fn.queue, id=message.id, dq=message.dequeue_count, outcome=outcome,
                    started=t0, error=None if error is None else f"{type(error).__name__}: {error}"[:300])

    def _poison(client: Any, poison_client: Any, message: Any, receipt: str) -> None:
        try:
            poison_client.send_message(message.content)  # copied unchanged (still encoded), as the host does
        except Exception:
            poison_client.create_queue()
            poison_client.send_message(message.content)
        client.delete_message(message.id, receipt)

    for fn in functions:
        capacity = 1 if fn.poison else config.function_threads.get(fn.name, config.threads)
        threading.Thread(target=loop, args=(fn, capacity), name=f"{fn.name}-poller", daemon=True).start()
    events.emit("ready", functions=[{"name": f.name, "queue": f.queue} for f in functions])
    while True:
        time.sleep(3600)


def _queue_functions(app: Any, settings: Mapping[str, str], prefix: str) -> list[_QueueFn]:
    out = []
    for f in app.get_functions():
        trigger = f.get_trigger().get_dict_repr()
        if trigger["type"] != "queueTrigger":
            continue
        queue = re.sub(r"%([^%]+)%", lambda m: settings[m.group(1)], trigger["queueName"])
        out.append(_QueueFn(f.get_function_name(), prefix + queue, trigger["name"], f.get_user_function(),
                            queue.endswith(POISON_SUFFIX)))
    return out


def _install_process_hooks(config: HostConfig, index: int, kill_budget: Any, events: _Events) -> None:
    """Wrap the two process boundaries: HTTP (requests) and blob uploads. Records every HTTP request; SIGKILLs this
    process at the configured kill points. Nothing in the app knows about it."""
    import requests
    from azure.storage.blob import BlobClient

    points = [(k, kp) for k, kp in enumerate(config.kill_points) if kp.worker in (None, index)]
    seen = [0] * len(config.kill_points)
    lock = threading.Lock()

    def maybe_die(when: str, subject: str) -> None:
        for k, kp in points:
            if kp.when != when or not re.search(kp.match, subject):
                continue
            with lock:
                seen[k] += 1
                fire = seen[k] >= kp.nth and kill_budget[k] > 0
                if fire:
                    kill_budget[k] -= 1
            if fire:
                events.emit("self-kill", when=when, subject=subject)
                os.kill(os.getpid(), signal.SIGKILL)

    original_request = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        from urllib.parse import urlsplit

        if not re.search(config.http_match, url):
            return original_request(self, method, url, *args, **kwargs)
        path = urlsplit(url).path
        events.emit("http-start", method=method.upper(), path=path)
        try:
            response = original_request(self, method, url, *args, **kwargs)
        except Exception as exc:
            events.emit("http", method=method.upper(), path=path, status=None, error=type(exc).__name__)
            raise
        events.emit("http", method=method.upper(), path=path, status=response.status_code)
        maybe_die("after-post" if method.upper() == "POST" else "after-request", f"{method.upper()} {path}")
        return response

    requests.Session.request = request  # type: ignore[method-assign]

    original_upload = BlobClient.upload_blob

    def upload_blob(self: Any, *args: Any, **kwargs: Any) -> Any:
        name = f"{self.container_name}/{self.blob_name}"
        maybe_die("before-blob-write", name)
        result = original_upload(self, *args, **kwargs)
        maybe_die("after-blob-write", name)
        return result

    BlobClient.upload_blob = upload_blob  # type: ignore[method-assign]
