"""What the CLI prints, read as an operator reads it: a real process, its stdout/stderr and exit code."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.exporting import write_segment
from tests.integration.test_cli import REPO, SAMPLE, run_cli

CONFIG = str(SAMPLE / "exports.json")
WRONG_MAPPING = str(REPO / "tests" / "fixtures" / "exports" / "sample_email_mapped_to_number.json")


@pytest.fixture
def root(tmp_path):
    write_segment(tmp_path, 300)
    return tmp_path


def test_a_wrong_mapping_ends_failed_with_exit_3_and_the_reason(root):
    result = run_cli("export", "vip-customers", "--config", WRONG_MAPPING, "--quiet", root=root)
    assert result.returncode == 3
    assert "status: FAILED" in result.stdout
    assert "mapping guard: 300 of 300 rows rejected" in result.stdout and "invalid email address (300)" in result.stdout


def test_report_formats_a_failed_run_as_text(root):
    run_cli("export", "vip-customers", "--config", WRONG_MAPPING, "--quiet", root=root)
    result = run_cli("report", "vip-customers", root=root)
    assert result.returncode == 0
    assert result.stdout.startswith("export vip-customers  run r-")
    assert "status: FAILED" in result.stdout and "mapping guard" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_runs_shows_why_a_run_failed(root):
    run_cli("export", "vip-customers", "--config", WRONG_MAPPING, "--quiet", root=root)
    result = run_cli("runs", "vip-customers", root=root)
    lines = result.stdout.splitlines()
    [row] = [i for i, line in enumerate(lines) if line.startswith("r-")]
    assert " failed " in lines[row]
    assert lines[row + 1].startswith("    why: mapping guard: 300 of 300 rows rejected")


def test_report_formats_a_stopped_run_with_how_to_resume(root):
    from shared.errors import AuthRejected
    from shared.pipeline import RunOptions, fail_run, start_run
    from tests.integration.exporting import load_export, make_context

    ctx = make_context(root, "http://127.0.0.1:9")
    started = start_run(ctx, load_export(name="vip-customers"), RunOptions())
    fail_run(ctx, "vip-customers", started.run_id, AuthRejected("Omnisend refused the API key (401)"))
    result = run_cli("report", "vip-customers", root=root)
    assert "status: FAILED (stopped; resumable)" in result.stdout
    assert "Omnisend refused the API key (401)" in result.stdout
    assert "resume with: python -m shared export vip-customers" in result.stdout


def test_the_dry_run_text_shows_dropped_fields_and_masked_rejection_samples(root):
    result = run_cli("export", "vip-customers", "--config", CONFIG, "--dry-run", root=root)
    assert result.returncode == 0
    out = result.stdout
    assert "optional fields dropped as invalid" in out
    assert any(line.split() == ["phone", "3"] for line in out.splitlines())
    [reasons_at] = [i for i, line in enumerate(out.splitlines()) if "top rejection reasons" in line]
    reasons = out.splitlines()[reasons_at + 1:reasons_at + 3]
    assert any("invalid email address  e.g. VipCustomers_1.csv:" in line for line in reasons)
    assert "not-an-email" not in out  # rejected cells are masked


def test_a_closed_pipe_ends_quietly(root):
    env = {"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "shared", "export", "vip-customers", "--config", CONFIG,
                             "--dry-run"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written, as with `| head` after its lines
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_outside_the_virtual_environment_it_says_to_activate_it(root):
    # -S: no site-packages, as with a system python that has none of the dependencies.
    result = subprocess.run([sys.executable, "-S", "-m", "shared", "runs", "vip-customers"], cwd=REPO,
                            env={"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "activate the project's virtual environment" in result.stderr


def test_verbose_is_accepted_after_the_subcommand(root):
    result = run_cli("export", "vip-customers", "--config", CONFIG, "--quiet", "-v", root=root)
    assert result.returncode == 0, result.stderr
    assert "INFO plan export=vip-customers" in result.stderr


def test_the_held_message_keeps_the_config_option(root):
    assert run_cli("export", "vip-customers", "--config", CONFIG, "--quiet", root=root).returncode == 0
    write_segment(root, 300, run="2026/11/29/0205", drop_fraction=0.5)
    result = run_cli("export", "vip-customers", "--config", CONFIG, "--quiet", root=root)
    assert result.returncode == 6
    assert f"python -m shared export vip-customers --config {CONFIG} --allow-mass-exit" in result.stdout


def test_a_contact_omnisend_refused_says_so_in_rejected_csv(root):
    from devtools.omnisend_sim import SimConfig, Simulator
    from tests.integration.exporting import segment_emails

    victim = segment_emails(root, 1)[0]
    with Simulator(SimConfig(api_keys=("k",), batch_delay=0.01, requests_per_minute=100_000)) as sim:
        sim.configure(item_fail={victim: 400})
        result = run_cli("export", "vip-customers", "--config", CONFIG, "--json", "--quiet", root=root,
                         env={"OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": "k",
                              "OMNISEND_REQUESTS_PER_MINUTE": "100000"})
    report = json.loads(result.stdout)
    assert report["status"] == "partial" and report["message"].startswith("1 contact not delivered: Omnisend refused")
    rows = list(csv.DictReader(io.StringIO(Path(report["rejectedCsv"]).read_text(encoding="utf-8"))))
    [failed] = [r for r in rows if r["bucket"] == "failed"]
    assert failed["reason"].startswith("Omnisend refused the contact: ") and failed["httpStatus"] == "400"


def test_report_formats_a_run_that_is_still_sending(root):
    from shared.pipeline import RunOptions, beat, plan, start_run
    from tests.integration.exporting import load_export, make_context

    ctx = make_context(root, "http://127.0.0.1:9")
    export_def = load_export(name="vip-customers")
    started = start_run(ctx, export_def, RunOptions())
    plan(ctx, export_def, started.run_id)  # planned, nothing sent yet
    beat(ctx, "vip-customers", started.run_id)  # its runner (this live process) is at work on it
    result = run_cli("report", "vip-customers", root=root)
    assert result.returncode == 0
    assert "status: SENDING since " in result.stdout and "(not finished)" in result.stdout
    assert "0 of 3 confirmed, 0 submitted" in result.stdout and "ETA" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_an_export_whose_output_reader_stops_after_one_line_still_finishes(root):
    env = {"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    # `... 2>&1 | head -1`: progress and report share the pipe, and the reader leaves after the first line.
    proc = subprocess.Popen([sys.executable, "-m", "shared", "export", "vip-customers", "--config", CONFIG], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    [run] = json.loads(run_cli("runs", "vip-customers", "--json", root=root).stdout)
    assert run["status"] == "succeeded"
