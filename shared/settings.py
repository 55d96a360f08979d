"""The one place that reads the environment.

``Settings.from_env()`` builds a frozen, typed object and reports every problem at once. Everything else
receives a ``Settings`` (or the pieces it needs) as an argument; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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
)
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

        base_url = (get("OMNISEND_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            problems.append(f"OMNISEND_BASE_URL={base_url!r}: use an http(s) URL such as {DEFAULT_BASE_URL}")

        key = get("OMNISEND_API_KEY")
        if key and key.startswith(KEY_VAULT_REFERENCE_PREFIX):
            problems.append(
                "OMNISEND_API_KEY holds an unresolved Key Vault reference: the app's identity cannot read the "
                "secret (grant it 'Key Vault Secrets User' and set keyVaultReferenceIdentity), or set "
                "KEY_VAULT_URL instead so the app reads the secret itself"
            )
            key = None

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
