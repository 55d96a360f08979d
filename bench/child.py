"""Runs one measured step in its own process, so its peak RSS is its own: ``python -m bench.child STEP ROOT``.

Prints one JSON line with what it measured.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from bench.common import EXPORT, export_definition, settings_for
from shared.app import build_context
from shared.local_runner import run_export
from shared.pipeline import RunOptions, plan, start_run
from shared.secrets import StaticKeyProvider
from shared.storage import LocalObjectStore


def main() -> None:
    step, root = sys.argv[1], Path(sys.argv[2])
    base_url = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:9"
    rpm = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    store = LocalObjectStore(root)
    settings = settings_for(root, base_url, rpm)
    ctx = build_context(settings, key_provider=StaticKeyProvider("bench-key"), stores=(store, store))
    definition = export_definition()
    out: dict = {"step": step}
    if step == "plan":
        t0 = time.perf_counter()
        started = start_run(ctx, definition, RunOptions(force=True))
        manifest = plan(ctx, definition, started.run_id)
        out.update(seconds=time.perf_counter() - t0, rows=manifest["rows"], batches=manifest["batches"],
                   toSend=manifest["toSend"], unchanged=manifest["unchanged"], leavers=manifest["leavers"])
    elif step == "run":
        t0 = time.perf_counter()
        report = run_export(ctx, definition, RunOptions(force=True), sleep=time.sleep)
        out.update(seconds=time.perf_counter() - t0, report=report,
                   responses429=ctx.client.responses_429, clientRequests=ctx.client.requests_made)
    else:
        raise SystemExit(f"unknown step {step}")
    out["peakRssMB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["export"] = EXPORT
    print(json.dumps(out))


if __name__ == "__main__":
    main()
