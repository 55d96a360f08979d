"""How partition bytes become rows: BOM, line endings, quoting, header rows, wrong field counts."""

from __future__ import annotations

from segfix import RUN_FOLDER, as_tuples, cdm_rows, rows_of, store_for, table_source

from shared.segments import BadRow, SourceRow, discover_snapshot, read_rows
from shared.storage import LocalObjectStore

RUN = f"{RUN_FOLDER}/2026/08/25/0205"


def test_bom_is_stripped_and_crlf_accepted():
    rows = rows_of(store_for("bom_crlf"), table_source())
    file = f"{RUN}/VipCustomers_1.csv"
    assert as_tuples(rows) == [(file, 1, cdm_rows(1)), (file, 2, cdm_rows(2))]


def test_quoted_commas_doubled_quotes_and_line_breaks_keep_physical_line_numbers():
    rows = rows_of(store_for("quoted_newlines_commas"), table_source())
    file = f"{RUN}/VipCustomers_1.csv"
    assert as_tuples(rows) == [
        (file, 1, ["C1", "Anne, Marie", 'O"Brien', "anne@example.com", "Dublin", "2026-08-25T02:05:40Z"]),
        (file, 2, ["C2", "Bob", "Smith\nJones", "bob@example.com", "Line1\r\nLine2", "2026-08-25T02:05:40Z"]),
        # record 2 spans lines 2-4 (one LF and one CRLF inside quotes)
        (file, 5, ["C3", "Cleo", "Lee", "cleo@example.com", "", "2026-08-25T02:05:40Z"]),
    ]


def test_a_first_row_equal_to_the_attribute_names_is_skipped_even_without_column_headers():
    rows = rows_of(store_for("header_row_repeated"), table_source())
    assert [(r.file.rsplit("/", 1)[1], r.line, r.fields[0]) for r in rows] == [
        ("VipCustomers_1.csv", 2, "C1"),
        ("VipCustomers_1.csv", 3, "C2"),
        ("VipCustomers_2.csv", 3, "C3"),  # line 1 is empty, line 2 the header
    ]


def test_wrong_field_count_rejects_the_row_and_reading_goes_on():
    rows = rows_of(store_for("wrong_field_count"), table_source())
    file = f"{RUN}/VipCustomers_1.csv"
    assert as_tuples(rows) == [
        (file, 1, cdm_rows(1)),
        (file, 2, "expected 6 fields, found 7"),
        # line 3 is empty: skipped, counted nowhere
        (file, 4, cdm_rows(3)),
        (file, 5, "expected 6 fields, found 5"),
        (file, 6, cdm_rows(5)),
    ]
    assert [type(r) for r in rows] == [SourceRow, BadRow, SourceRow, BadRow, SourceRow]


def test_bad_row_reasons_carry_no_cell_values():
    bad = [r for r in rows_of(store_for("wrong_field_count"), table_source()) if isinstance(r, BadRow)]
    assert all("@" not in r.reason and "C2" not in r.reason for r in bad)


def test_line_numbers_stay_right_across_read_buffers(tmp_path):
    # Big enough to span many reads, with a quoted line break in every 1000th record.
    store = LocalObjectStore(tmp_path)
    body = "".join(
        f'C{i},"multi\nline",L,c{i}@example.com,X,Y\n' if i % 1000 == 0 else f"C{i},F,L,c{i}@example.com,X,Y\n"
        for i in range(1, 30001)
    )
    (tmp_path / "ciexports").mkdir()
    store.write("ciexports", "big.csv", ("CustomerId,FirstName,LastName,EMail,City,LastPurchase\n" + body).encode())
    rows = rows_of(store, table_source().__class__("ciexports", file="big.csv"))
    last = rows[-1]
    # 1 header line + 30000 records + 30 extra physical lines from the quoted breaks before the last record
    assert (len(rows), last.fields[0], last.line) == (30000, "C30000", 1 + 29999 + 29 + 1)


def test_progress_reports_bytes_read_up_to_the_total():
    store = store_for("cdm_multi_partition")
    snap = discover_snapshot(store, table_source())
    seen: list[int] = []
    list(read_rows(store, snap, progress=seen.append))
    assert seen == sorted(seen) and seen[-1] == snap.total_bytes


def test_an_unbalanced_quote_is_one_bad_row_that_says_which_lines_it_swallowed():
    rows = rows_of(store_for("unbalanced_quote"), table_source())
    file = f"{RUN}/VipCustomers_1.csv"
    assert as_tuples(rows) == [
        (file, 1, cdm_rows(1)),
        (
            file,
            2,
            "expected 6 fields, found 2 (the record runs from line 2 to 4: check for an unbalanced quote)",
        ),
    ]
