"""Segment files on Blob Storage (Azurite): planning uploads a few segments (in writer threads) and one index instead
of a blob per batch, sends read their batch with a ranged download, a crash between the segments and the index
leaves nothing a message points into, and a run planned with a blob per batch before an upgrade still finishes."""

from __future__ import annotations

import uuid

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from shared import names
from shared.app import build_context
from shared.batch_store import BATCHES_PER_SEGMENT, INDEX_NAME, read_batch
from shared.pipeline import RunOptions, plan, start_run
from shared.runs import RunPaths, dumps, read_json
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from shared.storage import LocalObjectStore
from shared.storage_blob import BlobObjectStore
from tests.integration.exporting import assert_accounting, export, load_export, write_segment

pytestmark = pytest.mark.azurite

KEY = "test-key"
RUNS = names.RUNS_CONTAINER
# Two segments, the second one short.
ROWS = BATCHES_PER_SEGMENT * 100 + 450


@pytest.fixture(scope="module")
def omnisend():
    with Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.01, requests_per_minute=1_000_000)) as sim:
        yield sim


class CountingStore:
    """The Blob store, counting uploads (write and create) and optionally dying at the first upload of a name
    containing ``crash_at`` (a fault at the storage boundary: everything before it landed, nothing after)."""

    def __init__(self, inner: BlobObjectStore, crash_at: str | None = None) -> None:
        self.inner, self.crash_at, self.uploads = inner, crash_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _upload(self, name: str) -> None:
        if self.crash_at and self.crash_at in name:
            self.crash_at = None
            raise RuntimeError(f"instance died uploading {name}")
        self.uploads += 1

    def write(self, container, name, data):
        self._upload(name)
        self.inner.write(container, name, data)

    def create(self, container, name, data):
        self._upload(name)
        return self.inner.create(container, name, data)


class Setup:
    def __init__(self, tmp_path, azurite: str, sim: Simulator, rows: int) -> None:
        sim.reset()
        write_segment(tmp_path, rows, messy=False)
        self.tmp_path, self.azurite, self.sim = tmp_path, azurite, sim
        # A name of this test's own: run folders in the shared runs container stay apart.
        self.definition = load_export(name=f"vip-{uuid.uuid4().hex[:8]}")

    def context(self, store=None):
        settings = Settings(
            local_storage_root=self.tmp_path,
            omnisend_base_url=self.sim.base_url,
            omnisend_api_key=KEY,
            omnisend_requests_per_minute=1_000_000,
        )
        state = store or BlobObjectStore.from_connection_string(self.azurite)
        return build_context(
            settings, key_provider=StaticKeyProvider(KEY), stores=(state, LocalObjectStore(self.tmp_path))
        )

    def posts(self) -> int:
        return self.sim.state(include_contacts=False)["stats"]["requests_by_route"].get("POST /api/batches", 0)


@pytest.fixture
def setup(tmp_path, azurite, omnisend) -> Setup:
    return Setup(tmp_path, azurite, omnisend, ROWS)


# Whole runs on Azurite write a few blobs per batch (claims, markers, results): ten batches keep them quick.
SMALL_ROWS = 1_000


@pytest.fixture
def small(tmp_path, azurite, omnisend) -> Setup:
    return Setup(tmp_path, azurite, omnisend, SMALL_ROWS)


def batch_blobs(ctx, paths: RunPaths) -> list[str]:
    return [o.name[len(paths.root) + 1 :] for o in ctx.state_store.list(RUNS, paths.root + "/batches/")]


def test_a_plan_uploads_a_few_segments_and_one_index_instead_of_a_blob_per_batch(setup):
    counting = CountingStore(BlobObjectStore.from_connection_string(setup.azurite))
    ctx = setup.context(counting)
    run_id = start_run(ctx, setup.definition, RunOptions()).run_id
    before = counting.uploads

    manifest = plan(ctx, setup.definition, run_id)

    folder = manifest["batchFiles"]["folder"]
    assert manifest["batches"] == BATCHES_PER_SEGMENT + 5
    assert sorted(batch_blobs(ctx, RunPaths(setup.definition.name, run_id))) == [
        f"{folder}00001.seg",
        f"{folder}00002.seg",
        f"{folder}{INDEX_NAME}",
    ]
    # 2 segments + the index + changes.bin, planned-keys.bin, plan-rejected.csv and the manifest.
    assert counting.uploads - before == 7


def test_every_batch_of_every_segment_comes_back_by_ranged_download(setup):
    ctx = setup.context()
    run_id = start_run(ctx, setup.definition, RunOptions()).run_id
    manifest = plan(ctx, setup.definition, run_id)
    paths = RunPaths(setup.definition.name, run_id)

    batches = [read_batch(setup.context().state_store, paths, n) for n in range(1, manifest["batches"] + 1)]

    assert [len(b["items"]) for b in batches] == [len(b["rows"]) for b in batches] == manifest["batchSizes"]
    assert sum(manifest["batchSizes"]) == ROWS
    assert len({row[2] for b in batches for row in b["rows"]}) == ROWS


def test_a_crash_between_the_segments_and_the_index_leaves_no_manifest_and_the_next_attempt_sends_once(small):
    setup = small
    crashing = setup.context(CountingStore(BlobObjectStore.from_connection_string(setup.azurite), INDEX_NAME))
    with pytest.raises(RuntimeError, match="instance died uploading"):
        export(crashing, setup.definition)
    ctx = setup.context()
    [run] = {o.name.split("/")[2] for o in ctx.state_store.list(RUNS, f"{setup.definition.name}/runs/")}
    paths = RunPaths(setup.definition.name, run)
    assert read_json(ctx.state_store, RUNS, paths.manifest) is None
    assert len(batch_blobs(ctx, paths)) == 1  # the dead attempt's segment, named by no index or manifest

    report = export(ctx, setup.definition)

    assert report["runId"] == run and report["status"] == "succeeded"
    assert report["sent"] == SMALL_ROWS == len(setup.sim.contacts())
    assert setup.posts() == report["batches"] == 10
    assert_accounting(report)
    assert batch_blobs(ctx, paths) == []  # payload deletion took the segments (the orphan too) and the index


def test_a_run_planned_with_a_blob_per_batch_before_an_upgrade_still_sends_and_finishes(small):
    setup = small
    ctx = setup.context()
    run_id = start_run(ctx, setup.definition, RunOptions()).run_id
    manifest = plan(ctx, setup.definition, run_id)
    paths = RunPaths(setup.definition.name, run_id)
    # What the version before segments left behind: batches/<n>.json and a manifest without batchFiles.
    for n in range(1, manifest["batches"] + 1):
        ctx.state_store.write(RUNS, paths.batch(n), dumps(read_batch(ctx.state_store, paths, n)))
    for name in [o.name for o in ctx.state_store.list(RUNS, f"{paths.root}/{manifest['batchFiles']['folder']}")]:
        ctx.state_store.delete(RUNS, name)
    del manifest["batchFiles"]
    ctx.state_store.write(RUNS, paths.manifest, dumps(manifest))

    report = export(setup.context(), setup.definition)

    assert report["runId"] == run_id and report["status"] == "succeeded" and report["sent"] == SMALL_ROWS
    assert setup.posts() == manifest["batches"] == 10
    assert batch_blobs(ctx, paths) == []
