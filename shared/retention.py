"""Personal data at rest, kept minimal and dated (ARCHITECTURE §4 rule 11).

Two steps, both safe to repeat and to interrupt at any line:

1. ``delete_payloads``: once a run is finalised (its report.json exists), the files that hold whole contacts are
   deleted: ``batches/`` (every payload field), ``changes.bin`` (emails + fingerprints) and ``planned-keys.bin``.
   Finalise calls it right after writing the report; a crash in between leaves the report, and the next call of
   finalise, or the next ``prune``, finishes the deletion.
2. ``prune``: what remains of a finished run (report.json, rejected.csv, plan-rejected.csv and the markers, which
   name failed and rejected emails) is deleted ``RUN_RETENTION_DAYS`` after the run finished. A run without a
   report (planning, sending, stopped by a bad key) is never pruned: it may still be resumed.

Only ``names.RUNS_CONTAINER`` is touched, and only names of the form ``<export>/runs/<runId>/...``. The membership
state lives in ``names.STATE_CONTAINER`` and is never pruned: a lifecycle rule may expire the whole runs container
(``exporter-runs``), never ``exporter-state``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import names
from shared.runs import RunPaths
from shared.storage import NotFound, ObjectStore, StoredObject

RUNS = names.RUNS_CONTAINER
SECONDS_PER_DAY = 86_400
# Files of a run folder that hold whole contacts (relative to the run folder); see the layout in shared/runs.py.
PAYLOAD_PREFIXES = ("batches/", "plan/")
PAYLOAD_FILES = ("changes.bin", "planned-keys.bin")


def is_payload(relative_name: str) -> bool:
    """True for a run file (name relative to its run folder) that holds contact payloads."""
    return relative_name in PAYLOAD_FILES or relative_name.startswith(PAYLOAD_PREFIXES)


def delete_payloads(store: ObjectStore, paths: RunPaths) -> int:
    """Delete the payload files of a finalised run; returns how many were deleted (0 when already done)."""
    names_ = [o.name for o in store.list(RUNS, paths.root + "/") if is_payload(o.name[len(paths.root) + 1 :])]
    _delete_all(store, names_)
    return len(names_)


def _delete_all(store: ObjectStore, blob_names: list[str]) -> None:
    """One request per blob on Blob Storage: 10,000 batch files take minutes one by one, so a remote store's
    ``parallel_writes`` threads share them (a local folder deletes them faster in one thread)."""
    threads = getattr(store, "parallel_writes", 0)
    if threads and len(blob_names) > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="delete") as pool:
            list(pool.map(lambda name: store.delete(RUNS, name), blob_names))
    else:
        for name in blob_names:
            store.delete(RUNS, name)


@dataclass
class RunFolder:
    export: str
    run_id: str
    objects: list[StoredObject] = field(default_factory=list)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.export, self.run_id)

    def relative(self, obj: StoredObject) -> str:
        return obj.name[len(self.paths.root) + 1 :]


def run_folders(store: ObjectStore) -> list[RunFolder]:
    """Every run folder in the runs container, from one listing (names ``<export>/runs/<runId>/<file>``)."""
    folders: dict[tuple[str, str], RunFolder] = {}
    for obj in store.list(RUNS):
        parts = obj.name.split("/", 3)
        if len(parts) != 4 or parts[1] != "runs" or not parts[3]:
            continue  # the legacy state (<export>/state/members.bin) and anything else: not a run file
        key = (parts[0], parts[2])
        folders.setdefault(key, RunFolder(*key)).objects.append(obj)
    return [folders[k] for k in sorted(folders)]


def _finished_at(store: ObjectStore, folder: RunFolder) -> float | None:
    """When the run finished (its report's finishedAt; the report's blob time if that is unreadable), or None
    for a run without a report."""
    report_obj = next((o for o in folder.objects if folder.relative(o) == "report.json"), None)
    if report_obj is None:
        return None
    try:
        report = json.loads(store.read(RUNS, report_obj.name))
        return datetime.fromisoformat(report["finishedAt"].replace("Z", "+00:00")).timestamp()
    except (NotFound, ValueError, KeyError, TypeError, AttributeError):
        return report_obj.last_modified.timestamp()


def prune(store: ObjectStore, *, now: float, retention_days: int, dry_run: bool = False) -> dict[str, Any]:
    """Delete the payloads left in finished runs, and every file of runs that finished more than
    ``retention_days`` ago. Unfinished runs are listed, never touched. Returns what was (or would be) removed."""
    result: dict[str, Any] = {"retentionDays": retention_days, "dryRun": dry_run, "payloadsDeleted": [],
                              "runsDeleted": [], "unfinishedKept": []}
    cutoff = now - retention_days * SECONDS_PER_DAY
    for folder in run_folders(store):
        finished = _finished_at(store, folder)
        where = {"export": folder.export, "runId": folder.run_id}
        if finished is None:
            result["unfinishedKept"].append(where)
            continue
        if finished < cutoff:
            # The report goes last, so an interrupted prune leaves a finished run that the next prune completes.
            ordered = sorted(folder.objects, key=lambda o: folder.relative(o) == "report.json")
            if not dry_run:
                _delete_all(store, [o.name for o in ordered[:-1]])
                store.delete(RUNS, ordered[-1].name)
            result["runsDeleted"].append({**where, "finishedAt": _iso(finished), "files": len(ordered)})
            continue
        payloads = [o for o in folder.objects if is_payload(folder.relative(o))]
        if payloads:
            if not dry_run:
                _delete_all(store, [o.name for o in payloads])
            result["payloadsDeleted"].append({**where, "files": len(payloads)})
    return result


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(result: dict[str, Any]) -> str:
    """The prune result in a few lines, for the CLI and the timer's log."""
    verb = "would delete" if result["dryRun"] else "deleted"
    lines = [
        f"{verb} {len(result['runsDeleted'])} run(s) finished more than {result['retentionDays']} days ago "
        f"({sum(r['files'] for r in result['runsDeleted'])} files)",
        f"{verb} the payload files left in {len(result['payloadsDeleted'])} finished run(s) "
        f"({sum(r['files'] for r in result['payloadsDeleted'])} files)",
    ]
    lines += [f"  - {r['export']} {r['runId']} (finished {r['finishedAt']})" for r in result["runsDeleted"]]
    if result["unfinishedKept"]:
        lines.append(f"kept {len(result['unfinishedKept'])} unfinished run(s) (never pruned; resume or finish them): "
                     + ", ".join(f"{r['export']} {r['runId']}" for r in result["unfinishedKept"]))
    return "\n".join(lines)


def prune_for_timer(store: ObjectStore, *, now: float, retention_days: int) -> dict[str, Any] | None:
    """The timer's prune: logs what it removed; a failure is logged, never raised (exports must still start)."""
    import logging

    log = logging.getLogger("exporter")
    try:
        result = prune(store, now=now, retention_days=retention_days)
    except Exception:
        log.exception("prune failed; the next timer fire tries again")
        return None
    log.info("prune runsDeleted=%d payloadsDeleted=%d unfinishedKept=%d retentionDays=%d",
             len(result["runsDeleted"]), len(result["payloadsDeleted"]), len(result["unfinishedKept"]),
             retention_days)
    return result
