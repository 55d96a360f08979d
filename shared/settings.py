"""The one place that reads the environment.

``Settings.from_env()`` builds a frozen, typed object and reports every problem at once. Everything else
receives a ``Settings`` (or the pieces it needs) as an argument; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from shared.errors import ConfigError

API_VERSIONS = ("2026-03-15", "v3")
DEFAULT_API_VERSION = "2026-03-15"
DEFAULT_BASE_URL = "https://api.omnisend.com"
# Omnisend allows 400 requests/minute per brand, shared by every app of that brand (the store platform,
# other integrations). 300 leaves a quarter of the budget to them; raise it only if nothing else uses the key.
DEFAULT_REQUESTS_PER_MINUTE = 300
DEFAULT_SECRET_NAME = "omnisend-api-key"
KEY_VAULT_REFERENCE_PREFIX = "@Microsoft.KeyVault("

# Every variable Settings reads. infra/main.bicep must set these (tests/infra checks it) and no others
# of its own; the host itself also reads AzureWebJobsStorage__* and EXPORT_SCHEDULE (see HOST_SETTINGS).
ENV_NAMES = (
    "EXPORTS_CONFIG",
    "LOCAL_STORAGE_ROOT",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__clientId",
    "SOURCE_BLOB_SERVICE_URI",
    "OMNISEND_BASE_URL",
    "OMNISEND_API_VERSION",
    "OMNISEND_API_KEY",
    "KEY_VAULT_URL",
    "OMNISEND_API_KEY_SECRET_NAME",
    "OMNISEND_REQUESTS_PER_MINUTE",
    "RUN_RETENTION_DAYS",
    "AUTH_ENABLED",
    "ALLOW_FUNCTION_KEY_ADMIN",
)
# Connections (shared/connections.py) may name an environment variable holding their brand's key ("apiKeyEnv"):
# Settings reads every variable with this prefix, and nothing else, so a definitions file can only point at an
# Omnisend key, never at another secret of the process.
API_KEY_ENV_PREFIX = "OMNISEND_API_KEY_"
# Only meaningful on a developer machine or in tests; a deployment does not set them (the key comes from Key Vault,
# storage is identity-based, the base URL is Omnisend's).
LOCAL_ONLY_SETTINGS = ("LOCAL_STORAGE_ROOT", "AzureWebJobsStorage", "OMNISEND_API_KEY", "OMNISEND_BASE_URL")
# Read by the Functions host, the identity library or the telemetry agent, not by Settings.
HOST_SETTINGS = (
    "EXPORT_SCHEDULE",
    "AzureWebJobsStorage__credential",
    "AZURE_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
)
DEFAULT_EXPORT_SCHEDULE = "0 5 * * * *"  # NCRONTAB, UTC: hourly at minute 5.
# The API key and every contact go to OMNISEND_BASE_URL, so it may name Omnisend only: https on omnisend.com or a
# subdomain. Plain http (and any port) is allowed on this machine's loopback only, for the bundled simulator.
OMNISEND_DOMAIN = "omnisend.com"
LOOPBACK_NAMES = ("localhost",)
# Fields of Settings whose value is a secret, or may hold one (an account key, a SAS token): never in a repr.
_SECRET_FIELDS = frozenset({"omnisend_api_key", "storage_connection_string", "omnisend_api_keys"})
_URL_FIELDS = frozenset({"blob_service_uri", "queue_service_uri", "source_blob_service_uri", "key_vault_url"})


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_problem(url: str) -> str | None:
    """Why ``url`` may not be OMNISEND_BASE_URL, or None when it may."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"use an https URL such as {DEFAULT_BASE_URL}"
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return "a base URL holds no user name, password, query or fragment"
    if _is_loopback(host):
        return None  # the simulator on this machine
    if parts.scheme != "https":
        return "the API key travels with every request: use https (http is allowed only for 127.0.0.1/localhost)"
    if host != OMNISEND_DOMAIN and not host.endswith("." + OMNISEND_DOMAIN):
        return (
            f"{host} is not an Omnisend host: the API key and contact data may only go to {OMNISEND_DOMAIN} "
            "(or 127.0.0.1 for the simulator)"
        )
    return None


def _redacted_url(url: str) -> str:
    """A URL without its query (a SAS token lives there) or user info."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc, query="***" if parts.query else "", fragment="").geturl()


# What remains of a finished run (report, rejected.csv, markers: emails of failed and rejected rows) is deleted this
# many days after the run finished (shared/retention.py; infra/main.bicep's lifecycle rule deletes the runs
# container's blobs after the same number of days). 30 days leaves a month to look into a partial run; the payloads
# themselves are deleted as soon as the run is finalised. 3650 days is a cap against typos, not advice.
DEFAULT_RUN_RETENTION_DAYS = 30
RUN_RETENTION_DAYS_RANGE = (1, 3650)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class Settings:
    exports_config: str = "exports.json"
    local_storage_root: Path = Path(".data")
    storage_connection_string: str | None = None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    managed_identity_client_id: str | None = None
    source_blob_service_uri: str | None = None
    omnisend_base_url: str = DEFAULT_BASE_URL
    omnisend_api_version: str = DEFAULT_API_VERSION
    omnisend_api_key: str | None = field(default=None, repr=False)
    key_vault_url: str | None = None
    omnisend_api_key_secret_name: str = DEFAULT_SECRET_NAME
    # The whole app's share of the brand's budget: the CLI paces its process at it; the Functions app shares it
    # among all its instances and runs through one reservation blob (shared/budget.py), whatever it scales to.
    omnisend_requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE
    run_retention_days: int = DEFAULT_RUN_RETENTION_DAYS
    # App Service Authentication (Entra ID) is in front of the app: the platform sets X-MS-CLIENT-PRINCIPAL and
    # strips any a caller sent, so the header's roles can be trusted (shared/management/access.py). Set by
    # infra/main.bicep from its enableAuthentication parameter; without it the header is ignored.
    auth_enabled: bool = False
    # A request with a function key but no signed-in principal acts as Exports.Admin. None (unset): only while
    # authentication is off (today's behaviour); once AUTH_ENABLED, only if this is explicitly true (automation).
    allow_function_key_admin: bool | None = None

    @property
    def function_key_is_admin(self) -> bool:
        if self.allow_function_key_admin is None:
            return not self.auth_enabled
        return self.allow_function_key_admin
    # OMNISEND_API_KEY_<SUFFIX> variables (name -> key): the keys of connections that give "apiKeyEnv" (local runs).
    omnisend_api_keys: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False, compare=False)

    def __repr__(self) -> str:
        """Every setting, secrets and connection strings as ``***`` and URLs without their query string."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "omnisend_api_keys":
                value = {name: "***" for name in value}
            elif value is not None and f.name in _SECRET_FIELDS:
                value = "***"
            elif value is not None and f.name in _URL_FIELDS:
                value = _redacted_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def uses_azure_storage(self) -> bool:
        return bool(self.storage_connection_string or self.blob_service_uri)

    @property
    def has_api_key_source(self) -> bool:
        return bool(self.omnisend_api_key or self.key_vault_url)

    @property
    def omnisend_base_url_is_default(self) -> bool:
        return self.omnisend_base_url == DEFAULT_BASE_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        version = get("OMNISEND_API_VERSION") or DEFAULT_API_VERSION
        if version not in API_VERSIONS:
            problems.append(f"OMNISEND_API_VERSION={version!r}: use one of {', '.join(API_VERSIONS)}")

        def positive_int(name: str, default: int) -> int:
            text = get(name)
            if text is None:
                return default
            if text.isdigit() and int(text) > 0:
                return int(text)
            problems.append(f"{name}={text!r}: use a whole number above 0")
            return default

        rpm = positive_int("OMNISEND_REQUESTS_PER_MINUTE", DEFAULT_REQUESTS_PER_MINUTE)
        retention = positive_int("RUN_RETENTION_DAYS", DEFAULT_RUN_RETENTION_DAYS)
        low, high = RUN_RETENTION_DAYS_RANGE
        if not low <= retention <= high:
            problems.append(f"RUN_RETENTION_DAYS={retention}: use a number of days from {low} to {high}")

        def flag(name: str) -> bool | None:
            text = get(name)
            if text is None:
                return None
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            problems.append(f"{name}={text!r}: use true or false")
            return None

        auth_enabled = flag("AUTH_ENABLED")
        allow_function_key_admin = flag("ALLOW_FUNCTION_KEY_ADMIN")

        base_url = (get("OMNISEND_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        base_problem = base_url_problem(base_url)
        if base_problem:
            problems.append(f"OMNISEND_BASE_URL={_redacted_url(base_url)!r}: {base_problem}")

        key = get("OMNISEND_API_KEY")
        if key and key.startswith(KEY_VAULT_REFERENCE_PREFIX):
            problems.append(
                "OMNISEND_API_KEY holds an unresolved Key Vault reference: the app's identity cannot read the "
                "secret (grant it 'Key Vault Secrets User' and set keyVaultReferenceIdentity), or set "
                "KEY_VAULT_URL instead so the app reads the secret itself"
            )
            key = None

        keys: dict[str, str] = {}
        for name in sorted(env):
            if name.startswith(API_KEY_ENV_PREFIX) and name not in ENV_NAMES and get(name):
                value = get(name) or ""
                if value.startswith(KEY_VAULT_REFERENCE_PREFIX):
                    problems.append(f"{name} holds an unresolved Key Vault reference: the app's identity cannot read "
                                    "the secret; fix the reference, or give the connection an apiKeySecret and set "
                                    "KEY_VAULT_URL")
                    continue
                keys[name] = value

        kv_url = get("KEY_VAULT_URL")
        if kv_url and not kv_url.startswith("https://"):
            problems.append(f"KEY_VAULT_URL={kv_url!r}: Key Vault URLs start with https://")

        if problems:
            raise ConfigError(problems, source="environment")
        return cls(
            exports_config=get("EXPORTS_CONFIG") or "exports.json",
            local_storage_root=Path(get("LOCAL_STORAGE_ROOT") or ".data"),
            storage_connection_string=_connection_string(get("AzureWebJobsStorage")),
            blob_service_uri=get("AzureWebJobsStorage__blobServiceUri"),
            queue_service_uri=get("AzureWebJobsStorage__queueServiceUri"),
            managed_identity_client_id=get("AzureWebJobsStorage__clientId"),
            source_blob_service_uri=get("SOURCE_BLOB_SERVICE_URI"),
            omnisend_base_url=base_url,
            omnisend_api_version=version,
            omnisend_api_key=key,
            key_vault_url=kv_url,
            omnisend_api_key_secret_name=get("OMNISEND_API_KEY_SECRET_NAME") or DEFAULT_SECRET_NAME,
            omnisend_requests_per_minute=rpm,
            run_retention_days=retention,
            auth_enabled=bool(auth_enabled),
            allow_function_key_admin=allow_function_key_admin,
            omnisend_api_keys=keys,
        )


def _connection_string(value: str | None) -> str | None:
    """Expand the emulator shorthand that local.settings.json files commonly use."""
    if value == "UseDevelopmentStorage=true":
        return AZURITE_CONNECTION_STRING
    return value


# Azurite's documented well-known development account (not a secret).
AZURITE_CONNECTION_STRING = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)
