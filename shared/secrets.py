"""Where the Omnisend API key comes from: an environment variable, or Key Vault read by the app itself.

The key is returned to the caller and kept in memory only; it is never logged and never part of an error message
or a ``repr``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.errors import ConfigError, FailRun, RetryLater
from shared.settings import KEY_VAULT_REFERENCE_PREFIX

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.secrets import SecretClient

    from shared.settings import Settings

# How long a key read from Key Vault is reused. Key Vault throttles (HTTP 429) well below one read per queue
# message, so the value is cached; a rotated key is picked up within this time, or at once when Omnisend refuses
# the old key and the caller asks for get(refresh=True).
KEY_CACHE_TTL = 300.0
KEY_VAULT_ROLE = "Key Vault Secrets User"
# The SDK's defaults (10 retries with exponential back-off, 300 s connection timeout) turned an unreachable vault
# into an 86 s wait and then a vague failure. A vault answers within a second; two retries ride out a blip, and a
# vault that cannot be reached within these bounds stops the run (exit 5) naming the vault, within ~10 s.
KEY_VAULT_RETRIES = 2
KEY_VAULT_RETRY_BACKOFF_SECONDS = 0.5  # waits 0.5 s, then 1 s
KEY_VAULT_RETRY_BACKOFF_MAX_SECONDS = 2.0
KEY_VAULT_CONNECTION_TIMEOUT_SECONDS = 3.0
KEY_VAULT_READ_TIMEOUT_SECONDS = 10.0
_KEY_VAULT_CLIENT_BOUNDS = {
    "retry_total": KEY_VAULT_RETRIES,
    "retry_backoff_factor": KEY_VAULT_RETRY_BACKOFF_SECONDS,
    "retry_backoff_max": KEY_VAULT_RETRY_BACKOFF_MAX_SECONDS,
    "connection_timeout": KEY_VAULT_CONNECTION_TIMEOUT_SECONDS,
    "read_timeout": KEY_VAULT_READ_TIMEOUT_SECONDS,
}


class ApiKeyUnavailable(FailRun):
    """The API key cannot be obtained (missing secret, no access, unresolved reference). Fix the setup."""

    exit_code = 5


class KeyVaultUnreachable(ApiKeyUnavailable):
    """No answer from Key Vault within the bounds above (wrong URL, firewall, DNS): the key cannot be read."""


class ApiKeyProvider(Protocol):
    def get(self, refresh: bool = False) -> str:
        """The current key; ``refresh=True`` bypasses any cache (after Omnisend refused the cached key)."""


def key_problem(key: str) -> str | None:
    """What makes ``key`` unusable in an HTTP header, or None. Names the kind of character and its position only:
    the message must never carry the key (a CR/LF in a header once printed it in a traceback)."""
    for position, char in enumerate(key, start=1):
        if char in "\r\n":
            return f"holds a line break at character {position}"
        if char.isspace():
            return f"holds whitespace at character {position}"
        if not char.isascii():
            return f"holds a non-ASCII character at character {position} (U+{ord(char):04X})"
        if not char.isprintable():
            return f"holds a control character at character {position} (U+{ord(char):04X})"
    return None


def _check_value(value: str | None, where: str) -> str:
    if value is None or not value.strip():
        raise ApiKeyUnavailable(f"the Omnisend API key in {where} is empty")
    problem = key_problem(value.strip())
    if problem:
        # Leading/trailing whitespace (a newline at the end of a key file) is trimmed; anything inside is refused.
        raise ApiKeyUnavailable(
            f"the Omnisend API key in {where} {problem}: an API key is printable ASCII without spaces; "
            "copy it again from Omnisend (Store settings > API keys)"
        )
    if value.strip().startswith(KEY_VAULT_REFERENCE_PREFIX):
        raise ApiKeyUnavailable(
            f"the Omnisend API key in {where} is an unresolved Key Vault reference ({KEY_VAULT_REFERENCE_PREFIX}...): "
            f"the platform could not read the secret. Grant the app's identity '{KEY_VAULT_ROLE}' on the vault and "
            "set keyVaultReferenceIdentity, or set KEY_VAULT_URL so the app reads the secret itself"
        )
    return value.strip()


class StaticKeyProvider:
    """A key given once (``OMNISEND_API_KEY``); refreshing returns the same key."""

    def __init__(self, key: str, where: str = "OMNISEND_API_KEY") -> None:
        self._key = _check_value(key, where)

    def get(self, refresh: bool = False) -> str:
        return self._key

    def __repr__(self) -> str:
        return "StaticKeyProvider(key=***)"


# Refresh requests within this many seconds of a refresh read share it (concurrent 401s after a rotation).
REFRESH_COALESCE_SECONDS = 2.0


class KeyVaultKeyProvider:
    """Reads the key from Key Vault with the real ``SecretClient`` and caches it for ``ttl_seconds``.

    The client is created on first use (no network at import or construction: a cold start that never needs the
    key pays nothing). Thread-safe: concurrent invocations share one cached value and one read.
    """

    def __init__(
        self,
        vault_url: str,
        secret_name: str,
        *,
        credential: TokenCredential | None = None,
        client: SecretClient | None = None,
        ttl_seconds: float = KEY_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        managed_identity_client_id: str | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.vault_url = vault_url.rstrip("/")
        self.secret_name = secret_name
        self._credential = credential
        self._client = client
        self._ttl = ttl_seconds
        self._clock = clock
        self._managed_identity_client_id = managed_identity_client_id
        # Passed to SecretClient: the bounds above, then transport options given here (connection_verify,
        # timeouts, verify_challenge_resource), which win.
        self._client_kwargs = {**_KEY_VAULT_CLIENT_BOUNDS, **(client_kwargs or {})}
        self._lock = threading.Lock()
        self._value: str | None = None
        self._read_at = 0.0
        self._refreshed_at: float | None = None

    def __repr__(self) -> str:
        return f"KeyVaultKeyProvider(vault_url={self.vault_url!r}, secret_name={self.secret_name!r})"

    def get(self, refresh: bool = False) -> str:
        with self._lock:
            now = self._clock()
            # Several threads refused with the old key ask to refresh at once: one fresh read serves them all.
            coalesced = (refresh and self._refreshed_at is not None
                         and now - self._refreshed_at < REFRESH_COALESCE_SECONDS)
            if (refresh and not coalesced) or self._value is None or now - self._read_at >= self._ttl:
                self._value = self._read()
                self._read_at = self._clock()
                if refresh:
                    self._refreshed_at = self._read_at
            return self._value

    def _secret_client(self) -> SecretClient:
        if self._client is None:
            from azure.keyvault.secrets import SecretClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential(managed_identity_client_id=self._managed_identity_client_id)
            self._client = SecretClient(self.vault_url, credential, **self._client_kwargs)
        return self._client

    def _read(self) -> str:
        where = f"secret {self.secret_name!r} of Key Vault {self.vault_url}"
        try:
            secret = self._secret_client().get_secret(self.secret_name)
        except ResourceNotFoundError:
            raise ApiKeyUnavailable(
                f"{where} does not exist: create it (az keyvault secret set --vault-name <vault> "
                f"--name {self.secret_name} --value <key>) or set OMNISEND_API_KEY_SECRET_NAME to the right name"
            ) from None
        except ClientAuthenticationError as exc:
            # Raised both for a 401 from the vault and when the credential itself cannot get a token.
            raise ApiKeyUnavailable(
                f"cannot authenticate to read {where}: {_reason(exc)}. Check the app's managed identity "
                "(AzureWebJobsStorage__clientId / AZURE_CLIENT_ID)"
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code
            if status == 403:
                raise ApiKeyUnavailable(
                    f"access denied reading {where} ({_reason(exc)}): grant the app's identity the role "
                    f"'{KEY_VAULT_ROLE}' on the vault (and check the vault's firewall)"
                ) from None
            if status == 429 or (status is not None and status >= 500):
                raise RetryLater(f"Key Vault answered {status} reading {where}", status=status) from None
            raise ApiKeyUnavailable(f"Key Vault answered {status} reading {where}: {_reason(exc)}") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise KeyVaultUnreachable(
                f"cannot reach Key Vault at {self.vault_url} to read secret {self.secret_name!r} "
                f"({type(exc).__name__} after {KEY_VAULT_RETRIES + 1} attempts): check KEY_VAULT_URL, and the "
                "network path to the vault (firewall, private endpoint, DNS)"
            ) from None
        return _check_value(secret.value, where)


def _reason(exc: HttpResponseError | ClientAuthenticationError) -> str:
    """The service's error code and first line of its message: evidence without the response body."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = (getattr(error, "message", None) or str(exc.message or exc)).splitlines()[0]
    return f"{code}: {message}" if code else message


def vault_key_provider(
    settings: Settings,
    secret_name: str,
    credential: TokenCredential | None = None,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
) -> KeyVaultKeyProvider:
    """The key in the secret ``secret_name`` of KEY_VAULT_URL's vault, read with the app's identity."""
    return KeyVaultKeyProvider(
        settings.key_vault_url,
        secret_name,
        credential=credential,
        managed_identity_client_id=settings.managed_identity_client_id,
        client_kwargs=client_kwargs,
    )


def key_provider_from_settings(
    settings: Settings,
    credential: TokenCredential | None = None,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
) -> ApiKeyProvider:
    """Key Vault when KEY_VAULT_URL is set, else OMNISEND_API_KEY, else a ConfigError saying how to set one."""
    if settings.key_vault_url:
        return vault_key_provider(settings, settings.omnisend_api_key_secret_name, credential,
                                  client_kwargs=client_kwargs)
    if settings.omnisend_api_key:
        return StaticKeyProvider(settings.omnisend_api_key)
    raise ConfigError(
        "no Omnisend API key configured: set KEY_VAULT_URL (and OMNISEND_API_KEY_SECRET_NAME if the secret is not "
        f"named 'omnisend-api-key'; the app's identity needs '{KEY_VAULT_ROLE}'), or OMNISEND_API_KEY for local runs",
        source="environment",
    )
