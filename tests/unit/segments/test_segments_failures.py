"""What fails the whole run, with a message naming what is wrong, where, and what to do."""

from __future__ import annotations

import pytest
from segfix import RUN_FOLDER, store_for, table_source

from shared.errors import SnapshotError
from shared.exports import Source
from shared.segments import discover_snapshot, read_rows
from shared.segments.cdm import MAX_MODEL_JSON_BYTES
from shared.storage import LocalObjectStore


def read_all(case: str) -> list:
    store = store_for(case)
    return list(read_rows(store, discover_snapshot(store, table_source())))


def test_missing_model_json():
    with pytest.raises(SnapshotError, match=r"no model\.json at .*OmnisendFeed/model\.json: the source path must be"):
        discover_snapshot(store_for("missing_model_json"), table_source())


def test_model_json_syntax_error_gives_line_and_column():
    with pytest.raises(SnapshotError, match=r"model\.json is not valid JSON: .* at line 5 column 29"):
        discover_snapshot(store_for("model_json_syntax_error"), table_source())


def test_unknown_table_lists_the_tables_there():
    with pytest.raises(
        SnapshotError,
        match=r"table 'VipCustomers' is not in .*model\.json \(did you mean 'VIPCustomers'.*"
        r"tables there: LapsedBuyers, VIPCustomers",
    ):
        discover_snapshot(store_for("unknown_table"), table_source())


def test_table_without_attributes():
    with pytest.raises(SnapshotError, match=r"table 'VipCustomers' in .*model\.json has no attribute names"):
        discover_snapshot(store_for("cdm_no_attributes"), table_source())


def test_no_partitions_and_no_run_folder():
    with pytest.raises(SnapshotError, match=r"table 'VipCustomers' has no partitions: .*VipCustomers_<n>\.csv"):
        discover_snapshot(store_for("no_partitions"), table_source())


def test_listed_partition_that_does_not_exist_is_named():
    missing = rf"{RUN_FOLDER}/2026/08/24/0210/VipCustomers_2\.csv"
    with pytest.raises(SnapshotError, match=rf"lists partition .*{missing} for table 'VipCustomers', but it does not"):
        discover_snapshot(store_for("cdm_partition_missing"), table_source())


def test_declared_encoding_other_than_utf8_is_refused():
    with pytest.raises(SnapshotError, match=r"encoding 'UTF-16' is not supported; only UTF-8"):
        discover_snapshot(store_for("cdm_unsupported_encoding"), table_source())


def test_bytes_that_are_not_utf8_name_file_line_and_offset():
    # Lines 1-2 are 58 bytes each, so line 3 starts at byte 116; "C3,Ren" is 6 more: the Latin-1 é is at 122.
    with pytest.raises(
        SnapshotError, match=r"VipCustomers_1\.csv is not valid UTF-8 at line 3, byte offset 122 \(0xE9\)"
    ):
        read_all("not_utf8")


def test_header_row_that_differs_from_model_json_when_column_headers_is_true():
    with pytest.raises(
        SnapshotError, match=r"_1\.csv line 1: the header row differs .*column 4 is 'Email', expected 'EMail"
    ):
        read_all("cdm_header_mismatch")


def test_source_must_name_exactly_one_of_table_file_prefix():
    with pytest.raises(SnapshotError, match=r"exactly one of table, file or prefix \(it names table, file\)"):
        discover_snapshot(store_for("cdm_basic"), Source("ciexports", path="x", table="T", file="a.csv"))


def test_a_partition_url_climbing_out_of_the_export_folder_is_refused():
    with pytest.raises(SnapshotError, match=r"partition 1 .*'\.\.' segment"):
        discover_snapshot(store_for("cdm_partition_dotdot"), table_source())


def model_json_store(copy_fixture, content: bytes):
    root = copy_fixture("cdm_basic")
    (root / "ciexports" / RUN_FOLDER.rsplit("/", 1)[0] / "model.json").write_bytes(content)
    return LocalObjectStore(root)


def test_a_deeply_nested_model_json_is_a_snapshot_error_not_a_crash(copy_fixture):
    store = model_json_store(copy_fixture, b'{"entities": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.raises(SnapshotError, match="nested too deeply"):
        discover_snapshot(store, table_source())


def test_a_model_json_above_the_size_cap_is_a_snapshot_error(copy_fixture):
    padding = b" " * (MAX_MODEL_JSON_BYTES + 1)
    store = model_json_store(copy_fixture, b'{"entities": []' + padding + b"}")
    with pytest.raises(SnapshotError, match="larger than 16 MiB"):
        discover_snapshot(store, table_source())
