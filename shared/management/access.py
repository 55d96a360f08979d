"""Who is calling and what their roles allow.

With App Service Authentication (Entra ID) in front of the app, the platform validates the caller's token and
passes its claims in the ``X-MS-CLIENT-PRINCIPAL`` header: Base64 of ``{"auth_typ", "name_typ", "role_typ",
"claims": [{"typ", "val"}, ...]}``. The app roles of the token are claims of type ``roles`` (or the principal's
``role_typ``). External requests cannot set that header when authentication is on, so it is trusted only when the
AUTH_ENABLED setting says authentication is configured; otherwise it is ignored.

A request without a principal passed only the function key: it acts as Exports.Admin when
``Settings.function_key_is_admin`` (authentication off, or ALLOW_FUNCTION_KEY_ADMIN=true), else it has no role.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.settings import Settings

ADMIN = "Exports.Admin"
OPERATOR = "Exports.Operator"
READER = "Exports.Reader"
ROLES = (ADMIN, OPERATOR, READER)
# Every role may read definitions, runs, reports and the audit log.
READ_ROLES = ROLES
PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
ROLE_CLAIM = "roles"
# Claim types that name the caller in audit records, best first (Entra ID access tokens of users and of apps).
NAME_CLAIMS = ("preferred_username", "upn", "name", "appid", "azp", "oid")
# The header is a few KB at most (one token's claims); anything larger is refused unread.
MAX_PRINCIPAL_BYTES = 64 * 1024


class Forbidden(Exception):
    """The caller lacks a role (HTTP 403); the message names the role needed."""

    status = 403


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    via: str  # "entra" (a signed-in principal) or "function-key"

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def has_any(self, roles: Iterable[str]) -> bool:
        return bool(self.roles & set(roles))

    def require(self, *roles: str, what: str) -> None:
        """Forbidden unless the caller holds one of ``roles``."""
        if not self.has_any(roles):
            raise Forbidden(f"{what} needs the role {' or '.join(roles)}; {self.describe()}")

    def describe(self) -> str:
        held = ", ".join(sorted(self.roles)) or "no role of this app"
        if self.via == "function-key":
            return f"the caller used a function key only, which gives {held} (see ALLOW_FUNCTION_KEY_ADMIN)"
        return f"{self.name} holds {held}"

    def audit(self) -> dict[str, object]:
        return {"name": self.name, "via": self.via, "roles": sorted(self.roles)}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def caller_from_headers(headers: Mapping[str, str], settings: Settings) -> Caller:
    raw = _header(headers, PRINCIPAL_HEADER) if settings.auth_enabled else None
    if not raw:
        roles = frozenset({ADMIN}) if settings.function_key_is_admin else frozenset()
        return Caller("function key", roles, "function-key")
    principal = decode_principal(raw)
    claims = [c for c in principal.get("claims", []) if isinstance(c, dict)]
    role_types = {ROLE_CLAIM, principal.get("role_typ")}
    roles = frozenset(c["val"] for c in claims if c.get("typ") in role_types and c.get("val") in ROLES)
    values = {c.get("typ"): c.get("val") for c in claims if isinstance(c.get("val"), str)}
    name = _header(headers, PRINCIPAL_NAME_HEADER) or values.get(principal.get("name_typ"))
    name = name or next((values[t] for t in NAME_CLAIMS if values.get(t)), "unknown principal")
    return Caller(str(name)[:200], roles, "entra")


def decode_principal(raw: str) -> dict:
    """The decoded header, or an empty principal (no roles) when it cannot be read: a refusal, never a crash."""
    if len(raw) > MAX_PRINCIPAL_BYTES:
        return {}
    try:
        data = json.loads(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("claims", []), list):
        return {}
    return data


def encode_principal(name: str, roles: Iterable[str]) -> str:
    """The header App Service would send for a user ``name`` holding ``roles`` (for tests and local trials)."""
    claims = [{"typ": "preferred_username", "val": name}] + [{"typ": ROLE_CLAIM, "val": r} for r in roles]
    body = {
        "auth_typ": "aad",
        "name_typ": "preferred_username",
        "role_typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
        "claims": claims,
    }
    return base64.b64encode(json.dumps(body).encode()).decode()
