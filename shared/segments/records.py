"""A partition as raw physical lines, for planning's fast path (shared/pipeline/rowloop.py).

Planning recognises an unchanged row by a hash of its raw bytes before parsing it, so it needs the bytes of each
record, which ``csv.reader`` never shows. ``Lines`` reads a partition block by block, splits each block into physical
lines (``bytes.splitlines``: ``\\n``, ``\\r\\n`` and ``\\r``, exactly the line ends ``csv`` sees through a
``newline=""`` text stream), hashes every line in one pass, and is at the same time the iterator a ``csv.reader``
pulls lines from. The row loop walks the lines itself; on a line it cannot decide from the hash it hands the
position to the reader, which consumes that record: one line, or more when a quoted field holds a line break, even
across a block boundary (the reader pulls the next block through ``__next__``). Record boundaries therefore always
come from ``csv`` itself, never from counting quotes.

``read_rows`` (reader.py) stays the reference reader: the planner's equivalence test compares the two.
"""

from __future__ import annotations

from itertools import repeat
from typing import BinaryIO

from shared.errors import SnapshotError
from shared.hashing import raw_hash
from shared.storage import NotFound, ObjectStore

from .model import Partition
from .reader import _not_utf8

# Bytes read per block: big enough that a remote blob comes in few calls and the per-block work (split, hash)
# runs in C over thousands of lines, small enough that memory stays flat whatever the partition's size.
BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


class Lines:
    """The physical lines of one partition, one block at a time; also the line iterator of a ``csv.reader``.

    ``lines[pos]`` is the next unread line and ``hashes[pos]`` its raw hash; ``base`` counts the lines of the
    partition's earlier blocks, so the 1-based line number of ``lines[i]`` is ``base + i + 1``.
    """

    __slots__ = ("_carry", "_eof", "_salt", "_stream", "base", "bytes_read", "hashes", "lines", "part", "pos", "store")

    def __init__(self, store: ObjectStore, part: Partition, salt: int | None) -> None:
        self.store, self.part = store, part
        try:
            self._stream: BinaryIO = store.open(part.container, part.name)
        except NotFound:
            raise SnapshotError(
                f"partition {store.describe(part.container, part.name)} does not exist (any more); "
                "the export may have been replaced while reading: run again"
            ) from None
        self._salt = salt
        self._carry = b""
        self._eof = False
        self.lines: list[bytes] = []
        self.hashes: list[int] = []
        self.pos = 0
        self.base = 0
        self.bytes_read = 0

    def close(self) -> None:
        self._stream.close()

    def refill(self) -> bool:
        """Move to the next block (the current one must be used up); False at the end of the partition."""
        self.base += len(self.lines)
        self.lines, self.hashes, self.pos = [], [], 0
        while not self.lines:
            if self._eof:
                return False
            chunk = self._stream.read(BLOCK_BYTES)
            if not self.bytes_read and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]  # what utf-8-sig does for the reference reader
            self.bytes_read += len(chunk)
            data = self._carry + chunk
            if not chunk:
                self._eof = True
                cut = len(data)
            else:
                # Cut after the last "\n": a "\r\n" is never split, and a lone trailing "\r" waits for the next
                # block, in case a "\n" follows it there.
                cut = data.rfind(b"\n") + 1
            self._carry = data[cut:]
            if cut:
                self.lines = data[:cut].splitlines(keepends=True)
        # map() over the C functions: no Python frame per line.
        salt = self._salt
        self.hashes = list(map(raw_hash, self.lines, repeat(salt))) if salt is not None else [0] * len(self.lines)
        return True

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        pos = self.pos
        if pos >= len(self.lines):
            if not self.refill():
                raise StopIteration
            pos = 0
        self.pos = pos + 1
        try:
            return self.lines[pos].decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(self.store, self.part.container, self.part.name) from None
