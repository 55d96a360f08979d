"""Connections: one Omnisend brand each (its key's source, API version, request share, who may use it).

Contract: the "connections" list of the definitions file (docs/exports.md, "Connections"). Each export names its
``connection``; a file without "connections" has one implicit connection, ``default``, built from the settings
(OMNISEND_API_KEY / OMNISEND_API_KEY_SECRET_NAME, OMNISEND_API_VERSION, OMNISEND_REQUESTS_PER_MINUTE), so files
written before connections existed keep working unchanged.

A connection never holds the key itself, only where to find it: a Key Vault secret name (deployment) or the name of
an environment variable (locally). Validation lives here and is driven by the one document validator in
shared/exports.py, so the file, the CLI and the management API report the same problems with the same words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import ConfigError
from shared.settings import API_VERSIONS, ENV_NAMES
from shared.suggest import closest, did_you_mean, type_name

if TYPE_CHECKING:
    from shared.exports import ExportDefinition

DEFAULT_CONNECTION = "default"
CONNECTION_KEYS = (
    "name",
    "displayName",
    "apiVersion",
    "apiKeySecret",
    "apiKeyEnv",
    "requestsPerMinute",
    "dataTransferAcknowledged",
    "allowedRoles",
    "operatorsMayForce",
)
# Keys someone might use to paste the key itself: refused with a message saying where the key goes instead.
KEY_LIKE_KEYS = ("apiKey", "key", "apiKeyValue", "secret")
# Roles besides Exports.Admin (which may use every connection) that a connection may allow.
CONNECTION_ROLES = ("Exports.Operator",)
ADMIN_ROLE = "Exports.Admin"
MAX_DISPLAY_NAME = 100  # what Customer Insights allows for a connection's display name
# Omnisend allows 400 requests/minute per brand, shared by every app using the brand; a connection's share of it.
MAX_REQUESTS_PER_MINUTE = 400
# Key Vault secret names: 1-127 letters, digits and hyphens (Azure's rule).
KEY_VAULT_SECRET_NAME_RE = re.compile(r"[0-9A-Za-z-]{1,127}")
# apiKeyEnv may only name an OMNISEND_API_KEY* variable: whoever may edit the definitions must not be able to point
# a connection at another secret of the process (a storage connection string) and have it sent as the key.
API_KEY_ENV_RE = re.compile(r"OMNISEND_API_KEY(_[A-Z0-9_]{1,64})?")


@dataclass(frozen=True)
class Connection:
    """One Omnisend brand. ``None`` fields fall back to the settings; ``implicit`` marks the built-in default."""

    name: str
    display_name: str
    api_version: str | None = None
    api_key_secret: str | None = None
    api_key_env: str | None = None
    requests_per_minute: int | None = None
    data_transfer_acknowledged: bool = False
    allowed_roles: tuple[str, ...] = ()
    operators_may_force: bool = False
    implicit: bool = False


# A file without "connections": the key, API version and request share all come from the settings, and nothing is
# acknowledged at this level (old files acknowledge per export).
IMPLICIT_DEFAULT = Connection(name=DEFAULT_CONNECTION, display_name="Default (from the app settings)", implicit=True)


@dataclass(frozen=True)
class Definitions:
    """A whole validated definitions document: connections by name (in file order) and the exports."""

    connections: dict[str, Connection]
    exports: list[ExportDefinition]

    def connection_of(self, export: ExportDefinition) -> Connection:
        return self.connections[export.connection]

    def find_connection(self, name: str) -> Connection:
        """The connection called ``name``, or a ConfigError that lists the known names."""
        return find_connection(self.connections, name)


def find_connection(connections: Mapping[str, Connection], name: str) -> Connection:
    if name in connections:
        return connections[name]
    near = closest(name, connections)
    hint = f' (did you mean "{near}"?)' if near else ""
    listing = ", ".join(connections) if connections else "(none defined)"
    raise ConfigError(f'no connection named "{name}"{hint}; known connections: {listing}')


class _Checker(Protocol):
    """What the document validator in shared/exports.py offers (problem collection and the generic checks)."""

    problems: list[str]

    def problem(self, where: str, what: str) -> None: ...

    def obj(
        self,
        value: Any,
        where: str,
        allowed: Sequence[str],
        what: str = "field",
        refused: Mapping[str, str] | None = None,
    ) -> dict | None: ...

    def text(self, obj: dict, key: str, where: str, *, required: bool) -> str | None: ...

    def flag(self, obj: dict, key: str, where: str, default: bool) -> bool: ...


NAME_RULE = (
    "is not allowed: use 1-63 lower-case letters, digits and hyphens, starting with a letter or digit "
    "(the name is used in blob paths and URLs)"
)
KEY_REFUSED = (
    "the key itself never goes in the definitions (whoever can read them would see it): store it in Key "
    'Vault and give the secret name in "apiKeySecret", or locally the name of an environment variable '
    'in "apiKeyEnv"'
)


class ConnectionRules:
    """Checks the "connections" list and each export's "connection", reporting through ``v``."""

    def __init__(self, v: _Checker, name_re: re.Pattern[str]) -> None:
        self.v = v
        self.name_re = name_re
        self.present = False  # whether the document has a "connections" list at all
        self.declared: list[str] = []  # every name given, valid or not (so an export naming it is not "unknown")
        self.connections: dict[str, Connection] = {DEFAULT_CONNECTION: IMPLICIT_DEFAULT}
        # "connections" is not a list: already reported; exports naming a connection are not checked against it.
        self.unreadable = False

    def section(self, top: dict) -> None:
        """Read top["connections"] when present; otherwise keep the implicit default connection."""
        if "connections" not in top:
            return
        self.present = True
        self.connections = {}
        items = top["connections"]
        if not isinstance(items, list):
            self.v.problem("connections", f"expected a list of connections, got {type_name(items)}")
            self.unreadable = True
            return
        if not items:
            self.v.problem(
                "connections",
                'the list is empty; define at least one connection, or remove "connections" to use the key from '
                'the app settings (the implicit "default" connection)',
            )
        first_index: dict[str, int] = {}
        key_users: dict[tuple[str, str], int] = {}  # (key field, its value) -> first connection giving it
        for i, item in enumerate(items):
            where = f"connections[{i}]"
            connection = self.connection(item, where)
            for key in ("apiKeySecret", "apiKeyEnv"):
                value = item.get(key) if isinstance(item, dict) else None
                if not isinstance(value, str) or not value:
                    continue
                if (key, value) in key_users:
                    self.v.problem(
                        f"{where}.{key}",
                        f'"{value}" is also used by connections[{key_users[key, value]}]: one brand, one connection '
                        "(each connection has its own request budget, so two on one key could together exceed the "
                        f"brand's {MAX_REQUESTS_PER_MINUTE} requests a minute)",
                    )
                else:
                    key_users[key, value] = i
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                if name in first_index:
                    self.v.problem(
                        f"{where}.name",
                        f'"{name}" is already used by connections[{first_index[name]}]; names must be unique',
                    )
                    continue
                first_index[name] = i
                self.declared.append(name)
            if connection is not None:
                self.connections[connection.name] = connection

    def connection(self, item: Any, where: str) -> Connection | None:
        v = self.v
        obj = v.obj(item, where, CONNECTION_KEYS, refused=dict.fromkeys(KEY_LIKE_KEYS, KEY_REFUSED))
        if obj is None:
            return None
        before = len(v.problems)
        name = v.text(obj, "name", where, required=True)
        if name is not None and not self.name_re.fullmatch(name):
            v.problem(f"{where}.name", f'"{name}" {NAME_RULE}')
        display_name = v.text(obj, "displayName", where, required=True)
        if display_name is not None and len(display_name) > MAX_DISPLAY_NAME:
            v.problem(f"{where}.displayName", f"{len(display_name)} characters; use at most {MAX_DISPLAY_NAME}")
        api_version = None
        if "apiVersion" in obj:
            api_version = obj["apiVersion"]
            if api_version not in API_VERSIONS:
                hint = did_you_mean(api_version, API_VERSIONS) if isinstance(api_version, str) else ""
                v.problem(
                    f"{where}.apiVersion",
                    f"{json.dumps(api_version)} is not allowed{hint} (use one of: {', '.join(API_VERSIONS)})",
                )
        secret = v.text(obj, "apiKeySecret", where, required=False)
        if secret is not None and not KEY_VAULT_SECRET_NAME_RE.fullmatch(secret):
            v.problem(
                f"{where}.apiKeySecret",
                "not a Key Vault secret name: use 1-127 letters, digits and hyphens (the name of the secret "
                "holding the key, never the key itself)",
            )
        env = v.text(obj, "apiKeyEnv", where, required=False)
        if env is not None and env.startswith("OMNISEND_API_KEY_") and env in ENV_NAMES:
            v.problem(
                f"{where}.apiKeyEnv", f"{env} is a setting of its own, not a key: name the variable holding the key"
            )
        elif env is not None and not API_KEY_ENV_RE.fullmatch(env):
            v.problem(
                f"{where}.apiKeyEnv",
                f"{json.dumps(env)} is not allowed: name an environment variable OMNISEND_API_KEY or "
                "OMNISEND_API_KEY_<SUFFIX> (upper-case letters, digits and _), which holds the key",
            )
        if "apiKeySecret" not in obj and "apiKeyEnv" not in obj:
            v.problem(
                where,
                'give "apiKeySecret" (the Key Vault secret holding the brand\'s key) or "apiKeyEnv" (the '
                "environment variable holding it locally), or both",
            )
        rpm = None
        if "requestsPerMinute" in obj:
            rpm = obj["requestsPerMinute"]
            if isinstance(rpm, bool) or not isinstance(rpm, int) or not 1 <= rpm <= MAX_REQUESTS_PER_MINUTE:
                v.problem(
                    f"{where}.requestsPerMinute",
                    f"expected a whole number from 1 to {MAX_REQUESTS_PER_MINUTE} (this app's share of the "
                    f"brand's {MAX_REQUESTS_PER_MINUTE} requests a minute), got {json.dumps(rpm)}",
                )
        acknowledged = v.flag(obj, "dataTransferAcknowledged", where, False)
        roles = self.roles(obj, where)
        may_force = v.flag(obj, "operatorsMayForce", where, False)
        if len(v.problems) > before or name is None or display_name is None:
            return None
        return Connection(
            name=name,
            display_name=display_name,
            api_version=api_version,
            api_key_secret=secret,
            api_key_env=env,
            requests_per_minute=rpm,
            data_transfer_acknowledged=acknowledged,
            allowed_roles=roles,
            operators_may_force=may_force,
        )

    def roles(self, obj: dict, where: str) -> tuple[str, ...]:
        if "allowedRoles" not in obj:
            return ()
        where = f"{where}.allowedRoles"
        value = obj["allowedRoles"]
        if not isinstance(value, list):
            self.v.problem(where, f"expected a list of role names, got {type_name(value)}")
            return ()
        allowed = ", ".join(CONNECTION_ROLES)
        roles: list[str] = []
        for i, role in enumerate(value):
            at = f"{where}[{i}]"
            if not isinstance(role, str):
                self.v.problem(at, f"expected a string, got {type_name(role)}")
            elif role == ADMIN_ROLE:
                self.v.problem(
                    at,
                    f'"{ADMIN_ROLE}" may always use every connection: list only the other roles '
                    f"(use one of: {allowed})",
                )
            elif role not in CONNECTION_ROLES:
                self.v.problem(
                    at,
                    f"{json.dumps(role)} is not allowed{did_you_mean(role, CONNECTION_ROLES)} (use one of: {allowed})",
                )
            elif role in roles:
                self.v.problem(at, f"{json.dumps(role)} is listed twice")
            else:
                roles.append(role)
        return tuple(roles)

    def export_connection(self, obj: dict, where: str) -> str | None:
        """The connection an export uses (its "connection", else "default"), or None after reporting why not."""
        if self.unreadable:
            return None
        if "connection" not in obj:
            if DEFAULT_CONNECTION in self.connections or DEFAULT_CONNECTION in self.declared:
                return DEFAULT_CONNECTION
            listing = ", ".join(self.declared) or "none"
            self.v.problem(
                where,
                f'"connection" is required: "connections" has none named "{DEFAULT_CONNECTION}" '
                f"(connections: {listing})",
            )
            return None
        name = self.v.text(obj, "connection", where, required=True)
        if name is None:
            return None
        if not self.present:
            if name == DEFAULT_CONNECTION:
                return name
            self.v.problem(
                f"{where}.connection",
                f'no connection named "{name}"; this file has no "connections", so the only one is the '
                f'implicit "{DEFAULT_CONNECTION}" (add a "connections" list to define more)',
            )
            return None
        if name in self.declared:
            return name
        near = closest(name, self.declared)
        hint = f'; did you mean "{near}"?' if near else ""
        listing = ", ".join(self.declared) or "none"
        self.v.problem(f"{where}.connection", f'no connection named "{name}"{hint} (connections: {listing})')
        return None
