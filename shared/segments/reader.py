"""Stream the rows of a snapshot: one partition at a time, memory independent of its size.

Speed matters (the plan stage must read ~1M rows in a couple of seconds), so the hot loop is a bare
``csv.reader`` over a ``TextIOWrapper``; everything that happens once per file (BOM, header row) is done
before that loop, and the progress callback runs once per block of rows instead of a check per row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from itertools import islice
from typing import BinaryIO

from shared.errors import SnapshotError
from shared.storage import NotFound, ObjectStore

from .model import BadRow, CsvFormat, Snapshot, SourceRow

# Read-ahead per partition stream: big enough that a remote blob is fetched in few calls, small enough
# that memory stays flat however large the partition is.
READ_BUFFER_BYTES = 1 << 20
# Rows between two progress callbacks: often enough for a smooth progress bar, rare enough to cost nothing.
PROGRESS_EVERY_ROWS = 4096
# A partition decoded chunk by chunk when locating a non-UTF-8 byte (the error path only).
SCAN_CHUNK_BYTES = 1 << 20


class _CountingReader(io.RawIOBase):
    """Counts the bytes pulled from the store's stream, for progress without needing ``tell()`` on it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def _reader_kwargs(fmt: CsvFormat) -> dict:
    if fmt.quotechar:
        return {"delimiter": fmt.delimiter, "quotechar": fmt.quotechar, "doublequote": True}
    return {"delimiter": fmt.delimiter, "quoting": csv.QUOTE_NONE}


def _mask(value: str) -> str:
    """A cell value fit for an error message: short, and an email-looking value masked (j***@example.com)."""
    value = value if len(value) <= 40 else value[:37] + "..."
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}***@{domain}"
    return value


def header_difference(found: list[str], expected: tuple[str, ...]) -> str:
    """Say how a header row differs from the expected column names (first difference only)."""
    if len(found) != len(expected):
        return f"it has {len(found)} columns, expected {len(expected)}"
    for i, (f, e) in enumerate(zip(found, expected, strict=True), start=1):
        if f != e:
            return f"column {i} is {_mask(f)!r}, expected {e!r}"
    return "no difference"


def _bad_count(ncols: int, fields: list[str], line: int, last_line: int) -> str:
    reason = f"expected {ncols} fields, found {len(fields)}"
    if last_line > line:  # a quote opened and never closed swallows the following lines into one field
        reason += f" (the record runs from line {line} to {last_line}: check for an unbalanced quote)"
    return reason


def locate_bad_utf8(store: ObjectStore, container: str, name: str) -> str:
    """Find the first byte that is not UTF-8: 'line L, byte offset O (0xNN)'. Streams; error path only."""
    offset = 0  # bytes of the file fully decoded so far
    line = 1
    carry = b""  # a multi-byte sequence cut by the chunk boundary
    with store.open(container, name) as f:
        while True:
            chunk = f.read(SCAN_CHUNK_BYTES)
            data = carry + chunk
            if not data:
                return "an undetermined position"
            try:
                data.decode("utf-8")
                good = len(data)
                carry = b""
            except UnicodeDecodeError as e:
                cut_at_end = chunk and e.end == len(data) and e.reason == "unexpected end of data"
                if not cut_at_end:
                    bad = e.start
                    line += data.count(b"\n", 0, bad)
                    return f"line {line}, byte offset {offset + bad} (0x{data[bad]:02X})"
                good = e.start
                carry = data[good:]
            line += data.count(b"\n", 0, good)
            offset += good
            if not chunk:
                return "an undetermined position"


def _not_utf8(store: ObjectStore, container: str, name: str) -> SnapshotError:
    where = locate_bad_utf8(store, container, name)
    return SnapshotError(
        f"{store.describe(container, name)} is not valid UTF-8 at {where}; only UTF-8 exports are supported: "
        "re-run the export, or convert the file to UTF-8"
    )


def _open_csv(store: ObjectStore, container: str, name: str, fmt: CsvFormat):
    try:
        stream = store.open(container, name)
    except NotFound:
        raise SnapshotError(
            f"partition {store.describe(container, name)} does not exist (any more); "
            "the export may have been replaced while reading: run again"
        ) from None
    counter = _CountingReader(stream)
    # utf-8-sig strips a BOM; newline="" hands line endings to the csv module (CRLF, LF, quoted breaks).
    text = io.TextIOWrapper(io.BufferedReader(counter, READ_BUFFER_BYTES), encoding="utf-8-sig", newline="")
    return stream, counter, text, csv.reader(text, **_reader_kwargs(fmt))


def first_record(store: ObjectStore, container: str, name: str, fmt: CsvFormat) -> tuple[int, list[str]] | None:
    """The first non-empty record of an object and its line, or None when it has none (header discovery)."""
    stream, _counter, text, reader = _open_csv(store, container, name, fmt)
    with stream, text:
        prev = 0
        try:
            for fields in reader:
                if fields:
                    return prev + 1, fields
                prev = reader.line_num
        except UnicodeDecodeError:
            raise _not_utf8(store, container, name) from None
        except csv.Error as e:
            raise SnapshotError(f"{store.describe(container, name)} line {reader.line_num}: bad CSV ({e})") from None
    return None


def read_rows(
    store: ObjectStore, snapshot: Snapshot, progress: Callable[[int], None] | None = None
) -> Iterator[SourceRow | BadRow]:
    """Every record of every partition, in order, as SourceRow (right field count) or BadRow (wrong one).

    Raises SnapshotError for what makes the whole snapshot unreadable: bytes that are not UTF-8, a header row
    that differs from the columns when the format says there is one, broken CSV quoting.
    ``progress(bytes_read_so_far)`` is called every PROGRESS_EVERY_ROWS rows and after each partition.
    """
    # One generator for all partitions (no nested generator per partition): every row passes one frame.
    columns = list(snapshot.columns)
    ncols = len(columns)
    fmt = snapshot.csv_format
    done = 0
    for part in snapshot.partitions:
        file = part.name
        stream, counter, text, reader = _open_csv(store, part.container, file, fmt)
        with stream, text:
            try:
                # The first non-empty record: a header row to check or skip. CI's header behaviour is
                # undocumented, so a first row equal to the column names is skipped even without columnHeaders.
                prev = 0
                for fields in reader:
                    line = prev + 1
                    prev = reader.line_num
                    if not fields:
                        continue
                    if fields == columns:
                        break
                    if fmt.column_headers:
                        raise SnapshotError(
                            f"{store.describe(part.container, file)} line {line}: the header row differs from the "
                            f"snapshot's columns (model.json attributes, or the first CSV's header): "
                            f"{header_difference(fields, snapshot.columns)}; the export changed while reading or "
                            "its files disagree: re-run the export"
                        )
                    if len(fields) == ncols:
                        yield SourceRow(file, line, fields)
                    else:
                        yield BadRow(file, line, _bad_count(ncols, fields, line, prev))
                    break
                # The hot loop, one block of rows between progress callbacks.
                while True:
                    block_start = prev
                    for fields in islice(reader, PROGRESS_EVERY_ROWS):
                        line = prev + 1
                        prev = reader.line_num
                        if len(fields) == ncols:
                            yield SourceRow(file, line, fields)
                        elif fields:  # a completely empty line counts nothing
                            yield BadRow(file, line, _bad_count(ncols, fields, line, prev))
                    if prev == block_start:  # the block read nothing: end of the partition
                        break
                    if progress is not None:
                        progress(done + counter.count)
            except UnicodeDecodeError:
                raise _not_utf8(store, part.container, file) from None
            except csv.Error as e:
                raise SnapshotError(
                    f"{store.describe(part.container, file)} near line {reader.line_num}: bad CSV ({e}); "
                    "an unbalanced quote usually causes this"
                ) from None
        done += counter.count
        if progress is not None:
            progress(done)
