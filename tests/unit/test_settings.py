"""Settings: the one place that reads the environment; every problem is reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import AZURITE_CONNECTION_STRING, DEFAULT_REQUESTS_PER_MINUTE, Settings


def test_an_empty_environment_gives_local_defaults():
    settings = Settings.from_env({})
    assert settings.local_storage_root == Path(".data")
    assert settings.omnisend_api_version == "2026-03-15"
    assert settings.omnisend_requests_per_minute == DEFAULT_REQUESTS_PER_MINUTE == 300
    assert not settings.uses_azure_storage and not settings.has_api_key_source


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"OMNISEND_API_VERSION": "v9", "OMNISEND_REQUESTS_PER_MINUTE": "fast",
                           "OMNISEND_API_KEY": "@Microsoft.KeyVault(SecretUri=x)", "KEY_VAULT_URL": "http://vault"})
    assert len(err.value.problems) == 4


def test_an_unresolved_key_vault_reference_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match=r"unresolved Key Vault reference.*Key Vault Secrets User"):
        Settings.from_env({"OMNISEND_API_KEY": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/k/)"})


def test_the_emulator_shorthand_means_azurite():
    settings = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert settings.storage_connection_string == AZURITE_CONNECTION_STRING and settings.uses_azure_storage


def test_the_key_is_not_in_the_repr():
    assert "s3cret" not in repr(Settings.from_env({"OMNISEND_API_KEY": "s3cret"}))


# --- where the key may go -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.omnisend.com",
        "https://api.omnisend.com/",
        "https://eu.api.omnisend.com:8443",
        "http://127.0.0.1:40123",  # the simulator
        "http://127.1.2.3",
        "http://localhost:8080",
        "http://[::1]:8080",
    ],
)
def test_omnisend_hosts_and_loopback_are_accepted_as_base_url(url):
    assert Settings.from_env({"OMNISEND_BASE_URL": url}).omnisend_base_url == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://api.omnisend.com", "use https"),
        ("https://api.omnisend.example", "is not an Omnisend host"),
        ("https://omnisend.com.evil.example", "is not an Omnisend host"),
        ("https://evilomnisend.com", "is not an Omnisend host"),
        ("http://10.0.0.5:8080", "use https"),
        ("http://0.0.0.0:8080", "use https"),
        ("https://user:pw@api.omnisend.com", "no user name, password, query or fragment"),
        ("https://api.omnisend.com/?redirect=https://evil.example", "no user name, password, query or fragment"),
        ("ftp://api.omnisend.com", "use an https URL"),
        ("api.omnisend.com", "use an https URL"),
    ],
)
def test_any_other_base_url_is_a_settings_error(url, why):
    with pytest.raises(ConfigError, match="OMNISEND_BASE_URL") as caught:
        Settings.from_env({"OMNISEND_BASE_URL": url})
    assert why in str(caught.value)
    assert "pw" not in str(caught.value)


def test_connection_strings_and_url_tokens_are_not_in_the_repr():
    settings = Settings.from_env({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "SOURCE_BLOB_SERVICE_URI": "https://ci.blob.core.windows.net/?sv=2024&sig=SAS-SIGNATURE",
        "OMNISEND_API_KEY": "s3cret",
    })
    for text in (repr(settings), str(settings)):
        assert "AccountKey" not in text and "Eby8vdM02x" not in text
        assert "SAS-SIGNATURE" not in text and "s3cret" not in text
        assert "ci.blob.core.windows.net" in text  # still useful for debugging


def test_the_stage_context_repr_holds_no_secret():
    from shared.app import build_context
    from shared.secrets import StaticKeyProvider

    settings = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true", "OMNISEND_API_KEY": "s3cret"})
    ctx = build_context(settings, key_provider=StaticKeyProvider("s3cret"))
    text = repr(ctx)
    assert "AccountKey" not in text and "Eby8vdM02x" not in text and "s3cret" not in text
