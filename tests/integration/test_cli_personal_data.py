"""The personal-data commands as an operator runs them: prune and forget, a real process each."""

from __future__ import annotations

import json

from devtools.omnisend_sim import SimConfig, Simulator
from tests.integration.test_cli import config, root, run_cli  # noqa: F401 - fixtures


def test_prune_prints_what_it_removed_and_keeps_runs_within_the_retention_period(root, config):  # noqa: F811
    assert run_cli("export", "vip-customers", "--config", config, "-q", root=root).returncode == 0
    result = run_cli("prune", "--config", config, "--json", root=root)
    assert result.returncode == 0, result.stderr
    pruned = json.loads(result.stdout)
    assert pruned["retentionDays"] == 30 and pruned["runsDeleted"] == [] and pruned["unfinishedKept"] == []
    gone = run_cli("prune", "--config", config, root=root, env={"RUN_RETENTION_DAYS": "abc"})
    assert gone.returncode == 2 and "RUN_RETENTION_DAYS" in gone.stderr


def test_forget_prints_counts_per_place_with_the_email_masked(root, config):  # noqa: F811
    assert run_cli("export", "vip-customers", "--config", config, "-q", root=root).returncode == 0
    state = next((root / "exporter-state").rglob("members.bin"))
    from shared.state import decode_state

    person = decode_state(state.read_bytes(), str(state)).emails[0]
    result = run_cli("forget", person, "--config", config, root=root)
    assert result.returncode == 0, result.stderr
    assert person not in result.stdout
    assert "exporter-state/vip-customers/members.bin" in result.stdout
    assert person not in decode_state(state.read_bytes(), str(state)).emails


def test_probe_without_yes_explains_what_it_would_do_and_exits_non_zero(root, config):  # noqa: F811
    result = run_cli("probe", "--email-domain", "example.com", root=root)
    assert result.returncode == 2
    assert "omnisend-exporter-probe-1-<stamp>@example.com" in result.stderr and "--yes" in result.stderr
    assert not (root / "exporter-state").exists()


def test_probe_reports_each_assumption_and_check_config_shows_it(root, config):  # noqa: F811
    with Simulator(SimConfig(api_keys=("k",), batch_delay=0.01)) as sim:
        env = {"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": "k"}
        before = run_cli("check-config", "--config", config, "--no-snapshots", root=root, env=env)
        assert "never probed" in before.stdout
        sim.configure(untag_removes_all=True)
        result = run_cli("probe", "--email-domain", "example.com", "--yes", "--config", config, root=root, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("CONFIRMED") == 4 and result.stdout.count("CONTRADICTED") == 1
        assert "delete these contacts in Omnisend" in result.stdout
        after = run_cli("check-config", "--config", config, "--no-snapshots", root=root, env=env)
        assert "CONTRADICTED" in after.stdout and '"onExit": "ignore"' in after.stdout
        refused = run_cli("export", "vip-customers", "--config", config, "-q", root=root, env=env)
        assert refused.returncode == 2 and "onExit" in refused.stderr
