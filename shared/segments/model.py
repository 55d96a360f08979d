"""The values the segment readers hand to the rest of the product (contract: see docs/segments.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CsvFormat:
    """How a partition's CSV is written. ``quotechar == ""`` means QuoteStyle.None (quotes are plain text)."""

    delimiter: str = ","
    quotechar: str = '"'
    column_headers: bool = False
    encoding: str = "utf-8"


@dataclass(frozen=True)
class Partition:
    """One CSV object of a snapshot; ``name`` is relative to ``container``."""

    container: str
    name: str
    size: int
    etag: str


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str  # same data -> same id; a CDM run folder gives "<table>/<YYYY>/<MM>/<DD>/<HHMM>"
    columns: tuple[str, ...]  # in order: model.json attributes, or the CSV header
    partitions: tuple[Partition, ...]
    csv_format: CsvFormat
    description: str  # where it was found, for messages and reports
    total_bytes: int

    @property
    def partition_names(self) -> list[str]:
        """Each partition's name, in reading order (planning refers to a partition by its number here)."""
        return [p.name for p in self.partitions]


def _fast_frozen_init(cls: Any) -> Any:
    """Give SourceRow an ``__init__`` that fills its slots directly.

    read_rows builds one SourceRow per input row, and the generated frozen ``__init__`` (three
    ``object.__setattr__`` calls) was about a fifth of the whole read. Writing through the slot descriptors does
    the same, faster; the class stays frozen (assigning after construction still raises FrozenInstanceError).
    """
    set_file, set_line, set_fields = (cls.__dict__[n].__set__ for n in ("file", "line", "fields"))
    if cls.__match_args__ != ("file", "line", "fields"):
        raise TypeError(f"{cls.__name__}: fields changed, update _fast_frozen_init")

    def __init__(self, file: str, line: int, fields: list[str]) -> None:
        set_file(self, file)
        set_line(self, line)
        set_fields(self, fields)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__
    return cls


@_fast_frozen_init
@dataclass(frozen=True, slots=True)
class SourceRow:
    file: str
    line: int  # 1-based physical line where the record starts (a quoted field may span lines)
    fields: list[str]


@dataclass(frozen=True, slots=True)
class BadRow:
    file: str
    line: int
    reason: str  # short, no cell values: it goes to rejected.csv and logs
