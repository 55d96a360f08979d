"""Files and uploads one plan writes (issue 12: segment files instead of one file per batch).

    python -m bench.segment_files local --rows 1000000   # plan on the local store: files written, seconds, RSS
    python -m bench.segment_files blob --rows 100000     # plan on Azurite: blob uploads, seconds

Counts at the store boundary (every write/create), so it measures any version of the planner. For the "before"
numbers run this file from another checkout's folder: ``cd <checkout> && PYTHONPATH=. python
<this repo>/bench/segment_files.py local``. Data is generated once per row count under
``--data`` (default /tmp/bench-segment-files). ``blob`` needs Azurite on 127.0.0.1:10000 (``./dev azurite start``
or any tests/azure run). Not a test: numbers go to the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path

from devtools import sample_data


class CountingStore:
    """Any ObjectStore, counting the objects written (write + create) and their bytes."""

    def __init__(self, inner) -> None:
        self.inner, self.uploads, self.bytes = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write(self, container, name, data):
        self.uploads += 1
        self.bytes += len(data)
        self.inner.write(container, name, data)

    def create(self, container, name, data):
        self.uploads += 1
        self.bytes += len(data)
        return self.inner.create(container, name, data)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.segment_files", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", choices=["local", "blob"])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-segment-files"))
    args = parser.parse_args()

    # Imported after argparse so that PYTHONPATH decides which checkout's product code is measured.
    from bench.common import export_definition, settings_for
    from shared.app import build_context
    from shared.names import RUNS_CONTAINER
    from shared.pipeline import RunOptions, plan, start_run
    from shared.runs import RunPaths
    from shared.secrets import StaticKeyProvider
    from shared.settings import AZURITE_CONNECTION_STRING
    from shared.storage import LocalObjectStore

    source_root = args.data / f"rows-{args.rows}"
    if not (source_root / ".done").exists():
        shutil.rmtree(source_root, ignore_errors=True)
        print(f"generating {args.rows:,} rows in {source_root} ...", file=sys.stderr)
        sample_data.write_export(source_root, args.rows, partitions=4)
        (source_root / ".done").touch()
    source = LocalObjectStore(source_root)
    if args.store == "local":
        state_root = args.data / f"state-{uuid.uuid4().hex[:8]}"
        inner = LocalObjectStore(state_root)
    else:
        from shared.storage_blob import BlobObjectStore

        state_root = None
        inner = BlobObjectStore.from_connection_string(AZURITE_CONNECTION_STRING)
    store = CountingStore(inner)
    settings = settings_for(source_root, "http://127.0.0.1:9", 400)
    ctx = build_context(settings, key_provider=StaticKeyProvider("bench-key"), stores=(store, source))
    # A name of this measurement's own, so runs on a shared Azurite never meet.
    definition = dataclasses.replace(export_definition(), name=f"bench-{uuid.uuid4().hex[:8]}")
    started = start_run(ctx, definition, RunOptions(force=True))
    before = store.uploads
    t0, cpu0 = time.perf_counter(), time.process_time()
    manifest = plan(ctx, definition, started.run_id)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    root = RunPaths(definition.name, started.run_id).root
    files = sum(1 for _ in inner.list(RUNS_CONTAINER, root + "/"))
    print(json.dumps({
        "store": args.store, "rows": manifest["rows"], "batches": manifest["batches"],
        "uploadsDuringPlan": store.uploads - before, "bytesWritten": store.bytes, "filesInRunFolder": files,
        # CPU seconds of this process (all threads): less at the mercy of other load on the machine than wall time.
        "planSeconds": round(seconds, 2), "planCpuSeconds": round(cpu, 2),
        "peakRssMB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))
    if state_root is not None:
        shutil.rmtree(state_root, ignore_errors=True)
    else:
        for obj in list(inner.list(RUNS_CONTAINER, f"{definition.name}/")):
            inner.delete(RUNS_CONTAINER, obj.name)


if __name__ == "__main__":
    main()
