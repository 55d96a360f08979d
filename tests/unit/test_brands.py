"""What a connection is at run time: where its key is read from, its API version and share, its budget blob."""

from __future__ import annotations

import pytest

from shared import brands, names
from shared.connections import IMPLICIT_DEFAULT, Connection
from shared.errors import ConfigError
from shared.secrets import KeyVaultKeyProvider, StaticKeyProvider
from shared.settings import Settings

VAULT = "https://brand-vault.vault.azure.net"
EU = Connection(
    name="eu-store", display_name="EU store", api_key_secret="omnisend-eu-key", api_key_env="OMNISEND_API_KEY_EU"
)


def test_with_key_vault_configured_a_connection_reads_its_own_secret():
    provider = brands.key_provider(Settings(key_vault_url=VAULT), EU)
    assert isinstance(provider, KeyVaultKeyProvider)
    assert (provider.vault_url, provider.secret_name) == (VAULT, "omnisend-eu-key")


def test_without_key_vault_a_connection_reads_its_environment_variable():
    settings = Settings(omnisend_api_keys={"OMNISEND_API_KEY_EU": "eu-key-1"}, omnisend_api_key="default-key")
    assert brands.key_provider(settings, EU).get() == "eu-key-1"


def test_a_connection_may_name_the_plain_omnisend_api_key_variable():
    connection = Connection(name="main", display_name="Main", api_key_env="OMNISEND_API_KEY")
    assert brands.key_provider(Settings(omnisend_api_key="main-key"), connection).get() == "main-key"


def test_a_missing_variable_names_the_connection_and_what_to_set():
    with pytest.raises(ConfigError) as caught:
        brands.key_provider(Settings(), EU)
    assert caught.value.problems == [
        'connection "eu-store": its key is read from the environment variable OMNISEND_API_KEY_EU, which is not set; '
        "set it to the brand's Omnisend API key, or set KEY_VAULT_URL to read its Key Vault secret 'omnisend-eu-key'"
    ]


def test_a_secret_without_key_vault_says_to_set_key_vault_url():
    vault_only = Connection(name="us-store", display_name="US", api_key_secret="omnisend-us-key")
    with pytest.raises(ConfigError) as caught:
        brands.key_provider(Settings(), vault_only)
    assert "KEY_VAULT_URL is not set" in caught.value.problems[0]


def test_the_implicit_default_uses_the_settings_key_as_before():
    provider = brands.key_provider(Settings(omnisend_api_key="default-key"), IMPLICIT_DEFAULT)
    assert isinstance(provider, StaticKeyProvider) and provider.get() == "default-key"
    assert brands.key_source(Settings(omnisend_api_key="k"), IMPLICIT_DEFAULT) == "OMNISEND_API_KEY"


def test_unset_fields_take_the_settings_defaults():
    settings = Settings(omnisend_api_version="v3", omnisend_requests_per_minute=200)
    assert brands.brand(settings, EU) == brands.Brand(EU, "v3", 200)
    own = Connection(
        name="x", display_name="X", api_key_env="OMNISEND_API_KEY_X", api_version="2026-03-15", requests_per_minute=120
    )
    assert brands.brand(settings, own) == brands.Brand(own, "2026-03-15", 120)


def test_each_connection_has_its_own_budget_blob_and_default_keeps_the_old_one():
    assert brands.budget_blob_name(IMPLICIT_DEFAULT) == names.BUDGET_BLOB
    assert brands.budget_blob_name(Connection(name="default", display_name="Main")) == names.BUDGET_BLOB
    assert brands.budget_blob_name(EU) == "_budget/omnisend-requests.eu-store.json"


def test_a_key_source_is_described_never_shown():
    settings = Settings(omnisend_api_keys={"OMNISEND_API_KEY_EU": "eu-key-secret-value"})
    assert brands.key_source(settings, EU) == "environment variable OMNISEND_API_KEY_EU (set)"
    assert "eu-key-secret-value" not in repr(settings)


def test_the_registry_rebuilds_a_connection_whose_definition_changed():
    built = []
    registry = brands.Brands(lambda c: built.append(c.requests_per_minute) or object())
    first = registry.get(EU)
    assert registry.get(EU) is first
    changed = Connection(**{**EU.__dict__, "requests_per_minute": 100})
    assert registry.get(changed) is not first
    assert built == [None, 100]


def test_settings_read_only_omnisend_api_key_variables():
    settings = Settings.from_env({"OMNISEND_API_KEY_EU": "eu", "OMNISEND_API_KEY_SECRET_NAME": "s", "OTHER": "x"})
    assert dict(settings.omnisend_api_keys) == {"OMNISEND_API_KEY_EU": "eu"}
