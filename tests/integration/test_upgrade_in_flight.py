"""A run in flight across an upgrade: planned by an earlier version, sent and finalised by this one."""

from __future__ import annotations

import json
import zlib
from array import array

from shared.names import RUNS_CONTAINER, STATE_CONTAINER
from shared.pipeline import RunOptions, plan, rowloop, start_run
from shared.runs import RunPaths
from shared.state import load_state, state_name
from tests.integration.exporting import assert_accounting, export, load_export, make_context, write_segment

ROWS = 400


def _planned_then_upgraded(tmp_path, sim, planned_keys: bytes | None):
    """Plan a run, then make its files look as an earlier version left them: the plan files in the run folder, no
    plannedKeysFormat nor planFiles in the manifest and, when given, another planned-keys.bin."""
    write_segment(tmp_path, ROWS, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    started = start_run(ctx, load_export(), RunOptions(force=True))
    manifest = plan(ctx, load_export(), started.run_id)
    paths = RunPaths("vip", started.run_id)
    for name in ("changes.bin", "planned-keys.bin", "plan-rejected.csv"):
        data = ctx.state_store.read(RUNS_CONTAINER, paths.plan_file(manifest, name))
        ctx.state_store.write(RUNS_CONTAINER, f"{paths.root}/{name}", data)
    manifest.pop("plannedKeysFormat")
    manifest.pop("planFiles")
    ctx.state_store.write(RUNS_CONTAINER, paths.manifest, json.dumps(manifest).encode())
    if planned_keys is not None:
        ctx.state_store.write(RUNS_CONTAINER, paths.planned_keys, planned_keys)
    return ctx, started.run_id, manifest


def test_a_run_planned_before_issue_12_ends_failed_with_the_state_untouched_and_says_why(tmp_path, sim):
    # Format 1: the zlib-compressed planned keys alone.
    old_planned_keys = zlib.compress(array("Q", range(1, ROWS + 1)).tobytes(), 1)
    ctx, run_id, manifest = _planned_then_upgraded(tmp_path, sim, old_planned_keys)

    report = export(ctx, force=True)  # the same command resumes the run in flight

    assert report["runId"] == run_id and report["status"] == "failed"
    assert "planned by an earlier version" in report["message"] and "Nothing to do" in report["message"]
    assert report["sent"] == manifest["toSend"] == ROWS and report["untagged"] == 0
    assert report["stateCommitted"] is False
    assert_accounting(report)
    assert not (tmp_path / STATE_CONTAINER / state_name("vip")).exists()
    # Nothing is stuck: the next run compares with the state as it was (none) and sends everyone once more.
    again = export(make_context(tmp_path, sim.base_url))
    assert again["status"] == "succeeded" and again["sent"] == ROWS
    assert len(load_state(ctx.state_store, "vip")) == ROWS


def test_a_run_planned_by_the_previous_format_2_version_finalises_as_usual(tmp_path, sim):
    ctx, run_id, _ = _planned_then_upgraded(tmp_path, sim, None)

    report = export(ctx, force=True)

    assert report["runId"] == run_id and report["status"] == "succeeded" and report["stateCommitted"] is True
    assert len(load_state(ctx.state_store, "vip")) == ROWS


def test_the_format_of_planned_keys_is_read_from_the_bytes_when_the_manifest_does_not_say():
    assert rowloop.planned_keys_format({}, zlib.compress(array("Q", [5, 6, 7]).tobytes())) == 1
    assert rowloop.planned_keys_format({}, b"") == 1
    assert rowloop.planned_keys_format({"plannedKeysFormat": 2}, b"") == 2
