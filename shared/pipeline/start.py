"""Starting a run: find the newest snapshot and claim its run; a run that cannot go on is recorded."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from shared.errors import FailRun
from shared.exports import ExportDefinition, ensure_runnable
from shared.pipeline.context import RUNS, Context, RunOptions, StartedRun, _now_iso, _snapshot_to_json, log
from shared.probe import ensure_assumptions
from shared.runs import (
    RunPaths,
    derive_run_id,
    dumps,
    read_json,
)
from shared.segments import discover_snapshot

# ---------------------------------------------------------------------------------------------------- start


def start_run(ctx: Context, export: ExportDefinition, options: RunOptions) -> StartedRun:
    """Find the newest snapshot and claim its run. The run id comes from export + snapshot, so a second start of
    the same snapshot (a duplicate timer fire, a re-run) finds the first run instead of starting another."""
    ensure_runnable(export)
    ensure_assumptions(ctx.state_store, export, ctx.api_version)  # the consent probe's verdicts (shared/probe.py)
    snapshot = discover_snapshot(ctx.source_store, export.source)
    fresh = options.force or options.full_resync or options.allow_mass_exit
    run_id = derive_run_id(export.name, snapshot.snapshot_id, ctx.clock() if fresh else None)
    paths = RunPaths(export.name, run_id)
    started = {
        "runId": run_id,
        "export": export.name,
        "snapshot": snapshot.snapshot_id,
        "startedAt": _now_iso(ctx.clock),
        "startedAtEpoch": ctx.clock(),
        "apiVersion": ctx.api_version,
        "options": asdict(options),
        "source": _snapshot_to_json(snapshot),
    }
    created = ctx.state_store.create(RUNS, paths.started, dumps(started))
    finished = (not created) and ctx.state_store.exists(RUNS, paths.report)
    log.info(
        "run start export=%s runId=%s snapshot=%s created=%s finished=%s",
        export.name, run_id, snapshot.snapshot_id, created, finished,
    )
    return StartedRun(export.name, run_id, created, finished, snapshot.snapshot_id)


def read_started(ctx: Context, export: str, run_id: str) -> dict[str, Any]:
    started = read_json(ctx.state_store, RUNS, RunPaths(export, run_id).started)
    if started is None:
        raise FailRun(f"run {run_id} of export {export!r} does not exist (no started.json)")
    return started




def fail_run(ctx: Context, export: str, run_id: str, error: Exception) -> dict[str, Any]:
    """Record why a run cannot go on (bad key, unreadable snapshot) so its status says so. It is not a report:
    starting the same run again (after fixing the key, say) resumes it where it stopped."""
    paths = RunPaths(export, run_id)
    failure = {"runId": run_id, "export": export, "status": "failed", "message": str(error),
               "error": type(error).__name__, "failedAt": _now_iso(ctx.clock)}
    ctx.state_store.write(RUNS, paths.failure, dumps(failure))
    return failure


