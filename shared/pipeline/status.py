"""What a run is doing, and the runs of an export."""

from __future__ import annotations

import json
from typing import Any

from shared.pipeline.context import RUNS, Context
from shared.pipeline.verify import _run_listing
from shared.runs import (
    RunPaths,
    read_json,
)

# ---------------------------------------------------------------------------------------------------- status


def run_status(ctx: Context, export: str, run_id: str) -> dict[str, Any] | None:
    """Stage, counts, progress and ETA of a run; the report once it is finished."""
    paths = RunPaths(export, run_id)
    started = read_json(ctx.state_store, RUNS, paths.started)
    if started is None:
        return None
    report = read_json(ctx.state_store, RUNS, paths.report)
    if report is not None:
        return {"runId": run_id, "export": export, "stage": "finished", "status": report["status"], "report": report}
    failure = read_json(ctx.state_store, RUNS, paths.failure)
    if failure is not None:
        return {**failure, "stage": "stopped", "hint": "fix the cause, then start the run again to resume it"}
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return {"runId": run_id, "export": export, "stage": "planning", "startedAt": started["startedAt"]}
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
            stopped = failure is not None
            runs.append({
                "runId": started["runId"],
                "snapshot": started["snapshot"],
                "startedAt": started["startedAt"],
                "status": report["status"] if report else "failed" if stopped else "running",
                "sent": report.get("sent") if report else None,
                "failed": report.get("failed") if report else None,
                "message": (report or failure or {}).get("message", ""),
            })
    runs.sort(key=lambda r: r["startedAt"], reverse=True)
    return runs


