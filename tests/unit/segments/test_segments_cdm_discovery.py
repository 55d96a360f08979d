"""Which files make up a CDM snapshot: model.json columns, newest run folder, listed partitions."""

from __future__ import annotations

import pytest
from segfix import (
    COLUMNS,
    CONTAINER,
    EXPORT_PATH,
    RUN_FOLDER,
    TABLE,
    as_tuples,
    cdm_rows,
    rows_of,
    store_for,
    table_source,
)

from shared.errors import SnapshotError
from shared.segments import CsvFormat, discover_snapshot
from shared.segments.cdm import location_to_name
from shared.storage import LocalObjectStore


def test_basic_folder_gives_columns_from_model_json_and_the_run_folder_as_id():
    snap = discover_snapshot(store_for("cdm_basic"), table_source())
    assert snap.columns == COLUMNS
    assert snap.snapshot_id == "VipCustomers/2026/08/25/0205"
    assert [p.name for p in snap.partitions] == [f"{RUN_FOLDER}/2026/08/25/0205/VipCustomers_1.csv"]
    assert snap.csv_format == CsvFormat()  # CDM defaults: no header, comma, quoted, UTF-8
    assert snap.total_bytes == sum(p.size for p in snap.partitions) > 0
    assert "2026/08/25/0205" in snap.description and "model.json" in snap.description


def test_basic_folder_rows_carry_file_and_line():
    file = f"{RUN_FOLDER}/2026/08/25/0205/VipCustomers_1.csv"
    assert as_tuples(rows_of(store_for("cdm_basic"), table_source())) == [
        (file, 1, cdm_rows(1)),
        (file, 2, cdm_rows(2)),
        (file, 3, cdm_rows(3)),
    ]


def test_newest_run_folder_wins_and_runs_are_never_mixed():
    rows = rows_of(store_for("cdm_two_runs"), table_source())
    assert [r.fields[0] for r in rows] == ["C4", "C5"]
    assert {r.file for r in rows} == {f"{RUN_FOLDER}/2026/08/25/0205/VipCustomers_1.csv"}


def test_a_newer_folder_without_table_partitions_is_not_a_run():
    snap = discover_snapshot(store_for("cdm_two_runs"), table_source())
    assert snap.snapshot_id == "VipCustomers/2026/08/25/0205"  # not 2026/08/26/0100 (holds only _temporary)


def test_partitions_listed_in_model_json_win_over_a_newer_folder():
    rows = rows_of(store_for("cdm_partitions_listed"), table_source())
    run = f"{RUN_FOLDER}/2026/08/24/0210"
    # _1 is listed as an absolute https URL, _2 as a path relative to model.json; _3 and the newer run are unlisted
    assert as_tuples(rows) == [
        (f"{run}/VipCustomers_1.csv", 1, cdm_rows(1)),
        (f"{run}/VipCustomers_2.csv", 1, cdm_rows(2)),
    ]


def test_listed_partitions_in_one_run_folder_take_that_folder_as_id():
    snap = discover_snapshot(store_for("cdm_partitions_listed"), table_source())
    assert snap.snapshot_id == "VipCustomers/2026/08/24/0210"


def test_partitions_are_read_in_numeric_order():
    snap = discover_snapshot(store_for("cdm_multi_partition"), table_source())
    assert [p.name.rsplit("/", 1)[1] for p in snap.partitions] == [
        "VipCustomers_1.csv",
        "VipCustomers_2.csv",
        "VipCustomers_10.csv",
    ]
    rows = rows_of(store_for("cdm_multi_partition"), table_source())
    assert [(r.fields[0], r.line) for r in rows] == [("C1", 1), ("C2", 1), ("C10", 1)]


def test_file_format_settings_are_honoured():
    store = store_for("custom_delimiter")
    snap = discover_snapshot(store, table_source())
    assert snap.csv_format == CsvFormat(delimiter=";", quotechar='"', column_headers=True)
    file = f"{RUN_FOLDER}/2026/08/25/0205/VipCustomers_1.csv"
    assert as_tuples(rows_of(store, table_source())) == [
        (file, 2, ["C1", "Anne", "Lee", "anne@example.com", "Paris; FR", "2026-08-25T02:05:40Z"]),
    ]


def test_snapshot_id_is_stable_for_the_same_data():
    store = store_for("cdm_two_runs")
    assert discover_snapshot(store, table_source()) == discover_snapshot(store, table_source())


def test_snapshot_id_differs_between_runs(copy_fixture):
    root = copy_fixture("cdm_two_runs")
    store = LocalObjectStore(root)
    before = discover_snapshot(store, table_source()).snapshot_id
    store.write(CONTAINER, f"{RUN_FOLDER}/2026/08/26/0205/{TABLE}_1.csv", b"C7,a,b,c7@example.com,d,e\n")
    after = discover_snapshot(store, table_source()).snapshot_id
    assert (before, after) == ("VipCustomers/2026/08/25/0205", "VipCustomers/2026/08/26/0205")


def test_export_path_may_carry_slashes():
    store = store_for("cdm_basic")
    snap = discover_snapshot(store, table_source().__class__(CONTAINER, f"/{EXPORT_PATH}/", table=TABLE))
    assert snap.snapshot_id == "VipCustomers/2026/08/25/0205"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (f"https://acct.blob.core.windows.net/{CONTAINER}/{EXPORT_PATH}/T/1.csv", f"{EXPORT_PATH}/T/1.csv"),
        (f"https://acct.dfs.core.windows.net/{CONTAINER}/{EXPORT_PATH}/T%20x/1.csv", f"{EXPORT_PATH}/T x/1.csv"),
        (f"http://127.0.0.1:10000/devstoreaccount1/{CONTAINER}/{EXPORT_PATH}/T/1.csv", f"{EXPORT_PATH}/T/1.csv"),
        (f"abfss://{CONTAINER}@acct.dfs.core.windows.net/{EXPORT_PATH}/T/1.csv", f"{EXPORT_PATH}/T/1.csv"),
        ("T/2026/08/25/0205/T_1.csv", f"{EXPORT_PATH}/T/2026/08/25/0205/T_1.csv"),
        ("https://acct.blob.core.windows.net/othercontainer/T/1.csv", None),
    ],
)
def test_partition_locations_resolve_to_blob_names_in_the_source_container(location, expected):
    assert location_to_name(location, CONTAINER, EXPORT_PATH) == expected


@pytest.mark.parametrize(
    "location",
    [
        "../../../../escape.csv",
        "T/../../other/T_1.csv",
        f"https://acct.blob.core.windows.net/{CONTAINER}/{EXPORT_PATH}/../../private/secret.csv",
        f"https://acct.blob.core.windows.net/{CONTAINER}/{EXPORT_PATH}/%2e%2e/%2E%2E/private/secret.csv",
        f"abfss://{CONTAINER}@acct.dfs.core.windows.net/{EXPORT_PATH}/../../x.csv",
    ],
)
def test_a_partition_location_with_a_dot_dot_segment_is_refused(location):
    with pytest.raises(SnapshotError, match=r"'\.\.' segment"):
        location_to_name(location, CONTAINER, EXPORT_PATH)
