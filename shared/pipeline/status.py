"""What a run is doing, and the runs of an export."""

from __future__ import annotations

import json
from typing import Any

from shared.pipeline.context import RUNS, Context
from shared.pipeline.start import is_interrupted
from shared.pipeline.verify import _run_listing
from shared.runs import (
    RunPaths,
    read_json,
)

# ---------------------------------------------------------------------------------------------------- status

# What `runs` and the status show for a CLI run whose process died (stale or farewell heartbeat, no report).
INTERRUPTED = "interrupted (resumable)"


def run_status(ctx: Context, export: str, run_id: str) -> dict[str, Any] | None:
    """Stage, counts, progress and ETA of a run; the report once it is finished."""
    paths = RunPaths(export, run_id)
    started = read_json(ctx.state_store, RUNS, paths.started)
    if started is None:
        return None
    report = read_json(ctx.state_store, RUNS, paths.report)
    if report is not None:
        return {"runId": run_id, "export": export, "stage": "finished", "status": report["status"], "report": report}
    superseded = read_json(ctx.state_store, RUNS, paths.superseded)
    if superseded is not None:
        return {**superseded, "export": export, "stage": "finished", "status": "superseded",
                "message": f"replaced by a run of snapshot {superseded['bySnapshot']}: no untag, no state commit"}
    failure = read_json(ctx.state_store, RUNS, paths.failure)
    if failure is not None:
        return {**failure, "stage": "stopped", "hint": "fix the cause, then start the run again to resume it"}
    if is_interrupted(ctx, export, run_id, started):
        return {"runId": run_id, "export": export, "stage": "interrupted", "status": INTERRUPTED,
                "startedAt": started["startedAt"],
                "hint": "its process stopped; run the same command again to resume it"}
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return {"runId": run_id, "export": export, "stage": "planning", "startedAt": started["startedAt"]}
    if ctx.state_store.exists(RUNS, paths.finalise_summary):
        return {"runId": run_id, "export": export, "stage": "finalising", "startedAt": started["startedAt"]}
    done, attempts = _run_listing(ctx, paths)
    total = manifest["batches"]
    remaining = total - len(done)
    rpm = ctx.settings.omnisend_requests_per_minute
    return {
        "runId": run_id,
        "export": export,
        "stage": "sending" if len(attempts) < total else "verifying",
        "startedAt": started["startedAt"],
        "batches": total,
        "batchesSubmitted": len(attempts),
        "batchesDone": len(done),
        "progress": round(len(done) / total, 4) if total else 1.0,
        "etaSeconds": round(remaining * 60.0 / rpm, 1),
        "counts": {k: manifest[k] for k in ("rows", "valid", "rejected", "duplicates", "unchanged", "toSend")},
    }


def list_runs(ctx: Context, export: str) -> list[dict[str, Any]]:
    """Runs of an export, newest first, with status."""
    runs = []
    for obj in ctx.state_store.list(RUNS, f"{export}/runs/"):
        if obj.name.endswith("/started.json"):
            started = json.loads(ctx.state_store.read(RUNS, obj.name))
            paths = RunPaths(export, started["runId"])
            report = read_json(ctx.state_store, RUNS, paths.report)
            failure = None if report else read_json(ctx.state_store, RUNS, paths.failure)
            if report is not None:
                status = report["status"]
            elif ctx.state_store.exists(RUNS, paths.superseded):
                status = "superseded"
            elif failure is not None:
                status = "failed"
            elif is_interrupted(ctx, export, started["runId"], started):
                status = INTERRUPTED
            else:
                status = "running"
            runs.append({
                "runId": started["runId"],
                "snapshot": started["snapshot"],
                "startedAt": started["startedAt"],
                "status": status,
                "sent": report.get("sent") if report else None,
                "failed": report.get("failed") if report else None,
                "message": (report or failure or {}).get("message", ""),
            })
    runs.sort(key=lambda r: r["startedAt"], reverse=True)
    return runs


