"""Fatal means stop (ARCHITECTURE §4 rule 10), for a whole export run in this process: an outage in the middle of
sending, a key Key Vault cannot give. What reached the simulator and what the run records are the evidence."""

from __future__ import annotations

import threading
import time

import pytest

from devtools.keyvault_fake import KeyVaultFake
from devtools.omnisend_sim import SimConfig, Simulator
from shared import names
from shared.app import build_context
from shared.omnisend.errors import OmnisendUnreachable
from shared.pipeline import run_status
from shared.runs import RunPaths, read_json
from shared.secrets import ApiKeyUnavailable, KeyVaultKeyProvider
from shared.settings import Settings
from shared.storage import LocalObjectStore
from tests.integration.exporting import KEY, export, load_export, make_context, write_segment
from tests.unit.test_secrets import StaticToken

# The operator's promise: an unreachable Omnisend stops the run within 15 s.
FATAL_WITHIN_SECONDS = 15.0


def test_omnisend_going_away_mid_run_stops_the_whole_run_within_seconds(tmp_path):
    write_segment(tmp_path, 5_000, messy=False)  # 50 batches
    sim = Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.02, latency=0.05)).start()
    url = sim.base_url
    ctx = make_context(tmp_path, url, rpm=600)
    went_away: list[float] = []

    def outage() -> None:
        while sim.stats()["requests_by_route"].get("POST /api/batches", 0) < 5:
            time.sleep(0.01)
        sim.configure(drop_rate=1.0)  # every connection closed without an answer, as a dead load balancer does
        went_away.append(time.monotonic())

    threading.Thread(target=outage, daemon=True).start()
    try:
        with pytest.raises(OmnisendUnreachable) as caught:
            export(ctx)
    finally:
        sim.stop()

    assert time.monotonic() - went_away[0] < FATAL_WITHIN_SECONDS
    assert f"cannot reach Omnisend at {url}" in str(caught.value)
    run_id = next(iter(ctx.state_store.list(names.RUNS_CONTAINER, "vip/runs/"))).name.split("/")[2]
    status = run_status(ctx, "vip", run_id)
    assert status["stage"] == "stopped" and "cannot reach Omnisend" in status["message"]
    assert read_json(ctx.state_store, names.RUNS_CONTAINER, RunPaths("vip", run_id).report) is None  # resumable


def test_a_secret_missing_from_key_vault_stops_the_run_naming_it_before_any_request(tmp_path, sim):
    write_segment(tmp_path, 300, messy=False)
    store = LocalObjectStore(tmp_path)
    with KeyVaultFake() as vault:
        keys = KeyVaultKeyProvider(vault.url, "omnisend-key-typo", credential=StaticToken(),
                                   client_kwargs=vault.client_kwargs())
        settings = Settings(local_storage_root=tmp_path, omnisend_base_url=sim.base_url,
                            key_vault_url=vault.url, omnisend_api_key_secret_name="omnisend-key-typo")
        ctx = build_context(settings, key_provider=keys, stores=(store, store))

        with pytest.raises(ApiKeyUnavailable) as caught:
            export(ctx, load_export())

    assert caught.value.exit_code == 5
    assert "'omnisend-key-typo'" in str(caught.value) and "does not exist" in str(caught.value)
    assert sim.stats()["requests_total"] == 0
