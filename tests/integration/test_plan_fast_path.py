"""The planner's fast path changes nothing: the same snapshot planned with it and without it (every row parsed by the
reference reader, no raw hash trusted) writes the same payload bytes, the same rejected and duplicate rows, the same
counts. Each case starts from a real first export (its state holds raw-record hashes), then plans a second snapshot
in two copies of the store."""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from hashlib import blake2b
from pathlib import Path

import orjson
import pytest

from devtools import sample_data
from shared.names import RUNS_CONTAINER, STATE_CONTAINER
from shared.pipeline import RunOptions, plan, rowloop, start_run
from shared.runs import RunPaths
from shared.segments import records
from shared.state import MAGIC, MAGIC_V2, load_state, state_name
from tests.integration.exporting import export, load_export, make_context, write_segment

FIRST_RUN = "2026/11/27/0205"
SECOND_RUN = "2026/11/28/0205"
ROWS = 600
# Fields that say when and how fast, not what.
TIMING = ("plannedAt", "planSeconds")
LAYOUT = "batches/<layout>/"
ATTEMPT = "plan/<attempt>/"


def _run_folder(root: Path, export_name: str, run_id: str) -> Path:
    return root / RUNS_CONTAINER / RunPaths(export_name, run_id).root


def _plan(root: Path, definition, fast: bool, api_version: str = "2026-03-15") -> dict:
    """Plan the newest snapshot; every file of the run folder (the planned-keys file holds raw hashes, which only
    the fast path records, so it is compared separately; started.json holds the start time), plus the manifest
    without its timings."""
    ctx = make_context(root, "http://127.0.0.1:9", api_version=api_version)
    started = start_run(ctx, definition, RunOptions(force=True))
    manifest = plan(ctx, definition, started.run_id, fast_path=fast)
    folder = _run_folder(root, definition.name, started.run_id)
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "planned-keys.bin", "started.json")
    }
    keys, fps, _, dropped = rowloop.decode_planned((folder / manifest["planFiles"] / "planned-keys.bin").read_bytes())
    # Segment files and plan files live in fresh random folders per planning attempt (shared/batch_store.py,
    # shared/pipeline/plan.py): compare their contents, not their names.
    layout = manifest.get("batchFiles", {}).get("folder")
    attempt = manifest["planFiles"]
    manifest = {k: v for k, v in manifest.items() if k not in TIMING}
    manifest["planFiles"] = ATTEMPT
    files = {name.replace(attempt, ATTEMPT, 1): data for name, data in files.items()}
    if layout:
        manifest["batchFiles"] = {**manifest["batchFiles"], "folder": LAYOUT}
        files = {name.replace(layout, LAYOUT, 1): data for name, data in files.items()}
    return {
        "manifest": manifest,
        "files": files,
        "planned": sorted(zip(keys, fps, dropped, strict=True)),
    }


def _both_ways(tmp_path: Path, root: Path, definition, api_version: str = "2026-03-15") -> tuple[dict, dict]:
    fast_root, reference_root = tmp_path / "fast", tmp_path / "reference"
    shutil.copytree(root, fast_root)
    shutil.copytree(root, reference_root)
    return (_plan(fast_root, definition, True, api_version), _plan(reference_root, definition, False, api_version))


def _assert_same(fast: dict, reference: dict) -> None:
    assert fast["manifest"] == reference["manifest"]
    assert sorted(fast["files"]) == sorted(reference["files"])
    for name, data in reference["files"].items():
        assert fast["files"][name] == data, f"{name} differs"
    assert fast["planned"] == reference["planned"]


def _first_export(root: Path, sim, definition=None, **kw) -> dict:
    write_segment(root, ROWS, run=FIRST_RUN, partitions=2, **kw)
    report = export(make_context(root, sim.base_url), definition or load_export())
    assert report["status"] == "succeeded" and report["sent"] > 0
    return report


def _rejected_and_duplicates(result: dict) -> list[str]:
    text = result["files"][ATTEMPT + "plan-rejected.csv"].decode("utf-8")
    return [line for line in text.splitlines()[1:] if line]


def test_a_second_snapshot_with_changed_and_missing_rows_plans_the_same(tmp_path, sim):
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2, changed_fraction=0.1, drop_fraction=0.05)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    manifest = fast["manifest"]
    assert manifest["unchanged"] > 0 and manifest["toSend"] > 0 and manifest["leavers"] > 0
    # The messy rows are there to compare: rejected rows and duplicates, one for one.
    rows = _rejected_and_duplicates(fast)
    assert any(r.startswith("duplicate,") for r in rows) and any(r.startswith("rejected,") for r in rows)


def test_an_unchanged_snapshot_is_all_unchanged_either_way(tmp_path, sim):
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == 0 and fast["manifest"]["unchanged"] == fast["manifest"]["valid"]
    # Rows recognised unparsed still count the fields they dropped (stored with the member).
    assert fast["manifest"]["droppedFields"]


def test_renamed_columns_with_the_same_bytes_send_the_new_meaning(tmp_path, sim):
    """model.json swaps FirstName and LastName: every record keeps its bytes, every payload changes."""
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2)
    model_path = next((root / sample_data.CONTAINER).rglob("model.json"))
    model = json.loads(model_path.read_text(encoding="utf-8"))
    for attribute in model["entities"][0]["attributes"]:
        swap = {"FirstName": "LastName", "LastName": "FirstName"}
        attribute["name"] = swap.get(attribute["name"], attribute["name"])
    model_path.write_text(json.dumps(model), encoding="utf-8")
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == fast["manifest"]["valid"] and fast["manifest"]["unchanged"] == 0


def test_a_changed_export_definition_sends_what_the_definition_now_says(tmp_path, sim):
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2)
    changed = load_export(tags=["ci-vip", "ci-gold"])
    fast, reference = _both_ways(tmp_path, root, changed)
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == fast["manifest"]["valid"]


def test_another_api_version_plans_the_same_either_way(tmp_path, sim):
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2)
    fast, reference = _both_ways(tmp_path, root, load_export(), api_version="v3")
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == fast["manifest"]["valid"]


def test_a_planner_version_bump_plans_the_same_either_way(tmp_path, sim, monkeypatch):
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2, changed_fraction=0.05)
    monkeypatch.setattr(rowloop, "PLANNER_VERSION", rowloop.PLANNER_VERSION + 1)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)


def test_the_raw_hash_salt_covers_what_a_payload_depends_on(tmp_path, monkeypatch):
    write_segment(tmp_path, 10)
    from shared.segments import discover_snapshot

    export_def = load_export()
    snapshot = discover_snapshot(make_context(tmp_path, "http://127.0.0.1:9").source_store, export_def.source)
    salt = rowloop.raw_salt(export_def, snapshot, "2026-03-15")
    assert rowloop.raw_salt(export_def, snapshot, "v3") != salt
    assert rowloop.raw_salt(load_export(tags=["x"]), snapshot, "2026-03-15") != salt
    renamed = snapshot.__class__(**{**snapshot.__dict__, "columns": tuple(reversed(snapshot.columns))})
    assert rowloop.raw_salt(export_def, renamed, "2026-03-15") != salt
    other_format = snapshot.__class__(
        **{**snapshot.__dict__, "csv_format": snapshot.csv_format.__class__(delimiter=";")}
    )
    assert rowloop.raw_salt(export_def, other_format, "2026-03-15") != salt
    monkeypatch.setattr(rowloop, "PLANNER_VERSION", rowloop.PLANNER_VERSION + 1)
    assert rowloop.raw_salt(export_def, snapshot, "2026-03-15") != salt


def _with_line_breaks(root: Path, run: str) -> None:
    """Every third row's City holds a quoted line break (LF or CRLF), so records span lines."""
    for path in (root / sample_data.CONTAINER).rglob("*.csv"):
        if run not in path.as_posix():
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        city = sample_data.COLUMNS.index("City")
        for i, row in enumerate(rows):
            if i % 3 == 0 and len(row) > city:
                row[city] = f"{row[city]}\nFloor {i}" if i % 2 else f"{row[city]}\r\nUnit {i}"
        with open(path, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\r\n").writerows(rows)


def test_quoted_line_breaks_across_block_boundaries_plan_the_same(tmp_path, sim, monkeypatch):
    # Blocks of 64 bytes: nearly every multi-line record starts in one block and ends in another.
    monkeypatch.setattr(records, "BLOCK_BYTES", 64)
    root = tmp_path / "store"
    write_segment(root, ROWS, run=FIRST_RUN, partitions=2)
    _with_line_breaks(root, FIRST_RUN)
    assert export(make_context(root, sim.base_url))["status"] == "succeeded"
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2, changed_fraction=0.1)
    _with_line_breaks(root, SECOND_RUN)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["unchanged"] > 0 and fast["manifest"]["toSend"] > 0


def _as_version_2(root: Path, tmp_path: Path) -> None:
    """Rewrite the stored state as the previous code wrote it: format 2, blake2b fingerprints of the payloads the
    first snapshot plans to (taken from a reference plan's batch files), emails sorted."""
    scratch = tmp_path / "scratch"
    shutil.copytree(root, scratch)
    shutil.rmtree(scratch / STATE_CONTAINER)
    shutil.rmtree(scratch / RUNS_CONTAINER)
    planned = _plan(scratch, load_export(), fast=False)
    entries = []
    batches = []
    for name, data in planned["files"].items():
        if name.endswith(".seg"):  # batch documents back to back (shared/batch_store.py)
            text, at = data.decode("utf-8"), 0
            while at < len(text):
                batch, at = json.JSONDecoder().raw_decode(text, at)
                batches.append(batch)
    for batch in batches:
        for (_, _, email, _), item in zip(batch["rows"], batch["items"], strict=True):
            entries.append((email, int.from_bytes(blake2b(orjson.dumps(item), digest_size=8).digest(), "big")))
    assert entries, f"no batch files among {sorted(planned['files'])}"
    entries.sort()
    body = struct.pack("<I", len(entries)) + b"".join(struct.pack("<Q", fp) for _, fp in entries)
    body += "\n".join(e for e, _ in entries).encode()
    state = load_state(make_context(root, "http://127.0.0.1:9").state_store, "vip")
    header = json.dumps(state.meta.to_json()).encode()
    (root / STATE_CONTAINER / state_name("vip")).write_bytes(
        MAGIC_V2 + struct.pack("<I", len(header)) + header + zlib.compress(body)
    )


def test_an_old_format_state_is_compared_on_the_slow_path_then_rewritten(tmp_path, sim):
    root = tmp_path / "store"
    _first_export(root, sim)
    _as_version_2(root, tmp_path)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2, changed_fraction=0.1)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    # The blake2b fingerprints were recognised: only the changed rows are sent, not everybody again.
    assert 0 < fast["manifest"]["toSend"] < fast["manifest"]["unchanged"]
    # A run of the second snapshot rewrites the state in the current format, with raw hashes.
    report = export(make_context(root, sim.base_url))
    assert report["status"] == "succeeded" and report["unchanged"] == fast["manifest"]["unchanged"]
    stored = (root / STATE_CONTAINER / state_name("vip")).read_bytes()
    assert stored.startswith(MAGIC)
    state = load_state(make_context(root, sim.base_url).state_store, "vip")
    assert not state.legacy and sum(1 for r in state.raws if r) > len(state) // 2


@pytest.mark.parametrize("fast", [True, False])
def test_a_third_run_after_a_fast_second_one_still_sends_only_changes(tmp_path, sim, fast):
    """Raw hashes refreshed by one run serve the next: the run after an unchanged one sends nothing."""
    root = tmp_path / "store"
    _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN, partitions=2)
    second = export(make_context(root, sim.base_url))
    assert second["sent"] == 0
    result = _plan(root, load_export(), fast)
    assert result["manifest"]["toSend"] == 0


def test_a_first_snapshot_without_a_state_plans_the_same_either_way(tmp_path):
    root = tmp_path / "store"
    write_segment(root, ROWS, run=FIRST_RUN, partitions=2)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == fast["manifest"]["valid"] > 0


def test_a_first_snapshot_with_quoted_line_breaks_across_blocks_plans_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "BLOCK_BYTES", 64)
    root = tmp_path / "store"
    write_segment(root, ROWS, run=FIRST_RUN, partitions=2)
    _with_line_breaks(root, FIRST_RUN)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["toSend"] == fast["manifest"]["valid"] > 0


def _with_long_cells(root: Path, run: str) -> None:
    """Every seventh row's FirstName is past the length limit (dropped); every eleventh row's line is past it while
    each of its cells is within it (kept). The row loop skips per-field length checks only in blocks without a long
    line, so both must come out as the reference makes them."""
    limit = rowloop.MAX_STRING_LENGTH
    for path in (root / sample_data.CONTAINER).rglob("*.csv"):
        if run not in path.as_posix():
            continue
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
        first, last = sample_data.COLUMNS.index("FirstName"), sample_data.COLUMNS.index("LastName")
        for i, row in enumerate(rows):
            if i % 7 == 3 and len(row) > first:
                row[first] = "N" * (limit + 1)
            elif i % 11 == 4 and len(row) > last:
                row[first], row[last] = "F" * limit, "L" * limit
        with open(path, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)


def test_cells_past_the_length_limit_plan_the_same_either_way(tmp_path, sim):
    root = tmp_path / "store"
    write_segment(root, ROWS, run=FIRST_RUN, partitions=2)
    _with_long_cells(root, FIRST_RUN)
    fast, reference = _both_ways(tmp_path, root, load_export())
    _assert_same(fast, reference)
    assert fast["manifest"]["droppedFields"]["firstName"] > ROWS // 10


@pytest.mark.parametrize("with_state", [False, True], ids=["first-run", "re-plan"])
def test_planning_progress_counts_the_rows_of_the_bytes_it_reports(tmp_path, sim, monkeypatch, with_state):
    """A progress report never says a share of the bytes without the rows in them (a small file once showed
    "100 %, 0 rows"): rows are counted up to the block the bytes reach, and the last report has every row."""
    monkeypatch.setattr(records, "BLOCK_BYTES", 4096)
    root = tmp_path / "store"
    if with_state:
        _first_export(root, sim)
    write_segment(root, ROWS, run=SECOND_RUN if with_state else FIRST_RUN, partitions=2, changed_fraction=0.1)
    ctx = make_context(root, sim.base_url)
    started = start_run(ctx, load_export(), RunOptions(force=True))
    reports: list[tuple[int, int]] = []
    manifest = plan(ctx, load_export(), started.run_id, progress=lambda rows, nbytes: reports.append((rows, nbytes)))

    assert len(reports) > 4 and all(rows > 0 for rows, _ in reports)
    assert reports == sorted(reports)
    assert reports[-1][0] == manifest["rows"]
    # Rows keep pace with bytes: about ROWS rows per partition of about the same size.
    total = reports[-1][1]
    assert all(abs(rows / manifest["rows"] - nbytes / total) < 0.15 for rows, nbytes in reports)
