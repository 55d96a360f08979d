"""The command line as an operator uses it: a real process, its exit code, what it prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.omnisend_sim import SimConfig, Simulator

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples"


def run_cli(*args: str, root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISEND_", "KEY_VAULT", "AzureWebJobs"))}
    base.update({"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO)})
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=REPO, env=base, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def root(tmp_path):
    shutil.copytree(SAMPLE / "data" / "ciexports", tmp_path / "ciexports")
    return tmp_path


@pytest.fixture
def config():
    return str(SAMPLE / "exports.json")


def test_without_a_key_the_sample_goes_to_the_bundled_simulator_and_says_so(root, config):
    result = run_cli("export", "vip-customers", "--config", config, root=root)
    assert result.returncode == 0, result.stderr
    assert "bundled Omnisend simulator" in result.stderr
    assert "status: SUCCEEDED" in result.stdout


def test_json_prints_the_report_with_the_accounting_identity(root, config):
    result = run_cli("export", "vip-customers", "--config", config, "--json", "--quiet", root=root)
    report = json.loads(result.stdout)
    assert report["rows"] == report["sent"] + report["failed"] + report["rejected"] + report["duplicates"] + report[
        "unchanged"]
    assert report["rows"] == 300 and report["status"] == "succeeded"


def test_help_documents_the_exit_codes():
    result = run_cli("export", "--help", root=Path("/nonexistent"))
    assert result.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 "):
        assert f"\n  {code}" in result.stdout


def test_a_config_syntax_error_names_file_line_and_column(root, tmp_path):
    bad = tmp_path / "exports.json"
    bad.write_text('{"exports": [\n  {"name": "x",}\n]}\n')
    result = run_cli("export", "x", "--config", str(bad), root=root)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "line 2" in result.stderr and "column" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unacknowledged_export_is_refused(root, tmp_path):
    definition = json.loads((SAMPLE / "exports.json").read_text())
    definition["exports"][0]["dataTransferAcknowledged"] = False
    path = tmp_path / "exports.json"
    path.write_text(json.dumps(definition))
    result = run_cli("export", "vip-customers", "--config", str(path), root=root)
    assert result.returncode == 2 and "dataTransferAcknowledged" in result.stderr


def test_a_missing_snapshot_exits_4_and_names_what_is_missing(tmp_path, config):
    result = run_cli("export", "vip-customers", "--config", config, root=tmp_path)
    assert result.returncode == 4 and "model.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_key_exits_5(root, config):
    with Simulator(SimConfig(api_keys=("right-key",))) as sim:
        result = run_cli("export", "vip-customers", "--config", config, "--quiet", root=root,
                         env={"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": "wrong-key"})
    assert result.returncode == 5 and "refused the API key" in result.stderr
    assert "wrong-key" not in result.stderr + result.stdout


def test_partial_delivery_exits_1(root, config):
    with Simulator(SimConfig(api_keys=("k",), batch_delay=0.01, requests_per_minute=100_000)) as sim:
        sim.configure(item_fail={"karin.eriksen.0@example.com": 400})
        result = run_cli("export", "vip-customers", "--config", config, "--quiet", root=root,
                         env={"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": "k",
                              "OMNISEND_REQUESTS_PER_MINUTE": "100000"})
    assert result.returncode == 1, result.stderr
    assert "PARTIAL" in result.stdout and "rejected.csv" in result.stdout


def test_check_config_finds_the_snapshot(root, config):
    result = run_cli("check-config", "--config", config, root=root)
    assert result.returncode == 0 and "VipCustomers/2026/11/28/0205" in result.stdout


def test_runs_and_report_show_the_last_run(root, config):
    run_cli("export", "vip-customers", "--config", config, "--quiet", root=root)
    runs = run_cli("runs", "vip-customers", "--json", root=root)
    [run] = json.loads(runs.stdout)
    report = run_cli("report", "vip-customers", "--json", root=root)
    assert json.loads(report.stdout)["runId"] == run["runId"] and run["status"] == "succeeded"


@pytest.mark.parametrize(
    ("bad_key", "problem"),
    [("abc123\r\nX-Injected: yes", "line break at character 7"),
     ("abc\u2019123", "non-ASCII character at character 4")],
    ids=["crlf", "non-latin-1"],
)
def test_a_malformed_key_exits_5_naming_the_problem_never_the_key(root, config, bad_key, problem):
    with Simulator(SimConfig(api_keys=("abc123",))) as sim:
        result = run_cli("export", "vip-customers", "--config", config, root=root,
                         env={"OMNISEND_API_KEY": bad_key, "OMNISEND_BASE_URL": sim.base_url})
        received = sim.state()["stats"]["requests_total"]
    assert result.returncode == 5, result.stderr
    assert "OMNISEND_API_KEY" in result.stderr and problem in result.stderr
    assert "abc" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert received == 0


def test_a_base_url_that_is_not_omnisend_is_a_configuration_error(root, config):
    result = run_cli("export", "vip-customers", "--config", config, root=root,
                     env={"OMNISEND_API_KEY": "k", "OMNISEND_BASE_URL": "https://omnisend.evil.example"})
    assert result.returncode == 2
    assert "OMNISEND_BASE_URL" in result.stderr and "not an Omnisend host" in result.stderr
