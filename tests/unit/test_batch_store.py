"""Segment files and their index (shared/batch_store.py) on the local store: where segments are cut, what a reader
does with a damaged index, an unknown layout, or a run folder planned again under the same run id."""

from __future__ import annotations

import json

import pytest

from shared.batch_store import (
    BATCHES_PER_SEGMENT,
    INDEX_NAME,
    SEGMENT_MAX_BYTES,
    BatchUnreadable,
    SegmentWriter,
    encode_batch,
    locate,
    read_batch,
)
from shared.names import RUNS_CONTAINER as RUNS
from shared.runs import RunPaths, dumps
from shared.storage import LocalObjectStore

PATHS = RunPaths("vip", "r-0123456789ab")


def batch(n: int, pad: int = 0) -> bytes:
    return dumps({"rows": [["a.csv", n, f"p{n}@example.com", n]], "items": [{"n": n, "pad": "x" * pad}]})


def planned(store, batches: list[bytes]) -> dict:
    """What planning leaves: segments, the index, and a manifest naming the layout."""
    writer = SegmentWriter(store, PATHS)
    for n, data in enumerate(batches, start=1):
        writer.add(n, data)
    layout = writer.close()
    store.write(RUNS, PATHS.manifest, dumps({"batches": len(batches), "batchFiles": layout}))
    return layout


def segment_files(store, layout) -> list[str]:
    return [o.name.rsplit("/", 1)[1] for o in store.list(RUNS, f"{PATHS.root}/{layout['folder']}")]


def test_segments_are_cut_every_batches_per_segment_batches(tmp_path):
    store = LocalObjectStore(tmp_path)

    layout = planned(store, [batch(n) for n in range(1, 2 * BATCHES_PER_SEGMENT + 2)])

    assert segment_files(store, layout) == ["00001.seg", "00002.seg", "00003.seg", INDEX_NAME]
    assert locate(store, PATHS, BATCHES_PER_SEGMENT).name.endswith("00001.seg")
    assert locate(store, PATHS, BATCHES_PER_SEGMENT + 1).name.endswith("00002.seg")
    assert locate(store, PATHS, BATCHES_PER_SEGMENT + 1).offset == 0


def test_a_segment_is_also_cut_before_it_would_pass_its_byte_cap(tmp_path):
    store = LocalObjectStore(tmp_path)
    big = SEGMENT_MAX_BYTES // 3

    layout = planned(store, [batch(n, pad=big) for n in range(1, 5)])

    assert segment_files(store, layout) == ["00001.seg", "00002.seg", INDEX_NAME]
    assert [read_batch(store, PATHS, n)["rows"][0][1] for n in range(1, 5)] == [1, 2, 3, 4]


def test_batches_must_come_in_order(tmp_path):
    writer = SegmentWriter(LocalObjectStore(tmp_path), PATHS)
    writer.add(1, batch(1))

    with pytest.raises(ValueError, match="batch 3 handed to the segment writer after batch 1"):
        writer.add(3, batch(3))


def test_a_damaged_index_makes_the_batch_unreadable_naming_the_index(tmp_path):
    store = LocalObjectStore(tmp_path)
    layout = planned(store, [batch(1), batch(2)])
    store.write(RUNS, f"{PATHS.root}/{layout['folder']}{INDEX_NAME}", b"BIX1\x02\x00\x00\x00short")

    with pytest.raises(BatchUnreadable, match=r"index\.bin is not a segments-v1 index"):
        read_batch(store, PATHS, 1)


def test_a_layout_this_version_does_not_know_says_to_deploy_the_newer_version(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.write(RUNS, PATHS.manifest, dumps({"batches": 1, "batchFiles": {"format": "segments-v9", "folder": "x/"}}))

    with pytest.raises(BatchUnreadable, match=r"segments-v9.*deploy the newer version"):
        read_batch(store, PATHS, 1)


def test_a_run_folder_planned_again_under_the_same_run_id_is_read_afresh(tmp_path):
    store = LocalObjectStore(tmp_path)
    planned(store, [batch(1), batch(2)])
    assert read_batch(store, PATHS, 2)["rows"][0][1] == 2  # the process now knows this run's layout
    for obj in list(store.list(RUNS, PATHS.root + "/")):
        store.delete(RUNS, obj.name)

    planned(store, [batch(7), batch(8)])

    assert read_batch(store, PATHS, 2)["rows"][0][1] == 8


def test_a_run_planned_with_one_file_per_batch_is_read_from_its_batch_files(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.write(RUNS, PATHS.manifest, dumps({"batches": 2}))
    store.write(RUNS, PATHS.batch(2), batch(2))

    assert read_batch(store, PATHS, 2) == json.loads(batch(2))


def test_rows_stored_with_partition_numbers_read_back_with_their_paths(tmp_path):
    store = LocalObjectStore(tmp_path)
    files = {"2": "Feed/Vip/part-2.csv", "3": "Feed/Vip/part-3.csv"}
    rows = [(2, 41, "a@example.com", 7), (3, 1, "b@example.com", 2**64 - 1)]
    planned(store, [encode_batch(files, rows, [b'{"n":1}', b'{"n":2}'])])

    assert read_batch(store, PATHS, 1) == {
        "rows": [
            ["Feed/Vip/part-2.csv", 41, "a@example.com", 7],
            ["Feed/Vip/part-3.csv", 1, "b@example.com", 2**64 - 1],
        ],
        "items": [{"n": 1}, {"n": 2}],
    }


def test_a_batch_written_before_partition_numbers_reads_as_it_was(tmp_path):
    store = LocalObjectStore(tmp_path)
    planned(store, [batch(1)])

    assert read_batch(store, PATHS, 1)["rows"] == [["a.csv", 1, "p1@example.com", 1]]
