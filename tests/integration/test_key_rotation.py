"""The API key from Key Vault (real SecretClient, local HTTPS stand-in) as a run uses it: read once and cached,
and re-read once when Omnisend refuses it, so a rotated key is picked up without a restart."""

from __future__ import annotations

import time

import pytest
from azure.core.credentials import AccessToken

from devtools.keyvault_fake import KeyVaultFake
from devtools.omnisend_sim import SimConfig, Simulator
from shared.errors import AuthRejected
from shared.secrets import KeyVaultKeyProvider
from tests.integration.exporting import export, load_export, write_segment

SECRET = "omnisend-api-key"
OLD_KEY, NEW_KEY = "brand-old0123456789", "brand-new9876543210"


class StaticToken:
    """A TokenCredential that never talks to Entra ID: the stand-in accepts any bearer token."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


@pytest.fixture
def vault():
    with KeyVaultFake() as fake:
        fake.set_secret(SECRET, OLD_KEY)
        yield fake


def context(tmp_path, vault, sim):
    from shared.app import build_context
    from shared.settings import Settings
    from shared.storage import LocalObjectStore

    provider = KeyVaultKeyProvider(vault.url, SECRET, credential=StaticToken(), client_kwargs=vault.client_kwargs())
    settings = Settings(local_storage_root=tmp_path, omnisend_base_url=sim.base_url, key_vault_url=vault.url,
                        omnisend_requests_per_minute=60_000)
    store = LocalObjectStore(tmp_path)
    return build_context(settings, key_provider=provider, stores=(store, store)), provider


def test_the_key_is_read_from_key_vault_once_for_a_whole_run(tmp_path, vault):
    write_segment(tmp_path, 1_000, messy=False)
    with Simulator(SimConfig(api_keys=(OLD_KEY,), batch_delay=0.01, requests_per_minute=1_000_000)) as sim:
        ctx, _ = context(tmp_path, vault, sim)
        report = export(ctx, load_export())
    assert report["sent"] == 1_000 and report["batches"] == 10
    assert vault.reads[SECRET] == 1


def test_a_rotated_key_is_picked_up_after_omnisend_refuses_the_old_one(tmp_path, vault):
    write_segment(tmp_path, 300, messy=False)
    with Simulator(SimConfig(api_keys=(NEW_KEY,), batch_delay=0.01, requests_per_minute=1_000_000)) as sim:
        ctx, provider = context(tmp_path, vault, sim)
        assert provider.get() == OLD_KEY  # read and cached by an earlier run of this instance
        vault.set_secret(SECRET, NEW_KEY)  # rotated in Key Vault; Omnisend now accepts only the new key
        report = export(ctx, load_export())
    assert report["status"] == "succeeded" and report["sent"] == 300
    assert vault.reads[SECRET] == 2  # the cached old key, refused once, then one fresh read


def test_a_key_refused_even_after_a_fresh_read_fails_the_run(tmp_path, vault):
    write_segment(tmp_path, 100, messy=False)
    with Simulator(SimConfig(api_keys=("someone-elses-key",), batch_delay=0.01)) as sim, pytest.raises(AuthRejected):
        export(context(tmp_path, vault, sim)[0], load_export())
    assert vault.reads[SECRET] == 2  # the cached read, then one re-read after the 401
