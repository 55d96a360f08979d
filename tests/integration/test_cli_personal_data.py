"""The personal-data commands as an operator runs them: prune and forget, a real process each."""

from __future__ import annotations

import json

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
