"""Runs one measured step in its own process, so its peak RSS is its own: ``python -m bench.child STEP ROOT``.

Prints one JSON line with what it measured. Seconds are CPU seconds of this process (user + system, from
``resource.getrusage``): the dev VM has 2 cores shared with other work, and wall time there says more about the
neighbours than about the code. ``wallSeconds`` is printed too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

from bench.common import EXPORT, export_definition, settings_for
from shared import names
from shared.app import build_context
from shared.local_runner import run_export
from shared.pipeline import RunOptions, dry_run, plan, start_run
from shared.pipeline.plan import _read_changes
from shared.pipeline.rowloop import decode_planned
from shared.runs import RunPaths
from shared.secrets import StaticKeyProvider
from shared.segments import discover_snapshot
from shared.state import load_state, save_state
from shared.storage import LocalObjectStore


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _files(root: Path) -> set[str]:
    return {os.path.join(d, f) for d, _, names in os.walk(root) for f in names}


def _csv_read(store: LocalObjectStore, definition) -> int:
    """The floor: a bare ``csv.reader`` over every partition of the snapshot, nothing else."""
    snapshot = discover_snapshot(store, definition.source)
    rows = 0
    for part in snapshot.partitions:
        with store.open(part.container, part.name) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            for _ in csv.reader(text):
                rows += 1
    return rows


def main() -> None:
    step, root = sys.argv[1], Path(sys.argv[2])
    base_url = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:9"
    rpm = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    store = LocalObjectStore(root)
    settings = settings_for(root, base_url, rpm)
    ctx = build_context(settings, key_provider=StaticKeyProvider("bench-key"), stores=(store, store))
    definition = export_definition()
    out: dict = {"step": step}
    before = _files(root)
    t0, c0 = time.perf_counter(), _cpu()
    if step == "idle":  # start-up and imports only: what bench instructions subtracts from every step
        out["rows"] = 0
    elif step == "csv":
        out["rows"] = _csv_read(store, definition)
    elif step == "plan":
        started = start_run(ctx, definition, RunOptions(force=True))
        manifest = plan(ctx, definition, started.run_id)
        out.update(
            runId=started.run_id,
            rows=manifest["rows"],
            batches=manifest["batches"],
            toSend=manifest["toSend"],
            unchanged=manifest["unchanged"],
            leavers=manifest["leavers"],
        )
    elif step == "dryrun":
        report = dry_run(ctx, definition, RunOptions())
        out.update(rows=report["rows"], batches=report["batches"], toSend=report["wouldCreateOrUpdate"])
    elif step == "commit":
        # The state a finalise writes when every planned contact was delivered (the bench has no Omnisend).
        run_id = sys.argv[3]
        paths = RunPaths(EXPORT, run_id)
        manifest = json.loads(store.read(names.RUNS_CONTAINER, paths.manifest))
        keys, fps, raws, dropped = decode_planned(
            store.read(names.RUNS_CONTAINER, paths.plan_file(manifest, "planned-keys.bin"))
        )
        by_key = {}
        previous = load_state(store, EXPORT)
        changes = _read_changes(store.read(names.RUNS_CONTAINER, paths.plan_file(manifest, "changes.bin")))
        from shared.contacts import email_key

        sent = {email_key(e): e for e, _, _ in changes}
        emails = previous.emails
        for key, fp, raw, names_dropped in zip(keys, fps, raws, dropped, strict=True):
            email = sent.get(key) or emails[previous.index_of(key)]
            by_key[key] = (email, fp, raw, names_dropped)
        out["stateBytes"] = save_state(store, EXPORT, list(by_key.values()))
        out["stateMembers"] = len(by_key)
    elif step == "run":
        report = run_export(ctx, definition, RunOptions(force=True), sleep=time.sleep)
        out.update(report=report, responses429=ctx.client.responses_429, clientRequests=ctx.client.requests_made)
    else:
        raise SystemExit(f"unknown step {step}")
    out["seconds"] = _cpu() - c0
    out["wallSeconds"] = time.perf_counter() - t0
    out["filesWritten"] = len(_files(root) - before)
    out["peakRssMB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["export"] = EXPORT
    print(json.dumps(out))


if __name__ == "__main__":
    main()
