"""Plain CSV sources: one file with a header row, or every *.csv under a prefix."""

from __future__ import annotations

import pytest
from segfix import as_tuples, rows_of, store_for

from shared.errors import SnapshotError
from shared.exports import Source
from shared.segments import discover_snapshot
from shared.storage import LocalObjectStore


def test_csv_file_columns_come_from_its_header():
    snap = discover_snapshot(store_for("csv_with_header"), Source("segments", file="exports/vip.csv"))
    assert snap.columns == ("Email", "First Name", "Country")  # BOM stripped from the first name
    assert snap.csv_format.column_headers is True


def test_csv_file_rows_start_after_the_header():
    rows = rows_of(store_for("csv_with_header"), Source("segments", file="exports/vip.csv"))
    assert as_tuples(rows) == [
        ("exports/vip.csv", 2, ["anne@example.com", "Anne", "IE"]),
        ("exports/vip.csv", 3, ["bob@example.com", "Bob, Jr", "US"]),
    ]


def test_csv_prefix_reads_every_csv_in_natural_order():
    rows = rows_of(store_for("csv_prefix"), Source("segments", prefix="exports/vip/"))
    assert as_tuples(rows) == [
        ("exports/vip/part-1.csv", 2, ["anne@example.com", "Anne"]),
        ("exports/vip/part-2.csv", 2, ["bob@example.com", "Bob"]),
        ("exports/vip/part-10.csv", 2, ["cleo@example.com", "Cleo"]),
    ]


def test_csv_prefix_header_mismatch_names_the_file_that_differs():
    with pytest.raises(SnapshotError, match=r"part-2\.csv has a different header .*column 2 is 'FirstName'"):
        discover_snapshot(store_for("csv_prefix_header_mismatch"), Source("segments", prefix="exports/vip/"))


def test_csv_snapshot_id_is_stable_and_changes_with_the_data(copy_fixture):
    store = LocalObjectStore(copy_fixture("csv_with_header"))
    source = Source("segments", file="exports/vip.csv")
    first = discover_snapshot(store, source).snapshot_id
    assert discover_snapshot(store, source).snapshot_id == first
    store.write("segments", "exports/vip.csv", b"Email\nnew@example.com\n")
    assert discover_snapshot(store, source).snapshot_id != first


def test_missing_csv_file_fails():
    with pytest.raises(SnapshotError, match=r"CSV file .*nope\.csv does not exist"):
        discover_snapshot(store_for("csv_with_header"), Source("segments", file="exports/nope.csv"))


def test_prefix_without_csv_fails():
    with pytest.raises(SnapshotError, match=r"no \*\.csv objects under .*exports/none"):
        discover_snapshot(store_for("csv_prefix"), Source("segments", prefix="exports/none"))
