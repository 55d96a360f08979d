"""check-config as an operator runs it: a real process, against the sample snapshot and the simulator. It must fail
(non-zero, the problem named) on whatever would make a run fail, and pass on the bundled sample."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from tests.integration.test_cli import REPO, SAMPLE, run_cli

FIXTURES = REPO / "tests" / "fixtures" / "exports"
GOOD_KEY = "brand-right-key"


@pytest.fixture
def root(tmp_path):
    shutil.copytree(SAMPLE / "data" / "ciexports", tmp_path / "ciexports")
    return tmp_path


@pytest.fixture
def config():
    return str(SAMPLE / "exports.json")


@pytest.fixture(scope="module")
def omnisend():
    with Simulator(SimConfig(api_keys=(GOOD_KEY,))) as sim:
        yield sim


def online_env(sim, key: str = GOOD_KEY) -> dict[str, str]:
    return {"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": key}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_the_bundled_sample_passes_offline(root, config):
    result = run_cli("check-config", "--config", config, root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: no problems found" in result.stdout
    assert "VipCustomers/2026/11/28/0205" in result.stdout


def test_the_bundled_sample_with_a_good_key_passes_online_by_default(root, config, omnisend):
    result = run_cli("check-config", "--config", config, root=root, env=online_env(omnisend))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted by Omnisend" in result.stdout
    assert omnisend.stats()["requests_total"] >= 1


def test_a_mapped_column_typo_fails_and_suggests_the_real_column(root):
    result = run_cli("check-config", "--config", str(FIXTURES / "sample_column_typo.json"), root=root)
    assert result.returncode == 2
    assert 'column "FristName" is not in the snapshot (did you mean "FirstName"?)' in result.stdout
    assert "Traceback" not in result.stderr


def test_a_refused_key_fails_with_exit_5_and_never_shows_the_key(root, config, omnisend):
    result = run_cli("check-config", "--config", config, root=root, env=online_env(omnisend, key="brand-wrong-key"))
    assert result.returncode == 5
    assert "refused the API key" in result.stdout
    assert "brand-wrong-key" not in result.stdout + result.stderr


def test_an_unreachable_url_fails_with_exit_3_and_names_the_setting(root, config):
    url = closed_port_url()
    t0 = time.monotonic()
    result = run_cli("check-config", "--config", config, root=root,
                     env={"OMNISEND_BASE_URL": url, "OMNISEND_API_KEY": GOOD_KEY})
    assert result.returncode == 3
    assert f"cannot reach Omnisend at {url}" in result.stdout and "OMNISEND_BASE_URL" in result.stdout
    assert time.monotonic() - t0 < 30  # a generous bound: it does not retry for minutes


def test_a_base_url_ending_in_api_gets_a_hint_and_the_exit_code_a_run_would_give(root, config, omnisend):
    env = {"OMNISEND_BASE_URL": omnisend.base_url + "/api", "OMNISEND_API_KEY": GOOD_KEY}
    result = run_cli("check-config", "--config", config, root=root, env=env)
    run = run_cli("export", "vip-customers", "--config", config, root=root, env=env)
    assert result.returncode == run.returncode == 2
    assert "404" in run.stderr + run.stdout
    assert "404" in result.stdout and "host only" in result.stdout


def test_offline_makes_no_request(root, config, omnisend):
    before = omnisend.stats()["requests_total"]
    result = run_cli("check-config", "--offline", "--config", config, root=root,
                     env=online_env(omnisend, key="brand-wrong-key"))
    assert result.returncode == 0, result.stdout
    assert omnisend.stats()["requests_total"] == before


def test_a_budget_above_400_is_a_problem(root, config):
    result = run_cli("check-config", "--config", config, root=root, env={"OMNISEND_REQUESTS_PER_MINUTE": "500"})
    assert result.returncode == 2 and "OMNISEND_REQUESTS_PER_MINUTE" in result.stdout and "1-400" in result.stdout


def test_every_problem_is_listed_at_once_in_json(root):
    result = run_cli("check-config", "--json", "--config", str(FIXTURES / "sample_column_typo.json"), root=root,
                     env={"OMNISEND_REQUESTS_PER_MINUTE": "1000", "OMNISEND_BASE_URL": closed_port_url(),
                          "OMNISEND_API_KEY": GOOD_KEY})
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert {p["check"] for p in data["problems"]} == {"budget", "columns", "omnisend"}
    assert result.returncode == 2  # the first problem's code: configuration


def test_a_missing_snapshot_fails_with_exit_4(tmp_path, config):
    result = run_cli("check-config", "--config", config, root=tmp_path)
    assert result.returncode == 4 and "model.json" in result.stdout


# ---- the Key Vault read, in process: the real SecretClient against devtools/keyvault_fake.py (no Entra ID here)


def check_with_vault(vault, secret_name: str, sim) -> tuple[dict, list]:
    from shared.checks import check_configuration
    from shared.secrets import KeyVaultKeyProvider
    from shared.settings import Settings
    from tests.unit.test_secrets import StaticToken

    settings = Settings(key_vault_url=vault.url, omnisend_base_url=sim.base_url)
    keys = KeyVaultKeyProvider(vault.url, secret_name, credential=StaticToken(),
                               client_kwargs=vault.client_kwargs())
    return check_configuration(settings, [], source_store=None, online=True, key_provider=keys)


def test_a_key_read_from_key_vault_is_checked_with_omnisend(omnisend):
    from devtools.keyvault_fake import KeyVaultFake

    with KeyVaultFake() as vault:
        vault.set_secret("omnisend-api-key", GOOD_KEY)
        result, problems = check_with_vault(vault, "omnisend-api-key", omnisend)
    assert problems == [] and result["omnisend"]["keyCheck"] == "accepted"


def test_a_missing_key_vault_secret_is_a_key_problem_naming_the_secret(omnisend):
    from devtools.keyvault_fake import KeyVaultFake

    with KeyVaultFake() as vault:
        _, problems = check_with_vault(vault, "no-such-secret", omnisend)
    [problem] = problems
    assert problem.check == "key" and problem.exit_code == 5 and "no-such-secret" in problem.message


def test_a_consent_column_typo_fails_too(root):
    result = run_cli("check-config", "--config", str(FIXTURES / "sample_consent_column_typo.json"), root=root)
    assert result.returncode == 2
    assert 'consent.column: column "LoyaltyTeir" is not in the snapshot (did you mean "LoyaltyTier"?)' in result.stdout


def test_a_settings_problem_and_a_definition_problem_are_listed_together(root, tmp_path):
    bad = tmp_path / "exports.json"
    bad.write_text('{"exports": [{"name": "x", "source": {"container": "ciexports", "file": "a.csv"}, '
                   '"mapping": {"email": "E"}, "onExit": "delete"}]}')
    result = run_cli("check-config", "--config", str(bad), root=root, env={"OMNISEND_API_VERSION": "v4"})
    assert result.returncode == 2
    assert "OMNISEND_API_VERSION='v4'" in result.stdout and 'onExit: "delete" is not allowed' in result.stdout
