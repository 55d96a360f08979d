"""Where a run's planned batches are stored: a few large segment files and a byte-range index.

One file per batch made a 1M-row plan write ~10,000 files (on Blob Storage ~10,000 uploads inside the plan
invocation's 10-minute limit, and as many deletions after finalise). Planning now writes the batches, in order,
into segment files of up to ``BATCHES_PER_SEGMENT`` batches, and then one index:

    batches/<layout>/<k>.seg      batches concatenated, each exactly the JSON document send reads
    batches/<layout>/index.bin    batch n -> (segment k, byte offset, byte length)

``<layout>`` is a fresh random name per planning attempt, and every file of it is created once (if-none-match),
never replaced. The manifest (planning's commit point, created once) names the layout it was planned with
(``manifest["batchFiles"]``), and no send message exists before the manifest. So:

- a crash at any line of planning (between two segments, between the last segment and the index, before the
  manifest) leaves files that no manifest names; the next attempt writes a new layout, and the orphans go with the
  rest of ``batches/`` when the run's payloads are deleted (shared/retention.py);
- two planners of the same run (a redelivered plan message) write two layouts; the manifest created first picks
  one, and a message can only ever point into that one, whose bytes never change afterwards.

A run planned before segments existed has no ``batchFiles`` in its manifest: its batches are read from
``batches/<n>.json`` as before, so a run in flight during an upgrade still sends, verifies and finishes.

Readers fetch a batch with one ranged read. The index and the layout name are immutable once the manifest names
them, so each process caches them (a few runs' worth, ~16 bytes per batch); a cached layout whose files are gone
(the run folder was deleted and planned again under the same run id) is noticed by NotFound and re-read.
"""

from __future__ import annotations

import json
import struct
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared.names import RUNS_CONTAINER
from shared.runs import RunPaths, read_json

try:  # orjson is in requirements.txt; the stdlib fallback keeps a bare checkout importable
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover
    from shared.runs import dumps as _dumps
from shared.storage import NotFound, ObjectStore

RUNS = RUNS_CONTAINER
# Batches per segment file. The 1M-row bench plan (15 columns) makes 9,691 batches, 627 MB: 97 segments of ~6.5 MB
# (the target is ≤ 200 files). One such segment is a single Put Blob of seconds at worst, far inside the plan
# invocation's 10 minutes, while reading one batch out of it stays a single ranged GET of ~65 KB.
BATCHES_PER_SEGMENT = 100
# A segment is also cut at this size, so an API version with bigger batches (v3: up to 1,000 items) still makes
# segments that upload in one short request and sit in memory only briefly.
SEGMENT_MAX_BYTES = 8 * 1024 * 1024
# Segments waiting for a writer thread (remote stores), each ≤ SEGMENT_MAX_BYTES: bounds planning's memory.
SEGMENTS_IN_FLIGHT = 4
# Runs whose layout and index a process keeps (an index is 16 bytes per batch: 160 KB for a 1M-row plan).
CACHED_RUNS = 8

LAYOUT_FORMAT = "segments-v1"
INDEX_NAME = "index.bin"
_INDEX_MAGIC = b"BIX1"
_INDEX_HEAD = struct.Struct("<4sI")  # magic, number of batches
_INDEX_ENTRY = struct.Struct("<IQI")  # segment, offset, length (batch n is entry n-1)


class BatchUnreadable(ValueError):
    """A batch's bytes are missing or do not parse: the batch cannot be sent (the run records it as failed)."""


@dataclass(frozen=True)
class BatchLocation:
    name: str  # the object holding the batch
    offset: int
    length: int | None  # None: the whole object (a per-batch file of an older run)


def segment_name(folder: str, k: int) -> str:
    return f"{folder}{k:05d}.seg"


def encode_index(entries: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(_INDEX_HEAD.pack(_INDEX_MAGIC, len(entries)))
    for entry in entries:
        out += _INDEX_ENTRY.pack(*entry)
    return bytes(out)


class BatchIndex:
    """A decoded index.bin, kept as its bytes (16 per batch) and unpacked one entry at a time."""

    def __init__(self, data: bytes, where: str) -> None:
        if len(data) < _INDEX_HEAD.size:
            raise BatchUnreadable(f"batch index {where} is truncated ({len(data)} bytes)")
        magic, count = _INDEX_HEAD.unpack_from(data)
        if magic != _INDEX_MAGIC or len(data) != _INDEX_HEAD.size + count * _INDEX_ENTRY.size:
            raise BatchUnreadable(f"batch index {where} is not a {LAYOUT_FORMAT} index ({len(data)} bytes)")
        self._data, self.count = data, count

    def __len__(self) -> int:
        return self.count

    def entry(self, n: int) -> tuple[int, int, int]:
        """(segment, offset, length) of batch n (1-based)."""
        return _INDEX_ENTRY.unpack_from(self._data, _INDEX_HEAD.size + (n - 1) * _INDEX_ENTRY.size)


# ------------------------------------------------------------------------------------------------------ writing


class SegmentWriter:
    """Takes a planning attempt's batches in order (1, 2, ...) and writes them as segments plus an index under a
    fresh layout folder. ``close`` returns the layout for the manifest; nothing points at it before that."""

    def __init__(self, store: ObjectStore, paths: RunPaths) -> None:
        self.store, self.paths = store, paths
        self.layout = f"batches/{uuid.uuid4().hex[:16]}/"
        self.folder = f"{paths.root}/{self.layout}"
        self.entries: list[tuple[int, int, int]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._segments = 0
        # An upload waits on the network, so remote stores get writer threads; a local file write is mostly CPU.
        self._threads = getattr(store, "parallel_writes", 0)
        self._pool = ThreadPoolExecutor(max(1, self._threads), thread_name_prefix="segment-write")
        self._slots = threading.BoundedSemaphore(SEGMENTS_IN_FLIGHT)
        self._writes: list[Future] = []

    def add(self, n: int, data: bytes) -> None:
        if n != len(self.entries) + 1:
            raise ValueError(f"batch {n} handed to the segment writer after batch {len(self.entries)}")
        if self._parts and (len(self._parts) >= BATCHES_PER_SEGMENT or self._size + len(data) > SEGMENT_MAX_BYTES):
            self._cut()
        self.entries.append((self._segments + 1, self._size, len(data)))
        self._parts.append(data)
        self._size += len(data)

    def _cut(self) -> None:
        if not self._parts:
            return
        self._segments += 1
        name = segment_name(self.folder, self._segments)
        data = b"".join(self._parts)
        self._parts, self._size = [], 0
        if self._threads:
            self._slots.acquire()
            self._writes.append(self._pool.submit(self._write, name, data))
        else:
            self.store.create(RUNS, name, data)

    def _write(self, name: str, data: bytes) -> None:
        try:
            # Created once: a layout's bytes never change. A retried upload that had in fact landed finds its own
            # bytes there (False), which is as good.
            self.store.create(RUNS, name, data)
        finally:
            self._slots.release()

    def close(self) -> dict[str, Any]:
        """Write the last segment, wait for every segment, then write the index. Returns the layout to keep in the
        manifest; raises the first write error (then nothing names this layout)."""
        self._cut()
        self._pool.shutdown(wait=True)
        for fut in self._writes:
            fut.result()
        self._writes.clear()
        self.store.create(RUNS, self.folder + INDEX_NAME, encode_index(self.entries))
        return {
            "format": LAYOUT_FORMAT,
            "folder": self.layout,
            "batches": len(self.entries),
            "segments": self._segments,
        }

    def batches(self) -> list[bytes]:
        """Every batch this writer wrote, read back one segment at a time (the mapping guard's un-send)."""
        out: list[bytes] = []
        segment, data = 0, b""
        for k, offset, length in self.entries:
            if k != segment:
                segment, data = k, self.store.read(RUNS, segment_name(self.folder, k))
            out.append(data[offset : offset + length])
        return out

    def delete(self) -> None:
        for obj in list(self.store.list(RUNS, self.folder)):
            self.store.delete(RUNS, obj.name)


# ------------------------------------------------------------------------------------------------------ reading

_cache: OrderedDict[str, tuple[str, BatchIndex] | None] = OrderedDict()
_cache_lock = threading.Lock()


def _layout(store: ObjectStore, paths: RunPaths, *, fresh: bool) -> tuple[str, BatchIndex] | None:
    """(segment folder, index) of the run, or None for a run planned with one file per batch."""
    key = store.describe(RUNS, paths.root)
    if not fresh:
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
    manifest = read_json(store, RUNS, paths.manifest)
    if manifest is None:
        raise NotFound(store.describe(RUNS, paths.manifest))  # not planned yet: no batch exists
    if "batchFiles" not in manifest:
        layout = None  # planned before segments: one file per batch
    elif manifest["batchFiles"] is None:
        raise NotFound(f"batches of run {paths.run_id} (the mapping guard stopped it: it has none)")
    else:
        spec = manifest["batchFiles"]
        if spec.get("format") != LAYOUT_FORMAT:
            raise BatchUnreadable(
                f"run {paths.run_id} stores its batches as {spec.get('format')!r}, which this "
                f"version cannot read (it reads {LAYOUT_FORMAT}): deploy the newer version"
            )
        folder = f"{paths.root}/{spec['folder']}"
        index_name = folder + INDEX_NAME
        layout = (folder, BatchIndex(store.read(RUNS, index_name), store.describe(RUNS, index_name)))
    with _cache_lock:
        _cache[key] = layout
        _cache.move_to_end(key)
        while len(_cache) > CACHED_RUNS:
            _cache.popitem(last=False)
    return layout


def locate(store: ObjectStore, paths: RunPaths, n: int, *, fresh: bool = False) -> BatchLocation:
    """Where batch n's bytes are. Raises NotFound when the run has no such batch."""
    layout = _layout(store, paths, fresh=fresh)
    if layout is None:
        return BatchLocation(paths.batch(n), 0, None)
    folder, index = layout
    if not 1 <= n <= len(index):
        raise NotFound(f"batch {n} of run {paths.run_id} (the run has {len(index)})")
    k, offset, length = index.entry(n)
    return BatchLocation(segment_name(folder, k), offset, length)


def _read_at(store: ObjectStore, where: BatchLocation) -> bytes:
    if where.length is None:
        return store.read(RUNS, where.name)
    data = store.read_range(RUNS, where.name, where.offset, where.length)
    if len(data) != where.length:
        raise BatchUnreadable(
            f"{store.describe(RUNS, where.name)} ends before batch bytes "
            f"{where.offset}-{where.offset + where.length} (read {len(data)} bytes)"
        )
    return data


def read_batch_bytes(store: ObjectStore, paths: RunPaths, n: int) -> bytes:
    """Batch n's JSON document, with one ranged read (plus, once per process and run, the manifest and index)."""
    try:
        return _read_at(store, locate(store, paths, n))
    except NotFound:
        # A cached layout can be stale only if the run folder was deleted and planned again: look once more.
        return _read_at(store, locate(store, paths, n, fresh=True))


def read_batch(store: ObjectStore, paths: RunPaths, n: int) -> dict[str, Any]:
    """Batch n: ``{"rows": [[file, line, email, fingerprint], ...], "items": [payload, ...]}``."""
    data = read_batch_bytes(store, paths, n)
    try:
        return decode_batch(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchUnreadable(f"batch {n} of run {paths.run_id} does not parse: {exc}") from None


def encode_batch(files: dict[str, str], rows: list[tuple[int, int, str, int]], items: list[bytes]) -> bytes:
    """A batch's stored document. Rows name their partition by number, and ``files`` maps the numbers used to
    partition paths: a path repeated on every row was a fifth of a 1M-row plan's bytes written."""
    return (
        b'{"files":' + _dumps(files) + b',"rows":' + _dumps(rows) + b',"items":[' + b",".join(items) + b"]}"
    )


def decode_batch(data: bytes) -> dict[str, Any]:
    """The batch with each row's partition number replaced by its path, so readers see [file, line, email,
    fingerprint]. A batch written before ``files`` existed holds the paths in its rows already."""
    batch = json.loads(data)
    files = batch.pop("files", None)
    if files is not None:
        batch["rows"] = [[files[str(f)], line, email, fp] for f, line, email, fp in batch["rows"]]
    return batch
