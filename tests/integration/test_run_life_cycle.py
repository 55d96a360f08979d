"""The run life cycle in the CLI: one active run per export, deterministic ids, resume whatever started a run,
finalisation that survives a crash at any step, and state that never goes back to an older snapshot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared import __main__ as cli
from shared.app import build_context
from shared.errors import RunBusy
from shared.names import STATE_CONTAINER
from shared.pipeline import RunOptions, finalise, list_runs, plan, send_batch, start_run, verify
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from shared.state import StateMeta, load_state, save_state, state_name
from shared.storage import LocalObjectStore
from tests.integration.exporting import (
    FAST_RPM,
    KEY,
    assert_accounting,
    export,
    export_definition,
    load_export,
    make_context,
    segment_emails,
    write_segment,
)
from tests.integration.test_incremental import FIRST_RUN, SECOND_RUN, wait_for

REPO = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """The process dies here (BaseException: no product code may catch it and carry on)."""


class CrashingStore(LocalObjectStore):
    """The local store, except that the first write or create of a name containing ``at`` kills the process (a
    fault at the process boundary: everything before it was written, nothing after)."""

    def __init__(self, root, at: str) -> None:
        super().__init__(root)
        self.at = at
        self.crashed = False

    def _maybe_crash(self, name: str) -> None:
        if self.at in name and not self.crashed:
            self.crashed = True
            raise Crash(name)

    def write(self, container, name, data):
        self._maybe_crash(name)
        super().write(container, name, data)

    def create(self, container, name, data):
        self._maybe_crash(name)
        return super().create(container, name, data)


def crashing_context(root, base_url, at: str):
    settings = Settings(local_storage_root=root, omnisend_base_url=base_url, omnisend_api_key=KEY,
                        omnisend_requests_per_minute=FAST_RPM)
    store = CrashingStore(root, at)
    return build_context(settings, key_provider=StaticKeyProvider(KEY), stores=(store, store)), store


def tagged(sim) -> set[str]:
    return {email for email, c in sim.contacts().items() if "ci-vip" in c["tags"]}


def untag_requests(sim) -> int:
    return sim.state()["stats"]["requests_by_route"].get("DELETE /api/contacts/tags", 0)


def state_emails(ctx) -> set[str]:
    return set(load_state(ctx.state_store, "vip").emails)


# ---------------------------------------------------------------------------------------------------- run ids


def test_forced_starts_straddling_a_second_boundary_are_one_run(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    ctx.clock = lambda: 1_764_500_000.9
    first = start_run(ctx, definition, RunOptions(force=True))
    ctx.clock = lambda: 1_764_500_001.2
    second = start_run(ctx, definition, RunOptions(force=True))
    assert first.created and not second.created
    assert second.run_id == first.run_id


def test_a_forced_start_after_the_forced_run_finished_is_the_next_run_of_the_snapshot(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    plain = export(ctx)
    forced = [export(ctx, force=True)["runId"] for _ in range(2)]
    assert forced == [f"{plain['runId']}-f1", f"{plain['runId']}-f2"]


# ---------------------------------------------------------------------------------------------------- resume


def test_an_interrupted_forced_run_is_resumed_by_the_same_command(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    started = start_run(ctx, definition, RunOptions(force=True))
    manifest = plan(ctx, definition, started.run_id)
    for n in (1, 2, 3):  # ...and the process dies here
        send_batch(ctx, "vip", started.run_id, n)
    posts_before = sim.state()["stats"]["requests_by_route"]["POST /api/batches"]
    report = export(make_context(tmp_path, sim.base_url), definition, force=True)
    assert report["runId"] == started.run_id and report["status"] == "succeeded"
    posts = sim.state()["stats"]["requests_by_route"]["POST /api/batches"] - posts_before
    assert posts == manifest["batches"] - 3


def test_an_interrupted_full_resync_is_resumed_by_the_plain_command(tmp_path, sim):
    write_segment(tmp_path, 500, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    definition = load_export()
    started = start_run(ctx, definition, RunOptions(full_resync=True))
    plan(ctx, definition, started.run_id)  # ...and the process dies here
    report = export(make_context(tmp_path, sim.base_url), definition)
    assert report["runId"] == started.run_id
    assert report["sent"] == 500 and report["unchanged"] == 0  # still the full resync it was started as


def test_a_plain_start_during_an_unfinished_forced_run_starts_nothing_new(tmp_path, sim):
    write_segment(tmp_path, 200, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    forced = start_run(ctx, definition, RunOptions(force=True))
    plain = start_run(ctx, definition, RunOptions())
    assert plain.run_id == forced.run_id and not plain.created
    assert [r["runId"] for r in list_runs(ctx, "vip")] == [forced.run_id]


def test_an_interrupted_run_shows_as_resumable_not_running(tmp_path, sim):
    write_segment(tmp_path, 200, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    start_run(ctx, load_export(), RunOptions())  # the process dies before it beats once
    [run] = list_runs(ctx, "vip")
    assert run["status"] == "interrupted (resumable)"


def test_a_run_that_ended_failed_is_retried_not_already_exported(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    sim.configure(item_fail={email: 400 for email in segment_emails(tmp_path)})
    failed = export(ctx)
    sim.configure(item_fail={})
    retried = export(ctx)
    assert failed["status"] == "failed" and not retried.get("alreadyExported")
    assert retried["runId"] == f"{failed['runId']}-f1" and retried["status"] == "succeeded"
    assert retried["sent"] == len(sim.contacts()) == 100


def test_a_held_run_is_planned_again_once_its_snapshot_files_changed(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    write_segment(tmp_path, 1_000, messy=False, run=SECOND_RUN, drop_fraction=0.5)  # still being written
    held = export(ctx)
    assert export(ctx)["alreadyExported"]  # nothing changed: the held run stands
    write_segment(tmp_path, 1_000, messy=False, run=SECOND_RUN, drop_fraction=0.05)  # now complete
    replanned = export(ctx)
    assert held["status"] == "held" and replanned["runId"] == f"{held['runId']}-f1"
    assert replanned["status"] == "succeeded" and 0 < replanned["untagged"] < 100


# ---------------------------------------------------------------------------------------------------- exit codes


@pytest.fixture
def cli_env(tmp_path, sim, monkeypatch):
    config = tmp_path / "exports.json"
    config.write_text(json.dumps({"exports": [export_definition()]}))
    for name, value in {"LOCAL_STORAGE_ROOT": str(tmp_path), "EXPORTS_CONFIG": str(config),
                        "OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": KEY,
                        "OMNISEND_REQUESTS_PER_MINUTE": "400"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KEY_VAULT_URL", raising=False)
    return tmp_path


def test_already_exported_answers_with_the_exit_code_of_a_held_run(cli_env, capsys):
    write_segment(cli_env, 1_000, messy=False, run=FIRST_RUN)
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_OK
    write_segment(cli_env, 1_000, messy=False, run=SECOND_RUN, drop_fraction=0.5)
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_HELD
    capsys.readouterr()
    assert cli.main(["export", "vip", "-q", "--json"]) == cli.EXIT_HELD
    again = json.loads(capsys.readouterr().out)
    assert again["alreadyExported"] and again["status"] == "held"


def test_already_exported_answers_with_the_exit_code_of_a_partial_run(cli_env, sim):
    write_segment(cli_env, 100, messy=False)
    sim.configure(item_fail={segment_emails(cli_env)[0]: 400})
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_PARTIAL
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_PARTIAL


def test_already_exported_after_success_exits_0(cli_env):
    write_segment(cli_env, 100, messy=False)
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_OK
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_OK


# ---------------------------------------------------------------------------------------------------- crashes


def two_snapshots_with_leavers(tmp_path, sim, rows: int = 2_000, drop: float = 0.15):
    """``rows`` exported from a first snapshot; a second one without ``drop`` of them (more than one untag chunk)."""
    write_segment(tmp_path, rows, messy=False, run=FIRST_RUN)
    export(make_context(tmp_path, sim.base_url))
    write_segment(tmp_path, rows, messy=False, run=SECOND_RUN, drop_fraction=drop)


def assert_in_step_with_the_second_snapshot(tmp_path, sim, report) -> None:
    ctx = make_context(tmp_path, sim.base_url)
    members = set(load_state(ctx.state_store, "vip").emails)
    assert report["status"] == "succeeded" and report["untagged"] == report["leavers"] > 250
    assert len(members) == 2_000 - report["leavers"] and report["stateCommitted"]
    wait_for(lambda: tagged(sim) == members)
    assert_accounting(report)


@pytest.mark.parametrize("at", ["/finalise/", "/finalise/summary.json", "/rejected.csv", "/report.json"],
                         ids=["entering-finalise", "after-the-claim", "after-the-state-commit",
                              "after-rejected-csv"])
def test_a_crash_in_finalise_converges_on_the_rerun(tmp_path, sim, at):
    two_snapshots_with_leavers(tmp_path, sim)
    ctx, store = crashing_context(tmp_path, sim.base_url, at)
    with pytest.raises(Crash):
        export(ctx)
    assert store.crashed
    report = export(make_context(tmp_path, sim.base_url))
    assert not report.get("alreadyExported")
    assert_in_step_with_the_second_snapshot(tmp_path, sim, report)


def test_a_crash_after_the_report_leaves_the_export_free_for_the_next_snapshot(tmp_path, sim):
    two_snapshots_with_leavers(tmp_path, sim)
    ctx, _ = crashing_context(tmp_path, sim.base_url, "vip/active/")  # releasing the active run
    # The first write under vip/active/ is this run's own claim at its start: let that one pass.
    ctx.state_store.at, ctx.state_store.crashed = "vip/active/", True
    definition = load_export()
    started = start_run(ctx, definition, RunOptions())
    ctx.state_store.crashed = False
    with pytest.raises(Crash):
        export(ctx, definition)
    again = export(make_context(tmp_path, sim.base_url))
    assert again["alreadyExported"] and again["runId"] == started.run_id and again["status"] == "succeeded"
    write_segment(tmp_path, 2_000, messy=False, run="2026/11/29/0205")
    assert export(make_context(tmp_path, sim.base_url))["runId"] != started.run_id


def test_a_crash_between_untag_chunks_resumes_at_the_next_chunk(tmp_path, sim):
    two_snapshots_with_leavers(tmp_path, sim)
    ctx, _ = crashing_context(tmp_path, sim.base_url, "/finalise/untag/00001.json")
    before = untag_requests(sim)
    with pytest.raises(Crash):
        export(ctx)
    report = export(make_context(tmp_path, sim.base_url))
    chunks = -(-report["leavers"] // 250)
    assert chunks >= 2
    # Chunk 0 once; chunk 1's request went out before the crash and once more after it; the rest once.
    assert untag_requests(sim) - before == chunks + 1
    assert_in_step_with_the_second_snapshot(tmp_path, sim, report)


# ---------------------------------------------------------------------------------------------------- snapshots


def test_an_interrupted_older_full_resync_finishes_before_the_newer_snapshot_starts(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    definition = load_export()
    older = start_run(ctx, definition, RunOptions(full_resync=True))
    plan(ctx, definition, older.run_id)
    send_batch(ctx, "vip", older.run_id, 1)  # ...and the process dies; then the next snapshot lands
    write_segment(tmp_path, 1_000, messy=False, run=SECOND_RUN, drop_fraction=0.1)
    newer = export(make_context(tmp_path, sim.base_url))
    runs = {r["runId"]: r for r in list_runs(ctx, "vip")}
    assert runs[older.run_id]["status"] == "succeeded" and newer["runId"] != older.run_id
    members = state_emails(ctx)
    assert load_state(ctx.state_store, "vip").meta.run_id == newer["runId"]
    assert len(members) == 1_000 - newer["leavers"] and newer["untagged"] == newer["leavers"] > 0
    wait_for(lambda: tagged(sim) == members)  # no current member untagged, every leaver untagged


def test_a_run_of_an_older_snapshot_never_untags_against_nor_overwrites_a_newer_state(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    older = start_run(ctx, definition, RunOptions())
    plan(ctx, definition, older.run_id)  # ...meanwhile a newer snapshot's run committed the state:
    newer_members = [(e, 1) for e in segment_emails(tmp_path)[:10]]
    save_state(ctx.state_store, "vip", newer_members, StateMeta("VipCustomers/2099/01/01/0000", "r-newer",
                                                                ctx.clock() + 60))
    state_before = ctx.state_store.read(STATE_CONTAINER, state_name("vip"))
    report = export(make_context(tmp_path, sim.base_url), definition)
    assert report["runId"] == older.run_id and report["untagged"] == 0 and not report["stateCommitted"]
    assert "newer snapshot" in report["message"]
    assert ctx.state_store.read(STATE_CONTAINER, state_name("vip")) == state_before
    assert untag_requests(sim) == 0


def test_supersede_replaces_an_active_older_run_which_then_never_untags_nor_commits(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    older = start_run(ctx, definition, RunOptions(trigger="http"))  # driven by the Functions app, say
    plan(ctx, definition, older.run_id)
    for n in range(1, 11):
        send_batch(ctx, "vip", older.run_id, n)
    wait_for(lambda: not verify(ctx, "vip", older.run_id, list(range(1, 11))).pending)
    write_segment(tmp_path, 800, messy=False, run=SECOND_RUN)
    with pytest.raises(RunBusy, match="--supersede"):
        export(ctx)
    newer = export(ctx, supersede=True)
    assert finalise(ctx, definition, older.run_id) is None  # its last message arrives late: it does nothing
    runs = {r["runId"]: r["status"] for r in list_runs(ctx, "vip")}
    assert runs == {older.run_id: "superseded", newer["runId"]: "succeeded"}
    assert load_state(ctx.state_store, "vip").meta.run_id == newer["runId"]
    assert len(state_emails(ctx)) == 800 and untag_requests(sim) == 0


# ---------------------------------------------------------------------------------------------------- real processes


def cli_process(*args: str, root, sim, rpm: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISEND_", "KEY_VAULT", "AzureWebJobs"))}
    config = root / "exports.json"
    config.write_text(json.dumps({"exports": [export_definition()]}))
    env.update({"LOCAL_STORAGE_ROOT": str(root), "PYTHONPATH": str(REPO), "EXPORTS_CONFIG": str(config),
                "OMNISEND_BASE_URL": sim.base_url, "OMNISEND_API_KEY": KEY,
                "OMNISEND_REQUESTS_PER_MINUTE": str(rpm)})
    return subprocess.Popen([sys.executable, "-m", "shared", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_sigkilled_export_shows_interrupted_and_the_same_command_finishes_it(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False)
    slow = cli_process("export", "vip", "-q", root=tmp_path, sim=sim, rpm=60)  # one request a second
    wait_for(lambda: sim.state()["stats"]["requests_by_route"].get("POST /api/batches", 0) >= 3, seconds=60)
    slow.send_signal(signal.SIGKILL)
    slow.wait(timeout=30)
    runs = cli_process("runs", "vip", "--json", root=tmp_path, sim=sim, rpm=400)
    out, err = runs.communicate(timeout=60)
    [run] = json.loads(out)
    assert run["status"] == "interrupted (resumable)", err
    again = cli_process("export", "vip", "-q", "--json", root=tmp_path, sim=sim, rpm=400)
    out, err = again.communicate(timeout=120)
    report = json.loads(out)
    assert again.returncode == 0, err
    assert report["runId"] == run["runId"] and report["status"] == "succeeded"
    assert len(sim.contacts()) == 1_000 and tagged(sim) == set(sim.contacts())
    assert_accounting(report)


def test_leavers_whose_untag_fails_stay_in_the_state_and_the_next_run_untags_them(tmp_path, sim):
    two_snapshots_with_leavers(tmp_path, sim, rows=1_000, drop=0.1)
    ctx = make_context(tmp_path, sim.base_url, max_attempts=1)
    definition = load_export()
    started = start_run(ctx, definition, RunOptions())
    manifest = plan(ctx, definition, started.run_id)
    batches = list(range(1, manifest["batches"] + 1))
    for n in batches:
        send_batch(ctx, "vip", started.run_id, n)
    wait_for(lambda: not verify(ctx, "vip", started.run_id, batches).pending)
    sim.configure(error_5xx_rate=1.0)  # Omnisend fails every request while the leavers are untagged
    report = export(ctx, definition)
    sim.configure(error_5xx_rate=0.0)
    assert report["status"] == "partial" and report["untagged"] == 0 < report["leavers"]
    assert "untagging" in report["message"] and len(state_emails(ctx)) == 1_000
    write_segment(tmp_path, 1_000, messy=False, run="2026/11/29/0205", drop_fraction=0.1)
    after = export(make_context(tmp_path, sim.base_url))
    assert after["untagged"] == after["leavers"] == report["leavers"]
    wait_for(lambda: tagged(sim) == state_emails(ctx))


def test_the_cli_exits_7_while_the_functions_app_runs_the_export_and_names_supersede(cli_env, capsys):
    write_segment(cli_env, 100, messy=False)
    ctx = make_context(cli_env, "http://127.0.0.1:9")
    start_run(ctx, load_export(), RunOptions(trigger="timer"))  # the Functions app has it under way
    assert cli.main(["export", "vip", "-q"]) == cli.EXIT_BUSY
    assert "--supersede" in capsys.readouterr().err


def test_new_run_replaces_an_interrupted_run_of_the_snapshot_instead_of_resuming_it(tmp_path, sim):
    write_segment(tmp_path, 300, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    interrupted = start_run(ctx, definition, RunOptions())
    plan(ctx, definition, interrupted.run_id)  # ...and the process dies here
    report = export(make_context(tmp_path, sim.base_url), definition, new_run=True)
    assert report["runId"] == f"{interrupted.run_id}-f1" and report["status"] == "succeeded"
    statuses = {r["runId"]: r["status"] for r in list_runs(ctx, "vip")}
    assert statuses == {interrupted.run_id: "superseded", report["runId"]: "succeeded"}


def test_concurrent_forced_starts_of_one_snapshot_are_one_run(tmp_path, sim):
    import threading

    write_segment(tmp_path, 100, messy=False)
    definition = load_export()
    barrier = threading.Barrier(8)
    results = []

    def start() -> None:
        ctx = make_context(tmp_path, sim.base_url)
        barrier.wait()
        results.append(start_run(ctx, definition, RunOptions(force=True, trigger="http")))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.run_id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert len(list_runs(make_context(tmp_path, sim.base_url), "vip")) == 1


def test_a_sigkill_while_untagging_is_finished_by_the_same_command(tmp_path, sim):
    two_snapshots_with_leavers(tmp_path, sim, rows=4_000, drop=0.15)
    before = untag_requests(sim)
    dying = cli_process("export", "vip", "-q", root=tmp_path, sim=sim, rpm=400)
    # Untag requests are paced at 54/min: after the first one the process is inside finalise, between chunks.
    wait_for(lambda: untag_requests(sim) > before, seconds=90)
    dying.send_signal(signal.SIGKILL)
    dying.wait(timeout=30)
    again = cli_process("export", "vip", "-q", "--json", root=tmp_path, sim=sim, rpm=400)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert not report.get("alreadyExported")  # the kill did land inside the run
    chunks = -(-report["leavers"] // 250)
    assert chunks >= 3 and report["status"] == "succeeded" and report["untagged"] == report["leavers"]
    assert untag_requests(sim) - before <= chunks + 1  # at most the chunk in flight at the kill went twice
    members = state_emails(make_context(tmp_path, sim.base_url))
    assert len(members) == 4_000 - report["leavers"]
    wait_for(lambda: tagged(sim) == members)
