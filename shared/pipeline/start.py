"""Starting a run: one active run per export, deterministic run ids, resume before restart (ARCHITECTURE §4 rule 7).

Life cycle of a run (README "Run life cycle"): planned → sending → verifying → finalised as succeeded | partial |
held | failed. A run can also be *stopped* (failure.json: bad key, unreadable snapshot; resumable), *interrupted*
(its CLI process died: stale heartbeat; resumable) or *superseded* (an explicit request replaced it; terminal).

Which run a start gets:
1. The export's **active run** (a pointer chain in the state container, see ``active_prefix``), if unfinished:
   - same snapshot → that run (resumed if it stopped); a forced start gets it too (HTTP answers 409);
   - another snapshot → ``busy``: nothing new starts until it finishes, unless ``supersede``.
2. Otherwise the snapshot's runs, whose ids are deterministic: ``r-<digest>`` then ``r-<digest>-f1``, ``-f2``...
   (the k-th further run of that snapshot, forced or re-planned). The newest one is
   - unfinished (its process died before it became active) → resumed, whatever options started it;
   - finished → "already exported", except that a run that ended *failed* is retried, a *held* run whose snapshot
     files changed since is re-planned, and a fresh start (force, full resync, allow mass exit, new run) gets the
     next id.
   Two identical forced starts (a retried POST, a double click) therefore meet on the same id: the first creates
   ``-fk`` and becomes active, the second finds it active. A forced start after that run finished gets ``-fk+1``.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from typing import Any

from shared import events, names
from shared.errors import FailRun
from shared.exports import ExportDefinition, ensure_runnable
from shared.leases import chain_append, chain_latest
from shared.pipeline.context import RUNS, Context, RunOptions, StartedRun, _now_iso, _snapshot_to_json, log
from shared.probe import ensure_assumptions
from shared.runs import (
    RunPaths,
    derive_run_id,
    dumps,
    read_json,
)
from shared.segments import Snapshot, discover_snapshot

# How often the CLI runner writes its heartbeat into the run folder, and after how long without one a CLI run
# counts as interrupted (its process died): a few missed beats, so a busy machine is not mistaken for a dead one.
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_STALE_SECONDS = 60.0
# Starting a run retries this often when another start wins a race for the same pointer generation.
START_ATTEMPTS = 5
# A finished run with this status delivered nothing: starting its snapshot again retries it as a new run
# instead of answering "already exported".
RETRIED_STATUSES = ("failed",)


def active_prefix(export: str) -> str:
    """The export's active-run pointer chain in names.STATE_CONTAINER: ``<export>/active/<generation>.json``."""
    return f"{export}/active/"


# ---------------------------------------------------------------------------------------------------- start


def start_run(ctx: Context, export: ExportDefinition, options: RunOptions) -> StartedRun:
    """Pick or create the run this start means (see the module docstring). Safe to call twice at once: every
    decision is committed with create-if-absent, and the loser of a race re-reads and decides again."""
    ensure_runnable(export)
    ensure_assumptions(ctx.state_store, export, ctx.api_version)  # the consent probe's verdicts (shared/probe.py)
    snapshot = discover_snapshot(ctx.source_store, export.source)
    for _ in range(START_ATTEMPTS):
        started = _try_start(ctx, export, options, snapshot)
        if started is not None:
            log.info("run start export=%s runId=%s snapshot=%s created=%s finished=%s busy=%s %s", export.name,
                     started.run_id, started.snapshot_id, started.created, started.finished, started.busy,
                     started.note)
            return started
    raise FailRun(f"could not start a run of {export.name!r}: other starts kept changing its active run; try again")


def _try_start(ctx: Context, export: ExportDefinition, options: RunOptions, snapshot: Snapshot) -> StartedRun | None:
    generation, active = active_run(ctx, export.name)
    if active is not None:
        run_id, run_snapshot = active["runId"], active["snapshot"]
        if run_snapshot == snapshot.snapshot_id and not options.new_run:
            return StartedRun(export.name, run_id, False, False, run_snapshot, note="the active run")
        if not options.supersede:
            return StartedRun(export.name, run_id, False, False, run_snapshot, busy=True,
                              wanted_snapshot=snapshot.snapshot_id,
                              note=f"run {run_id} (snapshot {run_snapshot}) is still active")
        supersede_run(ctx, export.name, run_id, by_snapshot=snapshot.snapshot_id)
        return None  # decide again with the pointer free

    existing = _runs_of_snapshot(ctx, export.name, snapshot.snapshot_id)
    note = ""
    if existing:
        newest = existing[-1]
        paths = RunPaths(export.name, newest)
        report = read_json(ctx.state_store, RUNS, paths.report)
        superseded = ctx.state_store.exists(RUNS, paths.superseded)
        if report is None and not superseded and not options.new_run:
            # Unfinished but not active (its start died between the two writes, or it predates the pointer).
            if not claim_active(ctx, export.name, generation, newest, snapshot.snapshot_id):
                return None
            return StartedRun(export.name, newest, False, False, snapshot.snapshot_id, note="an unfinished run")
        if report is None and not superseded:  # --new-run over an unfinished run nobody drives: replace it
            supersede_run(ctx, export.name, newest, by_snapshot=snapshot.snapshot_id)
        if report is not None and not options.fresh:
            old = read_json(ctx.state_store, RUNS, paths.started) or {}
            if report["status"] in RETRIED_STATUSES:
                note = f"run {newest} ended {report['status']}: starting it again as a new run"
            elif report["status"] == "held" and _files_changed(old.get("source", {}), snapshot):
                note = f"run {newest} was held and the snapshot's files changed since: planning it again"
            else:
                return StartedRun(export.name, newest, False, True, snapshot.snapshot_id)
    run_id = derive_run_id(export.name, snapshot.snapshot_id, further=len(existing))
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
    if not ctx.state_store.create(RUNS, paths.started, dumps(started)):
        return None  # a twin start created it first: it is the newest run of the snapshot now
    if not claim_active(ctx, export.name, generation, run_id, snapshot.snapshot_id):
        _, pointer = active_run(ctx, export.name)
        if pointer is None or pointer["runId"] != run_id:
            # Another run became active first. Withdraw this never-used one so it does not linger unfinished.
            ctx.state_store.delete(RUNS, paths.started)
            return None
        # A twin start found this run unfinished and made it active for us: it is ours to plan.
    return StartedRun(export.name, run_id, True, False, snapshot.snapshot_id, note=note)


def _runs_of_snapshot(ctx: Context, export: str, snapshot_id: str) -> list[str]:
    """The snapshot's run ids in order (base, -f1, -f2...): existence checks, not a listing of run folders."""
    found = []
    while True:
        run_id = derive_run_id(export, snapshot_id, further=len(found))
        if not ctx.state_store.exists(RUNS, RunPaths(export, run_id).started):
            return found
        found.append(run_id)


def _files_changed(old_source: dict[str, Any], snapshot: Snapshot) -> bool:
    def files(partitions: Any) -> set[tuple]:
        return {(p["container"], p["name"], p["size"], p["etag"]) for p in partitions}

    return files(old_source.get("partitions", [])) != files(_snapshot_to_json(snapshot)["partitions"])


# ---------------------------------------------------------------------------------------------------- active run


def active_run(ctx: Context, export: str) -> tuple[int, dict[str, Any] | None]:
    """(generation, pointer) of the export's unfinished active run; pointer None when the export is free. A pointer
    to a run that finished or was superseded (its finaliser died before releasing it) counts as free."""
    generation, pointer = chain_latest(ctx.state_store, names.STATE_CONTAINER, active_prefix(export))
    run_id = pointer.get("runId")
    if not run_id:
        return generation, None
    paths = RunPaths(export, run_id)
    if (not ctx.state_store.exists(RUNS, paths.started) or ctx.state_store.exists(RUNS, paths.report)
            or ctx.state_store.exists(RUNS, paths.superseded)):
        return generation, None
    return generation, pointer


def claim_active(ctx: Context, export: str, generation: int, run_id: str, snapshot_id: str) -> bool:
    return chain_append(ctx.state_store, names.STATE_CONTAINER, active_prefix(export), generation,
                        {"runId": run_id, "snapshot": snapshot_id, "at": _now_iso(ctx.clock)})


def release_active(ctx: Context, export: str, run_id: str) -> None:
    """The run finished: free the export for the next snapshot (no-op if the pointer moved on already)."""
    generation, pointer = chain_latest(ctx.state_store, names.STATE_CONTAINER, active_prefix(export))
    if pointer.get("runId") == run_id:
        chain_append(ctx.state_store, names.STATE_CONTAINER, active_prefix(export), generation,
                     {"runId": None, "released": run_id, "at": _now_iso(ctx.clock)})


def supersede_run(ctx: Context, export: str, run_id: str, by_snapshot: str) -> None:
    """Mark a run superseded: its remaining messages end without a request, and it never untags or commits the
    state. What it delivered stays delivered; the next run re-sends it (it is not in the state)."""
    body = {"runId": run_id, "supersededAt": _now_iso(ctx.clock), "bySnapshot": by_snapshot}
    ctx.state_store.create(RUNS, RunPaths(export, run_id).superseded, dumps(body))
    release_active(ctx, export, run_id)
    log.warning("run superseded export=%s runId=%s by snapshot %s", export, run_id, by_snapshot)


def is_superseded(ctx: Context, export: str, run_id: str) -> bool:
    return ctx.state_store.exists(RUNS, RunPaths(export, run_id).superseded)


# ---------------------------------------------------------------------------------------------------- heartbeat


def beat(ctx: Context, export: str, run_id: str, *, ended: bool = False) -> None:
    """The CLI runner is alive and working on this run (written every HEARTBEAT_SECONDS); ``ended``: it stopped
    working on it (finished, failed or interrupted), so the run shows as resumable at once."""
    body = {"at": ctx.clock(), "host": socket.gethostname(), "pid": os.getpid(), "ended": ended}
    ctx.state_store.write(RUNS, RunPaths(export, run_id).heartbeat, json.dumps(body).encode())


def is_interrupted(ctx: Context, export: str, run_id: str, started: dict[str, Any] | None = None) -> bool:
    """A CLI run with no report whose process stopped beating (died, killed, machine off): resumable. Runs of the
    Functions app have no heartbeat; their messages are their life."""
    paths = RunPaths(export, run_id)
    started = started or read_json(ctx.state_store, RUNS, paths.started) or {}
    if started.get("options", {}).get("trigger", "cli") != "cli":
        return False
    heartbeat = read_json(ctx.state_store, RUNS, paths.heartbeat)
    if heartbeat is None:
        return True  # the runner writes one before any work: none means its process died right after the start
    if heartbeat.get("ended") or (heartbeat.get("host") == socket.gethostname() and not _alive(heartbeat["pid"])):
        return True  # it said goodbye (Ctrl-C, an error), or it ran here and its process is gone
    return ctx.clock() - heartbeat["at"] > HEARTBEAT_STALE_SECONDS


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------------- stopping


def read_started(ctx: Context, export: str, run_id: str) -> dict[str, Any]:
    started = read_json(ctx.state_store, RUNS, RunPaths(export, run_id).started)
    if started is None:
        raise FailRun(f"run {run_id} of export {export!r} does not exist (no started.json)")
    return started


def fail_run(ctx: Context, export: str, run_id: str, error: Exception) -> dict[str, Any]:
    """Record why a run cannot go on (bad key, unreadable snapshot) so its status says so. It is not a report:
    starting the same run again (after fixing the key, say) resumes it where it stopped. It stays the export's
    active run until then."""
    paths = RunPaths(export, run_id)
    failure = {"runId": run_id, "export": export, "status": "failed", "message": str(error),
               "error": type(error).__name__, "failedAt": _now_iso(ctx.clock)}
    ctx.state_store.write(RUNS, paths.failure, dumps(failure))
    events.run_finished(failure)  # a stopped run needs someone too: the alerts read it
    return failure
