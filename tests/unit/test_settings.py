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
