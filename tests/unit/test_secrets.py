"""API key providers. Key Vault is read with the REAL SecretClient against devtools/keyvault_fake.py over HTTPS."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from azure.core.credentials import AccessToken

from devtools.keyvault_fake import KeyVaultFake
from shared.errors import ConfigError, FailRun
from shared.secrets import (
    KEY_CACHE_TTL,
    ApiKeyUnavailable,
    KeyVaultKeyProvider,
    StaticKeyProvider,
    key_provider_from_settings,
)
from shared.settings import Settings

SECRET = "omnisend-api-key"
KEY_V1 = "key-v1-0123456789abcdef"
KEY_V2 = "key-v2-fedcba9876543210"


class StaticToken:
    """A TokenCredential that never talks to Entra ID: the fake accepts any bearer token."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault() -> Iterator[KeyVaultFake]:
    with KeyVaultFake() as fake:
        fake.set_secret(SECRET, KEY_V1)
        yield fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def provider(vault: KeyVaultFake, clock: FakeClock, secret_name: str = SECRET) -> KeyVaultKeyProvider:
    return KeyVaultKeyProvider(
        vault.url, secret_name, credential=StaticToken(), clock=clock, client_kwargs=vault.client_kwargs()
    )


def test_key_is_read_from_key_vault(vault, clock):
    assert provider(vault, clock).get() == KEY_V1
    assert vault.challenges == 1  # the SDK's 401 challenge handshake happened: a real SecretClient was used


def test_two_gets_within_the_ttl_read_the_vault_once(vault, clock):
    keys = provider(vault, clock)

    first = keys.get()
    clock.now += KEY_CACHE_TTL - 1
    second = keys.get()

    assert first == second == KEY_V1
    assert vault.reads[SECRET] == 1


def test_get_after_the_ttl_reads_again_and_sees_a_rotated_key(vault, clock):
    keys = provider(vault, clock)
    keys.get()
    vault.set_secret(SECRET, KEY_V2)

    clock.now += KEY_CACHE_TTL
    assert keys.get() == KEY_V2
    assert vault.reads[SECRET] == 2


def test_refresh_rereads_once_at_once_after_rotation(vault, clock):
    keys = provider(vault, clock)
    keys.get()
    vault.set_secret(SECRET, KEY_V2)

    assert keys.get() == KEY_V1  # still cached
    assert keys.get(refresh=True) == KEY_V2
    assert keys.get() == KEY_V2
    assert vault.reads[SECRET] == 2


def test_missing_secret_names_secret_and_vault(vault, clock):
    with pytest.raises(ApiKeyUnavailable) as caught:
        provider(vault, clock, secret_name="no-such-secret").get()

    message = str(caught.value)
    assert "'no-such-secret'" in message and vault.url in message and "does not exist" in message
    assert isinstance(caught.value, FailRun)


def test_access_denied_names_secret_vault_and_role(vault, clock):
    vault.deny = True

    with pytest.raises(ApiKeyUnavailable) as caught:
        provider(vault, clock).get()

    message = str(caught.value)
    assert f"'{SECRET}'" in message and vault.url in message and "'Key Vault Secrets User'" in message


def test_secret_holding_an_unresolved_reference_is_refused_without_echoing_it(vault, clock):
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-prod.vault.azure.net/secrets/omnisend-api-key/)"
    vault.set_secret(SECRET, reference)

    with pytest.raises(ApiKeyUnavailable, match="unresolved Key Vault reference"):
        provider(vault, clock).get()


def test_errors_never_contain_the_key(vault, clock):
    keys = provider(vault, clock)
    keys.get()
    vault.deny = True

    with pytest.raises(ApiKeyUnavailable) as caught:
        keys.get(refresh=True)

    assert KEY_V1 not in str(caught.value) and KEY_V1 not in repr(keys)


def test_static_key_is_returned_on_refresh_too():
    keys = StaticKeyProvider(KEY_V1)

    assert keys.get() == keys.get(refresh=True) == KEY_V1
    assert KEY_V1 not in repr(keys)


def test_static_unresolved_reference_is_refused():
    with pytest.raises(ApiKeyUnavailable, match="OMNISEND_API_KEY"):
        StaticKeyProvider("@Microsoft.KeyVault(VaultName=kv;SecretName=omnisend-api-key)")


def test_settings_with_a_vault_url_read_key_vault(vault):
    settings = Settings(key_vault_url=vault.url, omnisend_api_key="ignored-when-a-vault-is-set")

    keys = key_provider_from_settings(settings, StaticToken(), client_kwargs=vault.client_kwargs())

    assert keys.get() == KEY_V1


def test_settings_with_only_an_env_key_use_it():
    assert key_provider_from_settings(Settings(omnisend_api_key=KEY_V1)).get() == KEY_V1


def test_settings_without_any_key_say_how_to_configure_one():
    with pytest.raises(ConfigError, match=r"KEY_VAULT_URL.*OMNISEND_API_KEY") as caught:
        key_provider_from_settings(Settings())

    assert isinstance(caught.value, FailRun)


# --- a key that cannot travel in an HTTP header is refused when read, without ever being shown ------------------

BAD_KEYS = {
    "line-break": ("abc123\r\nX-Evil: 1", "line break at character 7"),
    "inner-space": ("abc 123", "whitespace at character 4"),
    "non-latin-1": ("abc\u2019123", "non-ASCII character at character 4 (U+2019)"),
    "control": ("abc\x00123", "control character at character 4 (U+0000)"),
}


@pytest.mark.parametrize("case", BAD_KEYS, ids=list(BAD_KEYS))
def test_a_malformed_key_from_the_environment_is_refused_without_showing_it(case):
    key, problem = BAD_KEYS[case]
    with pytest.raises(ApiKeyUnavailable) as caught:
        StaticKeyProvider(key)
    assert caught.value.exit_code == 5
    assert problem in str(caught.value) and "OMNISEND_API_KEY" in str(caught.value)
    assert "abc" not in str(caught.value) and "123" not in str(caught.value)


@pytest.mark.parametrize("case", BAD_KEYS, ids=list(BAD_KEYS))
def test_a_malformed_key_from_key_vault_is_refused_without_showing_it(vault, clock, case):
    key, problem = BAD_KEYS[case]
    vault.set_secret(SECRET, key)
    with pytest.raises(ApiKeyUnavailable) as caught:
        provider(vault, clock).get()
    assert caught.value.exit_code == 5
    assert problem in str(caught.value) and SECRET in str(caught.value)
    # The vault's address is named, and its random port may hold "123": look for the key's pieces elsewhere.
    shown = str(caught.value).replace(vault.url.rstrip("/"), "<vault>")
    assert "abc" not in shown and "123" not in shown


def test_a_trailing_newline_of_a_key_file_is_trimmed(vault, clock):
    vault.set_secret(SECRET, KEY_V1 + "\n")
    assert provider(vault, clock).get() == KEY_V1
