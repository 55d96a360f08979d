"""Segment snapshots: find the newest one (CDM folder or plain CSV) and stream its rows."""

from .discovery import discover_snapshot
from .model import BadRow, CsvFormat, Partition, Snapshot, SourceRow
from .reader import read_rows

__all__ = ["BadRow", "CsvFormat", "Partition", "Snapshot", "SourceRow", "discover_snapshot", "read_rows"]
