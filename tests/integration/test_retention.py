"""Personal data at rest: payloads go when a run is finalised; the rest of a run goes RUN_RETENTION_DAYS later."""

from __future__ import annotations

import pytest

from shared import names
from shared.errors import ConfigError
from shared.orchestrator import Orchestrator
from shared.pipeline import RunOptions, finalise, plan, start_run
from shared.retention import SECONDS_PER_DAY, prune
from shared.runs import RunPaths
from shared.settings import DEFAULT_RUN_RETENTION_DAYS, Settings
from shared.state import load_state
from tests.integration.exporting import export, load_export, make_context, write_segment

RUNS = names.RUNS_CONTAINER


def run_files(ctx, report) -> set[str]:
    root = RunPaths(report["export"], report["runId"]).root + "/"
    return {o.name[len(root):] for o in ctx.state_store.list(RUNS, root)}


def finished_epoch(report) -> float:
    from datetime import datetime

    return datetime.fromisoformat(report["finishedAt"].replace("Z", "+00:00")).timestamp()


@pytest.fixture
def exported(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    return ctx, export(ctx)


def test_after_finalise_no_payload_file_remains(exported):
    ctx, report = exported
    files = run_files(ctx, report)
    assert report["batches"] == 3
    assert not any(f.startswith(("batches/", "plan/")) for f in files)
    assert "changes.bin" not in files and "planned-keys.bin" not in files
    assert {"report.json", "rejected.csv", "manifest.json", "started.json"} <= files


def test_a_deletion_cut_short_after_the_report_is_finished_by_the_next_finalise_call(exported):
    ctx, report = exported
    paths = RunPaths(report["export"], report["runId"])
    ctx.state_store.write(RUNS, paths.batch(2), b'{"items":[],"rows":[]}')  # left behind by a crash
    ctx.state_store.write(RUNS, paths.changes, b"left behind")
    again = finalise(ctx, load_export(), report["runId"])
    assert again["runId"] == report["runId"] and again["status"] == report["status"]
    assert not any(f.startswith("batches/") or f == "changes.bin" for f in run_files(ctx, report))


def test_prune_also_finishes_a_deletion_cut_short(exported):
    ctx, report = exported
    paths = RunPaths(report["export"], report["runId"])
    ctx.state_store.write(RUNS, paths.planned_keys, b"left behind")
    result = prune(ctx.state_store, now=finished_epoch(report), retention_days=30)
    assert result["payloadsDeleted"] == [{"export": "vip", "runId": report["runId"], "files": 1}]
    assert "planned-keys.bin" not in run_files(ctx, report) and "report.json" in run_files(ctx, report)


def test_a_run_within_the_retention_period_keeps_its_report_and_rejected_csv(exported):
    ctx, report = exported
    result = prune(ctx.state_store, now=finished_epoch(report) + 29 * SECONDS_PER_DAY, retention_days=30)
    assert result["runsDeleted"] == []
    assert {"report.json", "rejected.csv"} <= run_files(ctx, report)


def test_after_the_retention_period_nothing_of_the_run_remains_but_the_state_stays(exported):
    ctx, report = exported
    result = prune(ctx.state_store, now=finished_epoch(report) + 31 * SECONDS_PER_DAY, retention_days=30)
    assert [r["runId"] for r in result["runsDeleted"]] == [report["runId"]]
    assert list(ctx.state_store.list(RUNS)) == []
    assert len(load_state(ctx.state_store, "vip")) == report["stateMembers"] > 0


def test_a_dry_run_prune_lists_the_run_and_deletes_nothing(exported):
    ctx, report = exported
    before = run_files(ctx, report)
    result = prune(ctx.state_store, now=finished_epoch(report) + 31 * SECONDS_PER_DAY, retention_days=30,
                   dry_run=True)
    assert [r["runId"] for r in result["runsDeleted"]] == [report["runId"]]
    assert run_files(ctx, report) == before


def test_an_unfinished_run_is_never_pruned_however_old(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    run = start_run(ctx, load_export(), RunOptions())
    plan(ctx, load_export(), run.run_id)
    root = RunPaths("vip", run.run_id).root + "/"
    before = [o.name for o in ctx.state_store.list(RUNS, root)]
    result = prune(ctx.state_store, now=ctx.clock() + 3650 * SECONDS_PER_DAY, retention_days=1)
    assert result["unfinishedKept"] == [{"export": "vip", "runId": run.run_id}]
    assert [o.name for o in ctx.state_store.list(RUNS, root)] == before
    assert any(name.startswith(root + "batches/") for name in before)


class _Queues:
    """The queue boundary: the timer's plan messages are only collected here."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, queue_name, message, delay_seconds=0):
        self.sent.append((queue_name, message))
        return "id"


def test_the_timer_prunes_runs_past_the_retention_period(exported):
    ctx, report = exported
    ctx.clock = lambda: finished_epoch(report) + 31 * SECONDS_PER_DAY
    orchestrator = Orchestrator(ctx, _Queues(), lambda: [load_export()])
    orchestrator.on_timer()
    assert run_files(ctx, report) == set()


def test_retention_days_default_to_30_and_bad_values_are_refused():
    assert Settings.from_env({}).run_retention_days == DEFAULT_RUN_RETENTION_DAYS == 30
    assert Settings.from_env({"RUN_RETENTION_DAYS": "7"}).run_retention_days == 7
    for bad in ("0", "-1", "thirty", "100000"):
        with pytest.raises(ConfigError, match="RUN_RETENTION_DAYS"):
            Settings.from_env({"RUN_RETENTION_DAYS": bad})
