"""Is this deployment able to run an export? One answer for ``GET /api/health`` and ``python -m shared health``.

Each check is ``ok`` or ``error`` with a one-line reason, and never a secret (no key, no connection string, no
contact):

- ``storage``: a probe blob written, read back and deleted in the runs container.
- ``queues``: every stage queue and its ``-poison`` twin exists (Azure storage only; the CLI uses none).
- ``exports``: the export definitions load and validate.
- ``keyVault``: the Omnisend key's secret is readable (or the key comes from OMNISEND_API_KEY).
- ``omnisend``: Omnisend accepts the key: one read-only request, its answer cached for OMNISEND_CHECK_CACHE_SECONDS.
  With connections (several Omnisend brands, shared/connections.py) these two are made per connection and named
  ``keyVault:<connection>`` and ``omnisend:<connection>``.
- ``timer``: when the timer last fired (recorded by the timer trigger), an error if longer ago than a day.

All pass → HTTP 200 / exit 0; otherwise 503 / a non-zero exit.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import brands, events, names
from shared.connections import Connection
from shared.errors import AuthRejected, ConfigError, ExporterError, RetryLater
from shared.exports import Definitions, ExportDefinition
from shared.settings import Settings
from shared.storage import NotFound, ObjectStore

# The timer trigger records each fire here (a name no export can have: export names start with a letter or digit).
TIMER_CONTAINER = names.STATE_CONTAINER
TIMER_BLOB = "_app/timer.json"
# Probe blobs go where the app writes most (run artifacts); the lifecycle rule would clear a leftover one.
PROBE_CONTAINER = names.RUNS_CONTAINER
PROBE_PREFIX = "_health/probe-"
# Omnisend's answer is reused this long: a dashboard polling /api/health must not spend the brand's 400/min budget.
OMNISEND_CHECK_CACHE_SECONDS = 60.0
# The default schedule fires hourly and a daily schedule every 24 h: a timer silent for longer is not running.
TIMER_STALE_SECONDS = 25 * 3600
# One line of evidence is enough in a health answer; a whole stack of SDK text is not.
MAX_REASON_CHARS = 300

ALL_QUEUES = tuple(q + suffix for q in names.STAGE_QUEUES for suffix in ("", names.POISON_SUFFIX))

# Credentials that could appear in an SDK's error text (a connection string's key, a SAS signature).
_CREDENTIAL_RE = re.compile(r"(AccountKey|SharedAccessSignature|sig)=[^;&\s]+", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": "ok" if self.ok else "error", "reason": self.reason}


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]
    checked_at: str

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def http_status(self) -> int:
        return 200 if self.ok else 503

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "error", "checkedAt": self.checked_at,
                "checks": [check.to_dict() for check in self.checks]}


def one_line(exc: BaseException | str, secrets: Iterable[str] = ()) -> str:
    """The first line of an error (``ConfigError``: its first problem), credentials scrubbed, cut to a line."""
    if isinstance(exc, ConfigError):
        text = exc.problems[0] + (f" (+{len(exc.problems) - 1} more)" if len(exc.problems) > 1 else "")
        if exc.source:
            text = f"{exc.source}: {text}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _CREDENTIAL_RE.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:MAX_REASON_CHARS]


# --------------------------------------------------------------------------------------------------- the checks


def check_storage(store: ObjectStore) -> Check:
    name = f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt"
    where = store.describe(PROBE_CONTAINER)
    payload = f"health probe {name}".encode()
    step = "write"
    try:
        store.write(PROBE_CONTAINER, name, payload)
        step = "read"
        if store.read(PROBE_CONTAINER, name) != payload:
            return Check("storage", False, f"read back a different probe blob from {where}")
        step = "delete"
        store.delete(PROBE_CONTAINER, name)
        if store.exists(PROBE_CONTAINER, name):
            return Check("storage", False, f"the probe blob is still in {where} after deleting it")
    except Exception as exc:  # any storage failure is this check's answer, never the endpoint's crash
        return Check("storage", False, f"{step} of a probe blob in {where} failed: {one_line(exc)}")
    return Check("storage", True, f"wrote, read and deleted a probe blob in {where}")


def check_queues(queue_exists: Callable[[str], bool] | None, queue_names: Sequence[str] = ALL_QUEUES) -> Check:
    """``queue_exists`` is None when no Azure queue storage is configured (the CLI on a local folder)."""
    if queue_exists is None:
        return Check("queues", True, "not used: local storage (only the Functions app uses queues)")
    try:
        missing = [queue for queue in queue_names if not queue_exists(queue)]
    except Exception as exc:
        return Check("queues", False, f"cannot list the queues: {one_line(exc)}")
    if missing:
        return Check("queues", False, f"missing: {', '.join(missing)} (infra/main.bicep creates them)")
    return Check("queues", True, f"all {len(queue_names)} exist")


def check_exports(load: Callable[[], list[ExportDefinition]]) -> tuple[Check, list[ExportDefinition]]:
    try:
        exports = load()
    except Exception as exc:
        return Check("exports", False, one_line(exc)), []
    runnable = [e.name for e in exports if e.enabled and e.transfer_acknowledged]
    reason = f"{len(exports)} export(s), {len(runnable)} enabled and acknowledged"
    if runnable:
        reason += ": " + ", ".join(runnable)
    return Check("exports", True, reason), exports


def check_key_source(settings: Settings, make_provider: Callable[[], Any],
                     connection: Connection | None = None) -> tuple[Check, Any, str | None]:
    """(check, key provider, key) — the provider and key are None when no key could be read. ``connection``: an
    explicit connection's key (the check is then named ``keyVault:<connection>``)."""
    name = "keyVault" if connection is None else f"keyVault:{connection.name}"
    try:
        provider = make_provider()
        key = provider.get(refresh=True)
    except Exception as exc:
        return Check(name, False, one_line(exc)), None, None
    if connection is not None:
        return Check(name, True, f"{brands.key_source(settings, connection)} is readable"), provider, key
    if settings.key_vault_url:
        where = f"secret {settings.omnisend_api_key_secret_name!r} in {settings.key_vault_url}"
        return Check("keyVault", True, f"{where} is readable"), provider, key
    return Check("keyVault", True, "not configured: the key comes from OMNISEND_API_KEY"), provider, key


_omnisend_cache: dict[tuple[str, str, str, str], tuple[float, Check]] = {}
_omnisend_lock = threading.Lock()


def check_omnisend(settings: Settings, provider: Any, key: str | None,
                   monotonic: Callable[[], float] = time.monotonic, connection: Connection | None = None) -> Check:
    name, see = ("omnisend", "keyVault") if connection is None else (f"omnisend:{connection.name}",
                                                                     f"keyVault:{connection.name}")
    if provider is None or key is None:
        return Check(name, False, f"not checked: no API key could be read (see {see})")
    version = settings.omnisend_api_version if connection is None else brands.brand(settings, connection).api_version
    # Cached per key (by its hash: the key itself is never kept here), so a rotated key is checked at once.
    cache_key = (name, settings.omnisend_base_url, version, hashlib.sha256(key.encode()).hexdigest()[:16])
    with _omnisend_lock:
        cached = _omnisend_cache.get(cache_key)
        if cached and monotonic() - cached[0] < OMNISEND_CHECK_CACHE_SECONDS:
            return cached[1]
    check = _ask_omnisend(settings, provider, key, name, version)
    with _omnisend_lock:
        _omnisend_cache[cache_key] = (monotonic(), check)
    return check


def _ask_omnisend(settings: Settings, provider: Any, key: str, name: str = "omnisend",
                  version: str | None = None) -> Check:
    from shared.omnisend import OmnisendClient, Pacer

    version = version or settings.omnisend_api_version
    where = f"{settings.omnisend_base_url} API {version}"
    # One attempt: a health check reports a 429 or an outage, it does not wait one out.
    client = OmnisendClient(base_url=settings.omnisend_base_url, api_version=version,
                            api_key=provider, pacer=Pacer(settings.omnisend_requests_per_minute), max_attempts=1)
    try:
        client.check_key()
    except AuthRejected as exc:
        return Check(name, False, f"{where} refused the key: {one_line(exc, [key])}")
    except RetryLater as exc:
        return Check(name, False, f"{where} did not answer usefully: {one_line(exc, [key])}")
    except Exception as exc:
        return Check(name, False, f"{where}: {one_line(exc, [key])}")
    finally:
        client.close()
    return Check(name, True, f"{where} accepts the key")


def check_timer(store: ObjectStore, clock: Callable[[], float] = time.time, blob: str = TIMER_BLOB) -> Check:
    try:
        record = json.loads(store.read(TIMER_CONTAINER, blob))
    except NotFound:
        return Check("timer", True, "has not fired since this storage was set up (schedule: EXPORT_SCHEDULE)")
    except Exception as exc:
        return Check("timer", False, f"cannot read its last fire: {one_line(exc)}")
    age = clock() - float(record["firedAtEpoch"])
    when = f"last fired {record['firedAt']} ({_ago(age)})"
    if age > TIMER_STALE_SECONDS:
        return Check("timer", False, f"{when}: it is not running (app stopped? EXPORT_SCHEDULE wrong?)")
    return Check("timer", True, when)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------- together


def run_checks(
    settings: Settings,
    *,
    store: ObjectStore,
    load_exports: Callable[[], list[ExportDefinition]],
    make_key_provider: Callable[[], Any],
    queue_exists: Callable[[str], bool] | None,
    queue_names: Sequence[str] = ALL_QUEUES,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    timer_blob: str = TIMER_BLOB,
    load_definitions: Callable[[], Definitions] | None = None,
    make_connection_key_provider: Callable[[Connection], Any] | None = None,
) -> HealthReport:
    """Every check, each on its own (one failing never hides another), in a fixed order. The key and Omnisend
    checks are made once per connection of the definitions (``load_definitions``; else the connections the exports
    use): a file without connections gets the single ``keyVault`` and ``omnisend`` checks of ``make_key_provider``.
    """
    storage = check_storage(store)
    queues = check_queues(queue_exists, queue_names)
    connections: list[Connection] = []
    if load_definitions is not None:
        loaded_definitions: list[Definitions] = []

        def load() -> list[ExportDefinition]:
            loaded_definitions.append(load_definitions())
            return loaded_definitions[0].exports

        exports, _ = check_exports(load)
        connections = list(loaded_definitions[0].connections.values()) if loaded_definitions else []
    else:
        exports, loaded = check_exports(load_exports)
        connections = list({e.resolved_connection.name: e.resolved_connection for e in loaded}.values())
    brand_checks: list[Check] = []
    if not connections or all(c.implicit for c in connections):
        key_check, provider, key = check_key_source(settings, make_key_provider)
        brand_checks += [key_check, check_omnisend(settings, provider, key, monotonic)]
    else:
        make = make_connection_key_provider or (lambda c: brands.key_provider(settings, c))
        for connection in connections:
            key_check, provider, key = check_key_source(settings, lambda c=connection: make(c), connection)
            brand_checks += [key_check, check_omnisend(settings, provider, key, monotonic, connection)]
    timer = check_timer(store, clock, timer_blob)
    return HealthReport((storage, queues, exports, *brand_checks, timer), _iso(clock()))


def run_from_settings(settings: Settings | None = None) -> HealthReport:
    """The checks for this process's configuration (the HTTP route and the CLI)."""
    try:
        settings = settings or Settings.from_env()
        from shared.app import load_definitions_from_settings, load_export_definitions, make_key_provider, make_stores

        store, _ = make_stores(settings)
    except ExporterError as exc:
        return HealthReport((Check("settings", False, one_line(exc)),), _iso(time.time()))
    queue_exists = None
    if settings.uses_azure_storage:
        from shared.queues import StageQueues

        queue_exists = queue_checker(StageQueues.from_settings(settings))
    return run_checks(settings, store=store, load_exports=lambda: load_export_definitions(settings, store),
                      make_key_provider=lambda: make_key_provider(settings), queue_exists=queue_exists,
                      load_definitions=lambda: load_definitions_from_settings(settings, store))


def queue_checker(queues: Any) -> Callable[[str], bool]:
    """``queue_exists`` for run_checks over StageQueues: asks the queue service for each queue's properties."""
    from azure.core.exceptions import ResourceNotFoundError

    def exists(name: str) -> bool:
        try:
            queues.client(name).get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    return exists


# --------------------------------------------------------------------------------------------------- the timer


def timer_fired(store: ObjectStore, exports: Iterable[ExportDefinition], started: list[dict[str, Any]],
                clock: Callable[[], float] = time.time, blob: str = TIMER_BLOB) -> dict[str, Any]:
    """Called by the timer trigger after each fire: record it for the health check and emit TimerFired (the
    staleness alert's list of enabled exports)."""
    now = clock()
    enabled = [e.name for e in exports if e.enabled and e.transfer_acknowledged]
    record = {"firedAt": _iso(now), "firedAtEpoch": now, "enabledExports": enabled, "started": len(started)}
    store.write(TIMER_CONTAINER, blob, json.dumps(record).encode("utf-8"))
    events.timer_fired(enabled, started)
    return record


def format_text(report: HealthReport) -> str:
    width = max(len(check.name) for check in report.checks)
    lines = [f"{'ok   ' if c.ok else 'ERROR'}  {c.name:<{width}}  {c.reason}" for c in report.checks]
    lines.append("healthy" if report.ok else "NOT healthy: fix the checks marked ERROR")
    return "\n".join(lines)
