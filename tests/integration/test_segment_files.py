"""Planned batches live in a few segment files with a byte-range index (shared/batch_store.py): a plan writes few
files, every stage reads its batch by range, a crash at any point of planning leaves nothing a message can point
into, twin planners agree on one layout, and a run planned with one file per batch (before an upgrade) finishes."""

from __future__ import annotations

import importlib
import threading

import pytest

from shared import names
from shared.batch_store import BATCHES_PER_SEGMENT, INDEX_NAME, BatchUnreadable, read_batch
from shared.pipeline import RunOptions, plan, start_run
from shared.runs import RunPaths, dumps, read_json
from shared.storage import NotFound
from tests.integration.exporting import assert_accounting, export, load_export, make_context, write_segment
from tests.integration.test_run_life_cycle import Crash, crashing_context

RUNS = names.RUNS_CONTAINER
# Just over BATCHES_PER_SEGMENT batches of 100 contacts: two segments, the second one short.
ROWS = BATCHES_PER_SEGMENT * 100 + 450


def posts(sim) -> int:
    return sim.state(include_contacts=False)["stats"]["requests_by_route"].get("POST /api/batches", 0)


def run_files(ctx, paths: RunPaths) -> list[str]:
    return [o.name[len(paths.root) + 1 :] for o in ctx.state_store.list(RUNS, paths.root + "/")]


def planned(tmp_path, sim, rows=ROWS):
    write_segment(tmp_path, rows, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    run_id = start_run(ctx, definition, RunOptions()).run_id
    return ctx, definition, run_id, plan(ctx, definition, run_id)


def test_a_plan_writes_its_batches_into_a_few_segment_files_and_one_index(tmp_path, sim):
    ctx, _, run_id, manifest = planned(tmp_path, sim)
    paths = RunPaths("vip", run_id)

    batch_files = sorted(f for f in run_files(ctx, paths) if f.startswith("batches/"))

    assert manifest["batches"] == BATCHES_PER_SEGMENT + 5
    folder = manifest["batchFiles"]["folder"]
    assert batch_files == [f"{folder}00001.seg", f"{folder}00002.seg", f"{folder}{INDEX_NAME}"]
    assert manifest["batchFiles"]["segments"] == 2


def test_every_batch_read_by_range_is_the_whole_batch_in_plan_order(tmp_path, sim):
    ctx, _, run_id, manifest = planned(tmp_path, sim)
    paths = RunPaths("vip", run_id)

    batches = [read_batch(ctx.state_store, paths, n) for n in range(1, manifest["batches"] + 1)]

    assert [len(b["items"]) for b in batches] == manifest["batchSizes"]
    assert [len(b["rows"]) for b in batches] == manifest["batchSizes"]
    assert len({(row[0], row[1]) for b in batches for row in b["rows"]}) == manifest["toSend"]
    pairs = [(row, item) for b in batches for row, item in zip(b["rows"], b["items"], strict=True)]
    assert all(row[2] == item["identifiers"][0]["id"] for row, item in pairs)


@pytest.mark.parametrize(
    "crash_at",
    ["00002.seg", INDEX_NAME, "manifest.json"],
    ids=["between-two-segments", "between-the-last-segment-and-the-index", "between-the-index-and-the-manifest"],
)
def test_a_crash_while_planning_leaves_no_batch_a_message_could_point_into(tmp_path, sim, crash_at):
    write_segment(tmp_path, ROWS, messy=False)
    crashing, _ = crashing_context(tmp_path, sim.base_url, at=crash_at)
    with pytest.raises(Crash):
        export(crashing)
    paths_before = list(crashing.state_store.list(RUNS))
    assert not any(o.name.endswith("/manifest.json") for o in paths_before)  # nothing was handed to a sender

    report = export(make_context(tmp_path, sim.base_url))  # the same command again resumes the run

    assert report["status"] == "succeeded" and report["sent"] == ROWS
    assert posts(sim) == report["batches"] == BATCHES_PER_SEGMENT + 5
    assert_accounting(report)
    paths = RunPaths(report["export"], report["runId"])
    # The crashed attempt's orphan segments went with the payloads.
    assert not any(f.startswith("batches/") for f in run_files(make_context(tmp_path, sim.base_url), paths))


def test_two_planners_of_one_run_at_the_same_moment_agree_on_one_layout(tmp_path, sim):
    write_segment(tmp_path, ROWS, messy=False)
    definition = load_export()
    ctx = make_context(tmp_path, sim.base_url)
    run_id = start_run(ctx, definition, RunOptions()).run_id
    manifests: list[dict] = []
    barrier = threading.Barrier(2)

    def planner():
        twin = make_context(tmp_path, sim.base_url)
        barrier.wait()
        manifests.append(plan(twin, definition, run_id))

    threads = [threading.Thread(target=planner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(manifests) == 2 and manifests[0] == manifests[1]
    paths = RunPaths("vip", run_id)
    assert read_json(ctx.state_store, RUNS, paths.manifest)["batchFiles"] == manifests[0]["batchFiles"]
    report = export(ctx)
    assert report["runId"] == run_id and report["status"] == "succeeded" and report["sent"] == ROWS
    assert posts(sim) == report["batches"]


def to_per_batch_files(ctx, paths: RunPaths) -> None:
    """Rewrite a planned run the way the version before segments left it: batches/<n>.json, no batchFiles."""
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    for n in range(1, manifest["batches"] + 1):
        ctx.state_store.write(RUNS, paths.batch(n), dumps(read_batch(ctx.state_store, paths, n)))
    for obj in list(ctx.state_store.list(RUNS, f"{paths.root}/{manifest['batchFiles']['folder']}")):
        ctx.state_store.delete(RUNS, obj.name)
    del manifest["batchFiles"]
    ctx.state_store.write(RUNS, paths.manifest, dumps(manifest))


def test_a_run_planned_with_one_file_per_batch_before_an_upgrade_still_sends_and_finishes(tmp_path, sim):
    ctx, _, run_id, _ = planned(tmp_path, sim, rows=1_000)
    paths = RunPaths("vip", run_id)
    to_per_batch_files(ctx, paths)
    assert sorted(f for f in run_files(ctx, paths) if f.startswith("batches/")) == [
        f"batches/{n:05d}.json" for n in range(1, 11)
    ]

    report = export(make_context(tmp_path, sim.base_url))

    assert report["runId"] == run_id and report["status"] == "succeeded" and report["sent"] == 1_000
    assert posts(sim) == 10
    assert not any(f.startswith("batches/") for f in run_files(ctx, paths))  # payload deletion took them too


def test_a_segment_cut_short_makes_its_later_batches_unreadable_naming_the_file_and_range(tmp_path, sim):
    ctx, _, run_id, manifest = planned(tmp_path, sim, rows=1_000)
    paths = RunPaths("vip", run_id)
    name = f"{paths.root}/{manifest['batchFiles']['folder']}00001.seg"
    segment = ctx.state_store.read(RUNS, name)
    ctx.state_store.write(RUNS, name, segment[: len(segment) // 2])

    assert len(read_batch(ctx.state_store, paths, 1)["items"]) == 100
    with pytest.raises(BatchUnreadable, match=r"00001\.seg ends before batch bytes \d+-\d+"):
        read_batch(ctx.state_store, paths, 10)


def test_a_batch_the_run_does_not_have_is_not_found(tmp_path, sim):
    ctx, _, run_id, manifest = planned(tmp_path, sim, rows=1_000)

    with pytest.raises(NotFound, match="batch 11 of run"):
        read_batch(ctx.state_store, RunPaths("vip", run_id), manifest["batches"] + 1)


def test_a_twin_planner_that_loses_the_manifest_race_leaves_the_winners_plan_files_alone(tmp_path, sim, monkeypatch):
    """The twin read the definition after someone added a tag: its payloads, changes and planned keys differ. It
    finishes after the winner created the manifest; what finalise reads is still the winner's plan, so the state
    holds the fingerprints of what was sent."""
    write_segment(tmp_path, 500, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    run_id = start_run(ctx, load_export(), RunOptions()).run_id
    winner = plan(ctx, load_export(), run_id)
    paths = RunPaths("vip", run_id)
    # The twin started before the manifest existed: it does not see it at its start.
    plan_module = importlib.import_module("shared.pipeline.plan")
    real_read_json = plan_module.read_json
    unseen = [paths.manifest]  # the first read of the manifest only

    def read_json(store, container, name):
        if name in unseen:
            unseen.remove(name)
            return None
        return real_read_json(store, container, name)

    monkeypatch.setattr(plan_module, "read_json", read_json)
    loser = plan(make_context(tmp_path, sim.base_url), load_export(tags=["ci-vip", "added-later"]), run_id)
    monkeypatch.undo()

    assert loser == winner  # it read back the manifest that won
    report = export(ctx)
    assert report["runId"] == run_id and report["status"] == "succeeded" and report["sent"] == 500
    # The next run of the same definition and snapshot finds everyone unchanged: the state holds the fingerprints
    # of the payloads the winner planned and sent, not the twin's.
    again = export(make_context(tmp_path, sim.base_url), force=True)
    assert again["sent"] == 0 and again["unchanged"] == 500
    assert not [f for f in run_files(ctx, paths) if f.startswith(("plan/", "batches/"))]
