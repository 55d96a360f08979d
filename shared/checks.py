"""``check-config``: everything a run would trip over, found before the run, all problems at once.

Checks, in this order (a problem's ``exit_code`` is what the CLI exits with when it is the first one listed):
settings and export definitions (2); the request budget within Omnisend's 1-400 per minute (2); for every
enabled export, its newest snapshot found as a run would find it (4) and every mapped and consent column present
in it, with the closest column name when one is misspelt (2); online, for every connection (Omnisend brand), its
key read from Key Vault or its environment variable (5) and one read-only authenticated request to that brand
(5 refused key, 3 unreachable, 2 a base URL Omnisend answers 404 to, as a run exits). Nothing is written anywhere
and no contact data is read, only each snapshot's column names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from shared import brands
from shared.connections import DEFAULT_CONNECTION, IMPLICIT_DEFAULT, Connection
from shared.errors import AuthRejected, ConfigError, FailRun, RetryLater, SnapshotError
from shared.exports import ExportDefinition
from shared.omnisend.errors import OmnisendUnreachable, UnexpectedResponse
from shared.settings import Settings

# Omnisend allows 400 requests/minute per brand (omnisend-api.md §4); a budget above it can only earn 429s.
MAX_REQUESTS_PER_MINUTE = 400
# The online check makes one request; one retry rides out a single dropped connection or 503 without making the
# check slow when Omnisend is really unreachable (a refused connection fails at once, a timeout after 10 s).
CHECK_MAX_ATTEMPTS = 2

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_SNAPSHOT = 4
EXIT_KEY = 5


@dataclass(frozen=True)
class Problem:
    check: str  # settings | exports | budget | snapshot | columns | key | omnisend
    where: str
    message: str
    exit_code: int


def key_source(settings: Settings) -> str:
    if settings.key_vault_url:
        return f"Key Vault {settings.key_vault_url} secret {settings.omnisend_api_key_secret_name!r}"
    if settings.omnisend_api_key:
        return "OMNISEND_API_KEY"
    return "none (exports go to the bundled simulator)"


def check_configuration(
    settings: Settings,
    exports: list[ExportDefinition],
    *,
    source_store,
    snapshots: bool = True,
    online: bool = False,
    key_provider=None,
    connections: Mapping[str, Connection] | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """(what was found, the problems). ``connections``: the definitions' connections (default: the implicit one of
    a file without connections); each is reported, and checked online, on its own. ``key_provider`` replaces the
    one the settings describe for the "default" connection (tests)."""
    connections = connections or {DEFAULT_CONNECTION: IMPLICIT_DEFAULT}
    problems: list[Problem] = []
    rpm = settings.omnisend_requests_per_minute
    if rpm > MAX_REQUESTS_PER_MINUTE:
        problems.append(Problem(
            "budget", "OMNISEND_REQUESTS_PER_MINUTE",
            f"{rpm} is above Omnisend's {MAX_REQUESTS_PER_MINUTE} requests/minute per brand: requests beyond it are "
            f"refused with 429 and slow every app of the brand; use 1-{MAX_REQUESTS_PER_MINUTE} (default 300 leaves "
            "room for the brand's other integrations)",
            EXIT_CONFIG,
        ))
    found: list[dict[str, Any]] = []
    for export in exports:
        entry, export_problems = _check_export(export, source_store, snapshots)
        found.append(entry)
        problems.extend(export_problems)
    omnisend: dict[str, Any] = {
        "baseUrl": settings.omnisend_base_url,
        "apiVersion": settings.omnisend_api_version,
        "requestsPerMinute": rpm,
        "key": key_source(settings),
        "online": "checked" if online else "skipped",
    }
    found_connections = []
    for connection in connections.values():
        entry, connection_problems = _check_connection(
            settings, connection, [e.name for e in exports if e.connection == connection.name], online,
            key_provider if connection.name == DEFAULT_CONNECTION else None)
        found_connections.append(entry)
        problems.extend(connection_problems)
        if connection.implicit and online:
            omnisend["keyCheck"] = entry["keyCheck"]
    result = {
        "ok": not problems,
        "exportsConfig": settings.exports_config,
        "storage": "Azure Blob Storage" if settings.uses_azure_storage
        else f"local folder {settings.local_storage_root}",
        "omnisend": omnisend,
        "connections": found_connections,
        "exports": found,
        "problems": [asdict(p) for p in problems],
    }
    return result, problems


def _check_export(export: ExportDefinition, source_store, snapshots: bool) -> tuple[dict[str, Any], list[Problem]]:
    from shared.contacts import ContactMapper
    from shared.segments import discover_snapshot

    where = f'export "{export.name}"'
    entry: dict[str, Any] = {"name": export.name, "enabled": export.enabled,
                             "dataTransferAcknowledged": export.transfer_acknowledged, "connection": export.connection}
    problems: list[Problem] = []
    if not export.enabled:
        entry["checked"] = False
        return entry, problems
    if not export.transfer_acknowledged:
        problems.append(Problem(
            "exports", where,
            'data transfer not acknowledged: the export will not run until "dataTransferAcknowledged": true is set '
            "on its connection or on the export (after the data-privacy review)",
            EXIT_CONFIG,
        ))
    if not snapshots:
        entry["checked"] = False
        return entry, problems
    entry["checked"] = True
    try:
        snap = discover_snapshot(source_store, export.source)
    except FailRun as exc:  # SnapshotError and the store's own errors: the run would stop the same way
        code = exc.exit_code if isinstance(exc, SnapshotError) else EXIT_SNAPSHOT
        entry["snapshotError"] = str(exc)
        problems.append(Problem("snapshot", where, str(exc), code))
        return entry, problems
    entry.update(snapshot=snap.snapshot_id, columns=list(snap.columns), bytes=snap.total_bytes)
    try:
        ContactMapper(export, snap.columns)
    except ConfigError as exc:
        entry["columnProblems"] = list(exc.problems)
        problems.extend(Problem("columns", where, p, EXIT_CONFIG) for p in exc.problems)
    return entry, problems


def _check_connection(settings: Settings, connection: Connection, exports: list[str], online: bool,
                      key_provider) -> tuple[dict[str, Any], list[Problem]]:
    """One connection: what it resolves to (never its key) and, online, whether its brand accepts its key."""
    brand = brands.brand(settings, connection)
    entry: dict[str, Any] = {
        "name": connection.name,
        "displayName": connection.display_name,
        "implicit": connection.implicit,
        "apiVersion": brand.api_version,
        "requestsPerMinute": brand.requests_per_minute,
        "key": brands.key_source(settings, connection),
        "dataTransferAcknowledged": connection.data_transfer_acknowledged,
        "allowedRoles": list(connection.allowed_roles),
        "operatorsMayForce": connection.operators_may_force,
        "exports": exports,
        "keyCheck": "not checked (offline)",
    }
    if not online:
        return entry, []
    if not connection.implicit and not exports:
        entry["keyCheck"] = "not checked (no export uses it)"
        return entry, []
    entry["keyCheck"], problems = check_online(settings, connection, key_provider)
    return entry, problems


def check_online(settings: Settings, connection: Connection = IMPLICIT_DEFAULT,
                 key_provider=None) -> tuple[str, list[Problem]]:
    """Read the connection's key (Key Vault or its environment variable) and make one read-only authenticated
    request with it to its brand: ("accepted" | "refused" | "not checked", problems). Also ``connections check``."""
    from shared.omnisend import OmnisendClient, Pacer

    implicit = connection.implicit
    named = f'connection "{connection.name}"'
    if key_provider is None:
        if implicit and not settings.has_api_key_source:
            return "not checked", [Problem(
                "key", "environment",
                "--online needs a key: set OMNISEND_API_KEY, or KEY_VAULT_URL (+ OMNISEND_API_KEY_SECRET_NAME)",
                EXIT_CONFIG,
            )]
        try:
            key_provider = brands.key_provider(settings, connection)
        except ConfigError as exc:
            return "not checked", [Problem("key", named, p, EXIT_CONFIG) for p in exc.problems]
    vault = "Key Vault" if implicit else named
    try:
        key_provider.get()
    except RetryLater as exc:
        return "not checked", [Problem("key", vault, f"{exc}; check KEY_VAULT_URL and the network", EXIT_KEY)]
    except FailRun as exc:
        return "not checked", [Problem("key", vault, str(exc), EXIT_KEY)]
    brand = brands.brand(settings, connection)
    client = OmnisendClient(
        base_url=settings.omnisend_base_url, api_version=brand.api_version, api_key=key_provider,
        pacer=Pacer(brand.requests_per_minute), max_attempts=CHECK_MAX_ATTEMPTS,
    )
    url = settings.omnisend_base_url
    omnisend, base = ("Omnisend", "OMNISEND_BASE_URL") if implicit else (named, named)
    try:
        with client:
            client.preflight()
    except AuthRejected as exc:
        return "refused", [Problem("key", omnisend, str(exc), EXIT_KEY)]
    except OmnisendUnreachable as exc:  # the circuit breaker's verdict: no answer at all
        return "not checked", [Problem("omnisend", base, str(exc), EXIT_UNREACHABLE)]
    except RetryLater as exc:
        return "not checked", [Problem(
            "omnisend", base,
            f"cannot reach Omnisend at {url} ({exc}); check OMNISEND_BASE_URL and the network", EXIT_UNREACHABLE,
        )]
    except UnexpectedResponse as exc:
        hint = ""
        if exc.status == 404:
            hint = (f"; OMNISEND_BASE_URL is the host only (such as https://api.omnisend.com): the client adds "
                    f"{client.limits.base_path} itself")
        # exc.exit_code: 2 for a 404 (BaseUrlNotFound: the setting is wrong), as a run exits; else 3.
        return "not checked", [Problem("omnisend", base, f"{exc}{hint}", exc.exit_code)]
    return "accepted", []
