"""What a connection (one Omnisend brand) is at run time: its key, API version, request share and budget blob.

A connection (shared/connections.py) names where its key is; the settings decide how it is read: Key Vault when
KEY_VAULT_URL is set and the connection gives ``apiKeySecret``, else the environment variable it names in
``apiKeyEnv`` (read by shared/settings.py into ``Settings.omnisend_api_keys``). The implicit ``default`` connection
of a file without connections is exactly the app settings of before (OMNISEND_API_KEY / KEY_VAULT_URL +
OMNISEND_API_KEY_SECRET_NAME, OMNISEND_API_VERSION, OMNISEND_REQUESTS_PER_MINUTE).

Everything that protects a brand is per connection: its key cache (one provider per connection), its Omnisend
client (pacing, circuit breaker, preflight cache live in the client) and, in the Functions app, its request budget
blob, so two brands never share one budget and one brand's outage never opens another's breaker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import names
from shared.connections import DEFAULT_CONNECTION, Connection
from shared.errors import ConfigError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.omnisend.client import ApiKeyProvider
    from shared.settings import Settings

# The budget blob of a connection other than "default": one per brand, beside the default's names.BUDGET_BLOB
# (which the default connection keeps, so a deployment that adds connections keeps its running reservation).
BUDGET_BLOB_PATTERN = "_budget/omnisend-requests.{connection}.json"


@dataclass(frozen=True)
class Brand:
    """A connection with the settings' defaults filled in: what a client for it is built from."""

    connection: Connection
    api_version: str
    requests_per_minute: int

    @property
    def name(self) -> str:
        return self.connection.name


def brand(settings: Settings, connection: Connection) -> Brand:
    return Brand(
        connection=connection,
        api_version=connection.api_version or settings.omnisend_api_version,
        requests_per_minute=connection.requests_per_minute or settings.omnisend_requests_per_minute,
    )


def budget_blob_name(connection: Connection) -> str:
    """The blob holding this brand's request reservation (shared/budget.py), in the state container."""
    if connection.name == DEFAULT_CONNECTION:
        return names.BUDGET_BLOB
    return BUDGET_BLOB_PATTERN.format(connection=connection.name)


def key_source(settings: Settings, connection: Connection) -> str:
    """Where the key of ``connection`` is read from, for messages and reports (never the key)."""
    if connection.implicit:
        if settings.key_vault_url:
            return f"Key Vault {settings.key_vault_url} secret {settings.omnisend_api_key_secret_name!r}"
        if settings.omnisend_api_key:
            return "OMNISEND_API_KEY"
        return "none (exports go to the bundled simulator)"
    if settings.key_vault_url and connection.api_key_secret:
        return f"Key Vault {settings.key_vault_url} secret {connection.api_key_secret!r}"
    if connection.api_key_env:
        state = "set" if has_key_source(settings, connection) else "NOT SET"
        return f"environment variable {connection.api_key_env} ({state})"
    return f"Key Vault secret {connection.api_key_secret!r}, but KEY_VAULT_URL is not set"


def has_key_source(settings: Settings, connection: Connection) -> bool:
    """Whether a key for ``connection`` can be looked for at all (the settings name a vault or hold the variable)."""
    if connection.implicit:
        return settings.has_api_key_source
    if settings.key_vault_url and connection.api_key_secret:
        return True
    return bool(connection.api_key_env and _env_key(settings, connection.api_key_env))


def _env_key(settings: Settings, name: str) -> str | None:
    if name == "OMNISEND_API_KEY":
        return settings.omnisend_api_key
    return settings.omnisend_api_keys.get(name)


def key_provider(
    settings: Settings,
    connection: Connection,
    credential: TokenCredential | None = None,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
) -> ApiKeyProvider:
    """The key of ``connection``: Key Vault (KEY_VAULT_URL set and an apiKeySecret given), else its apiKeyEnv
    variable; a ConfigError naming the connection and what to set otherwise."""
    from shared.secrets import KEY_VAULT_ROLE, StaticKeyProvider, key_provider_from_settings, vault_key_provider

    if connection.implicit:
        return key_provider_from_settings(settings, credential, client_kwargs=client_kwargs)
    where = f'connection "{connection.name}"'
    if settings.key_vault_url and connection.api_key_secret:
        return vault_key_provider(settings, connection.api_key_secret, credential, client_kwargs=client_kwargs)
    if connection.api_key_env:
        value = _env_key(settings, connection.api_key_env)
        if value:
            return StaticKeyProvider(value, where=connection.api_key_env)
        vault = (
            f", or set KEY_VAULT_URL to read its Key Vault secret {connection.api_key_secret!r}"
            if connection.api_key_secret
            else ""
        )
        raise ConfigError(
            f"{where}: its key is read from the environment variable {connection.api_key_env}, which is not set; "
            f"set it to the brand's Omnisend API key{vault}",
            source="environment",
        )
    raise ConfigError(
        f"{where}: its key is the Key Vault secret {connection.api_key_secret!r}, but KEY_VAULT_URL is not set; set "
        f"it (the app's identity needs '{KEY_VAULT_ROLE}'), or give the connection an apiKeyEnv for local runs",
        source="environment",
    )


class Brands:
    """One runtime object per connection, built on first use and rebuilt when the connection's definition changes
    (an edited requestsPerMinute or key source takes effect with the next definitions read). Thread-safe."""

    def __init__(self, build: Callable[[Connection], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._built: dict[str, tuple[Connection, Any]] = {}

    def get(self, connection: Connection) -> Any:
        with self._lock:
            held = self._built.get(connection.name)
            if held is None or held[0] != connection:
                held = (connection, self._build(connection))
                self._built[connection.name] = held
            return held[1]

    def built(self) -> dict[str, Any]:
        """What was built so far, by connection name (for status and tests)."""
        with self._lock:
            return {name: value for name, (_, value) in self._built.items()}
