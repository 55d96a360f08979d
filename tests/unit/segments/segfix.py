"""Helpers for the segment reader tests. Fixture folders under tests/fixtures/segments/<case>/ are
LocalObjectStore roots (<case>/<container>/...)."""

from __future__ import annotations

from pathlib import Path

from shared.exports import Source
from shared.segments import BadRow, SourceRow, discover_snapshot, read_rows
from shared.storage import LocalObjectStore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "segments"
CONTAINER = "ciexports"
EXPORT_PATH = "CustomerInsights_0a1b2c3d/OmnisendFeed"
TABLE = "VipCustomers"
COLUMNS = ("CustomerId", "FirstName", "LastName", "EMail", "City", "LastPurchase")
RUN_FOLDER = f"{EXPORT_PATH}/{TABLE}"


def store_for(case: str) -> LocalObjectStore:
    root = FIXTURES / case
    assert root.is_dir(), f"missing fixture folder {root}"
    return LocalObjectStore(root)


def table_source(table: str = TABLE) -> Source:
    return Source(container=CONTAINER, path=EXPORT_PATH, table=table)


def cdm_rows(i: int) -> list[str]:
    """The fields the fixture generator wrote for customer i."""
    return [f"C{i}", f"First{i}", f"Last{i}", f"c{i}@example.com", f"City{i}", f"2026-08-2{i % 10}T02:05:40Z"]


def rows_of(store, source: Source) -> list[SourceRow | BadRow]:
    return list(read_rows(store, discover_snapshot(store, source)))


def as_tuples(rows) -> list[tuple]:
    return [(r.file, r.line, r.fields if isinstance(r, SourceRow) else r.reason) for r in rows]
