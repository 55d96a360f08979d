"""The hot loop of planning: every row of the snapshot to "unchanged", "to send", "rejected" or "duplicate".

The fast path (issue 12): the state keeps, per member, a salted 64-bit hash of the raw CSV record that produced what
was last delivered. A row whose raw bytes hash to a stored value of a member not yet claimed in this run is that
member, unchanged: it is counted without being parsed, mapped, validated or encoded. Every other row (a miss) goes
down the full path: ``csv`` parses it, the export's compiled row function (shared/row_payloads.py; the reference
path uses ContactMapper) maps it into its payload, the payload is encoded, and the payload fingerprint
decides as before, so what is sent is exactly what the full path alone would send. A miss whose payload is
unchanged gets its stored raw hash refreshed. Duplicates stay "first wins" in file order (a hit on a member already
claimed goes down the full path and is reported there); leavers are the members nobody claimed.

The salt covers everything that can change a payload without changing a record's bytes: the export definition, the
API version, the snapshot's columns, the CSV format, and PLANNER_VERSION. Only single-line records get a raw hash
(a record with a quoted line break, or with a dropped field, always takes the full path, so ``droppedFields`` stays
exact), and the first record of each partition always takes the full path (it may be a header row to check).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
import sys
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from typing import Any, NamedTuple

from shared import hashing
from shared.contacts import MAX_STRING_LENGTH, ContactMapper
from shared.errors import RejectRow, SnapshotError
from shared.exports import ExportDefinition
from shared.omnisend import build_contact_payload
from shared.row_payloads import compile_row_payload
from shared.segments import BadRow, Snapshot, read_rows
from shared.segments.reader import _bad_count, _not_utf8, _reader_kwargs, header_difference
from shared.segments.records import Lines
from shared.state import DroppedCombos, MemberState
from shared.storage import ObjectStore

try:  # orjson is in requirements.txt; the stdlib fallback keeps a bare checkout importable
    from orjson import dumps as encode_payload
except ImportError:  # pragma: no cover
    from shared.runs import dumps as encode_payload

# Bump whenever row cleaning (shared/contacts.py) or payload building (shared/omnisend/payloads.py) changes what a
# given row becomes: every stored raw hash then misses once, and the payload fingerprints decide, as on the first run.
PLANNER_VERSION = 1
# Dry-run reports show this many sample payloads.
DRY_RUN_SAMPLES = 5


@dataclass
class PlanCounts:
    rows: int = 0
    valid: int = 0
    rejected: int = 0
    duplicates: int = 0
    unchanged: int = 0
    to_send: int = 0
    batches: int = 0
    leavers: int = 0
    previous_members: int = 0
    dropped_fields: Counter = field(default_factory=Counter)


@dataclass
class Planned:
    """What finalise needs to write the next state. ``claimed``, ``fingerprints`` and ``raws`` are aligned with the
    state the plan read: the members this run claimed, with the fingerprint and raw hash to keep if they are
    delivered (or unchanged). ``new_*`` are the valid contacts not in that state, in file order."""

    claimed: bytearray
    fingerprints: array
    raws: array
    dropped: bytearray  # per member, its dropped-fields combination (an index into combos.names)
    combos: DroppedCombos
    new_keys: array = field(default_factory=lambda: array("Q"))
    new_fingerprints: array = field(default_factory=lambda: array("Q"))
    new_raws: array = field(default_factory=lambda: array("Q"))
    new_dropped: bytearray = field(default_factory=bytearray)

    def keep_state(self, state: MemberState) -> None:
        """Nothing of this run will be sent (the mapping guard): every member keeps what the state holds."""
        self.fingerprints, self.raws, self.dropped = state.fingerprints[:], state.raws[:], state.dropped[:]

    def encode(self, state: MemberState) -> bytes:
        """planned-keys.bin: uint32 members, uint32 new; the claimed flags (one byte per member); the members' keys,
        fingerprints and raw hashes as uint64 LE, aligned with the state; the same three for the new contacts.
        Whole arrays copied as they are (no per-contact work) and not compressed: random 64-bit values do not
        shrink, and filtering or zlib cost ~0.5 s per 1M contacts here, where finalise can spend it."""
        parts = [_COUNTS.pack(len(self.claimed), len(self.new_keys)), bytes(self.claimed)]
        for values in (state.keys, self.fingerprints, self.raws, self.new_keys, self.new_fingerprints, self.new_raws):
            if sys.byteorder != "little":  # pragma: no cover
                values = array("Q", values)
                values.byteswap()
            parts.append(values.tobytes())
        parts += [bytes(self.dropped), bytes(self.new_dropped), json.dumps(self.combos.names).encode()]
        return b"".join(parts)


_COUNTS = struct.Struct("<II")
# The layout Planned.encode writes, named in the manifest ("plannedKeysFormat"). Format 1 (before issue 12) was the
# zlib-compressed keys alone; a run planned with it and finalised by this version ends as described in
# shared/pipeline/finalise.py (_finalise_unreadable_plan).
PLANNED_KEYS_FORMAT = 2


def planned_keys_format(manifest: dict[str, Any], data: bytes) -> int:
    """The format of a run's planned-keys.bin: the manifest says, or (runs planned before it did) the bytes do:
    format 2's counts must add up to its length and end in the JSON list of dropped-field names."""
    if "plannedKeysFormat" in manifest:
        return int(manifest["plannedKeysFormat"])
    if len(data) >= _COUNTS.size:
        members, new = _COUNTS.unpack_from(data)
        fixed = _COUNTS.size + 26 * members + 25 * new  # flags, 3 × uint64 per contact, one dropped byte per contact
        if fixed < len(data):
            try:
                if isinstance(json.loads(data[fixed:]), list):
                    return 2
            except ValueError:
                pass
    return 1


def _u64(data: bytes, offset: int, count: int) -> array:
    values = array("Q")
    values.frombytes(data[offset : offset + 8 * count])
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    return values


def decode_planned(data: bytes) -> tuple[array, array, array, list[tuple[str, ...]]]:
    """(keys, fingerprints, raw hashes, dropped field names) of every contact a plan found valid and not a duplicate:
    the members it claimed, in state order, then the new contacts, in file order."""
    members, new = _COUNTS.unpack_from(data)
    offset = _COUNTS.size
    claimed = data[offset : offset + members]
    offset += members
    out = []
    for i in range(3):
        values = array("Q", compress(_u64(data, offset + 8 * members * i, members), claimed))
        values += _u64(data, offset + 8 * members * 3 + 8 * new * i, new)
        out.append(values)
    offset += 24 * (members + new)
    names = [tuple(n) for n in json.loads(data[offset + members + new :])]
    drops = list(compress(data[offset : offset + members], claimed)) + list(
        data[offset + members : offset + members + new]
    )
    return out[0], out[1], out[2], [names[c] for c in drops]


def raw_salt(export: ExportDefinition, snapshot: Snapshot, api_version: str) -> int:
    """The seed of the raw-record hashes: what a payload depends on besides the record's own bytes."""
    described = {
        "planner": PLANNER_VERSION,
        "export": dataclasses.asdict(export),
        "apiVersion": api_version,
        "columns": list(snapshot.columns),
        "csv": dataclasses.asdict(snapshot.csv_format),
    }
    return hashing.salt_of(json.dumps(described, sort_keys=True, default=str))


def plan_rows(
    store: ObjectStore,
    export: ExportDefinition,
    snapshot: Snapshot,
    state: MemberState,
    api_version: str,
    compare: bool,
    add: Callable[[bytes, tuple[int, int, str, int]], None],
    on_reject: Callable[[dict[str, Any]], None],
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    fast: bool = True,
) -> tuple[PlanCounts, Planned]:
    """Plan every row; ``add(body, (partition, line, email, fingerprint))`` receives each payload to send, with
    the number of its partition in ``snapshot.partition_names``.

    ``compare`` False (a full resync) sends every valid row whatever the state holds. ``fast`` False reads with the
    reference reader and never trusts a raw hash (the equivalence test compares both; the result must not differ).
    """
    n = len(state)
    counts = PlanCounts(previous_members=n if compare else 0)
    salt = raw_salt(export, snapshot, api_version)
    claimed = bytearray(n)
    planned = Planned(
        claimed, state.fingerprints[:], state.raws[:], state.dropped[:], DroppedCombos(state.dropped_names)
    )
    keep_fp, keep_raw, keep_drop = planned.fingerprints, planned.raws, planned.dropped
    new_keys, new_fps, new_raws = planned.new_keys.append, planned.new_fingerprints.append, planned.new_raws.append
    new_drop = planned.new_dropped.append
    combo_of = planned.combos.id_of
    mapper = ContactMapper(export, snapshot.columns)
    if fast:
        short_payload, row_payload, _ = compile_row_payload(mapper, api_version)
    else:  # the reference: a Contact, then its payload

        def row_payload(fields: list[str]) -> tuple[str, bytes, tuple[str, ...]]:
            contact = mapper.map("", 0, fields)
            return contact.email, encode_payload(build_contact_payload(contact, export, api_version)), contact.dropped

        short_payload = row_payload

    email_index = snapshot.columns.index(export.mapping["email"])
    seen: set[int] = set()  # keys of valid rows that are not state members
    seen_add = seen.add
    index_of = state.index_of
    stored_fp = state.fingerprints
    old_fp = hashing.legacy_fingerprint if state.legacy else None
    # hashing.key_of_normalised and hashing.fingerprint, called here without their Python wrappers (~0.15 s per 1M)
    xxh3, email_seed, fp_seed = hashing.xxh3_64_intdigest, hashing.EMAIL_SEED, hashing.FINGERPRINT_SEED
    # A dry run keeps nothing for the next state: a new contact needs no fingerprint and nothing is recorded for it.
    keep = on_sample is None
    dropped_fields = counts.dropped_fields
    # (unused), rejected, duplicates, unchanged, to send, fast-path hits: one list that record() and the readers
    # update in place (a closure's counters); every row lands in exactly one of them.
    tally = [0, 0, 0, 0, 0, 0]

    def track(nbytes: int) -> None:
        progress(sum(tally), nbytes)  # type: ignore[misc]

    files = snapshot.partition_names

    def record(part: int, line: int, fields: list[str], raw: int, short: bool) -> None:
        """The full path for one parsed record (not an empty line) of partition number ``part``. ``short``: the
        record is one line of at most MAX_STRING_LENGTH bytes, so none of its fields can be too long (the length
        checks are skipped)."""
        try:
            email, body, dropped = (short_payload if short else row_payload)(fields)
        except RejectRow as exc:
            tally[1] += 1
            email = fields[email_index] if email_index < len(fields) else ""
            on_reject({"bucket": "rejected", "file": files[part], "line": line, "email": email, "reason": exc.reason})
            return
        key = xxh3(email.encode(), email_seed)
        m = index_of(key) if n else -1
        if m >= 0:
            if claimed[m]:
                m = -2
            else:
                claimed[m] = 1
        elif key in seen:
            m = -2
        else:
            seen_add(key)
        if m == -2:
            tally[2] += 1
            on_reject(
                {
                    "bucket": "duplicate",
                    "file": files[part],
                    "line": line,
                    "email": email,
                    "reason": "duplicate email: an earlier row with the same address was exported (first wins)",
                }
            )
            return
        combo = 0
        if dropped:
            dropped = tuple(dropped)
            for name in dropped:
                dropped_fields[name] += 1
            combo = combo_of(dropped)
            if not combo:
                raw = 0  # the 256th combination: such a row is always mapped, to keep droppedFields exact
        if m >= 0:
            fp = xxh3(body, fp_seed)
            keep_fp[m], keep_raw[m], keep_drop[m] = fp, raw, combo
            if compare and stored_fp[m] == (fp if old_fp is None else old_fp(body)):
                tally[3] += 1
                return
        elif not keep:
            fp = 0
        else:
            fp = xxh3(body, fp_seed)
            new_keys(key)
            new_fps(fp)
            new_raws(raw)
            new_drop(combo)
        tally[4] += 1
        add(body, (part, line, email, fp))
        if on_sample is not None and tally[4] <= DRY_RUN_SAMPLES:
            on_sample(json.loads(body))

    if fast:
        hits = _fast_rows(
            store,
            snapshot,
            salt if keep or (compare and n) else None,  # a dry run without a state to compare needs no raw hash
            state if compare else MemberState.empty(),
            claimed,
            record,
            on_reject,
            track if progress else None,
            tally,
            dropped_fields,
        )
    else:
        hits = _reference_rows(store, snapshot, record, on_reject, track if progress else None, tally)
    _, rejected, duplicates, unchanged, to_send, _ = tally
    counts.rows = rejected + duplicates + unchanged + to_send + hits
    counts.rejected, counts.duplicates = rejected, duplicates
    counts.unchanged, counts.to_send = unchanged + hits, to_send
    counts.valid = counts.rows - rejected - duplicates
    if compare and n:
        counts.leavers = claimed.count(0)
    return counts, planned


_EMPTY_LINES = frozenset((b"", b"\n", b"\r\n", b"\r"))
_decode = bytes.decode


def _all_short(lines: list[bytes]) -> bool:
    """No line of the block is longer than MAX_STRING_LENGTH bytes, so no field of a one-line record in it can be
    too long (a field has at most as many characters as its line has bytes): one pass in C per block instead of a
    length check per field."""
    return max(map(len, lines), default=0) <= MAX_STRING_LENGTH


def _fast_rows(store, snapshot, salt, state, claimed, record, on_reject, progress, tally, dropped_fields) -> int:
    """Walk every partition's raw lines; returns the number of fast-path hits (rows counted unchanged unparsed).
    Misses, header rows and multi-line records are parsed by ``csv`` and handed to ``record``."""
    raws = state.raws
    lookup: dict[int, int] = dict(zip(raws, range(len(raws)), strict=True)) if len(raws) else {}
    lookup.pop(0, None)  # 0 = no raw hash stored
    columns = list(snapshot.columns)
    ncols = len(columns)
    fmt = snapshot.csv_format
    hits = 0
    done = 0

    def header_or_row(where: str, line: int, last: int, fields: list[str]) -> bool:
        """The first non-empty record of a partition: True when it is a row (else a header row, checked)."""
        if fields == columns:
            return False
        if fmt.column_headers:
            raise SnapshotError(
                f"{where} line {line}: the header row differs from the snapshot's columns (model.json attributes, "
                f"or the first CSV's header): {header_difference(fields, snapshot.columns)}; the export changed "
                "while reading or its files disagree: re-run the export"
            )
        return True

    def bad(file: str, line: int, last: int, fields: list[str]) -> None:
        tally[1] += 1
        reason = _bad_count(ncols, fields, line, last)
        on_reject({"bucket": "rejected", "file": file, "line": line, "email": "", "reason": reason})

    walk = _Walk(record, header_or_row, bad, ncols, fmt, progress, tally)
    for number, part in enumerate(snapshot.partitions):
        src = Lines(store, part, salt)  # salt None: lines are not hashed (every hash 0)
        try:
            if lookup:
                drops = (state.dropped, state.dropped_names, dropped_fields)
                hits += _walk_with_lookup(src, number, walk, done, lookup, claimed, hits, drops)
            else:
                _walk_all(src, number, walk, done)
        except csv.Error as e:
            raise SnapshotError(
                f"{store.describe(part.container, part.name)} near line {src.base + src.pos}: bad CSV ({e}); "
                "an unbalanced quote usually causes this"
            ) from None
        finally:
            src.close()
        done += src.bytes_read
        if progress is not None:
            tally[5] = hits
            progress(done)
    return hits


class _Walk(NamedTuple):
    """What both partition walkers hand rows to, and how they read and report."""

    record: Callable[[int, int, list[str], int, bool], None]  # the full path for one parsed record
    header_or_row: Callable[[str, int, int, list[str]], bool]  # the first record: a row (True) or a header row
    bad: Callable[[str, int, int, list[str]], None]  # a record with the wrong number of fields
    ncols: int
    fmt: Any  # the snapshot's CsvFormat
    progress: Callable[[int], None] | None
    tally: list[int]


def _walk_all(src: Lines, number: int, walk: _Walk, done: int) -> None:
    """No stored raw hash to look for (first run, full resync): ``csv`` reads every line, decoded a block at a
    time and pulled through C iterators; each single-line record still gets its raw hash for the next run."""
    record, header_or_row, bad, ncols, fmt, progress, _ = walk
    file = src.part.name
    where = src.store.describe(src.part.container, file)

    short = [False]  # every line of the current block is short (see record)

    def blocks():
        while True:
            # The rows and bytes of the blocks done so far (the rows of a block are counted once csv has read it):
            # reported before reading the next block, and not before the first, so that a small file never shows
            # "100 %, 0 rows".
            if progress is not None and src.bytes_read:
                progress(done + src.bytes_read)
            if not src.refill():
                break
            short[0] = _all_short(src.lines)
            try:
                yield list(map(_decode, src.lines))  # bytes.decode: strict UTF-8, no Python frame per line
            except UnicodeDecodeError:
                raise _not_utf8(src.store, src.part.container, file) from None

    reader = csv.reader(chain.from_iterable(blocks()), **_reader_kwargs(fmt))
    prev = 0
    header_pending = True
    for fields in reader:
        line = prev + 1
        prev = reader.line_num
        if not fields:
            continue
        if header_pending:
            header_pending = False
            if not header_or_row(where, line, prev, fields):
                continue
        if len(fields) == ncols:
            # A single-line record is the current block's line (csv pulls no line beyond a finished record).
            if prev == line:
                record(number, line, fields, src.hashes[line - 1 - src.base], short[0])
            else:
                record(number, line, fields, 0, False)
        else:
            bad(file, line, prev, fields)
    src.pos = len(src.lines)


def _walk_with_lookup(
    src: Lines, number: int, walk: _Walk, done: int, lookup: dict[int, int], claimed: bytearray, hits_before: int,
    drops: tuple,
) -> int:
    """Every line whose raw hash names a member not yet claimed is that member, unchanged (and counts the fields its
    row dropped, as stored); ``csv`` parses the others (pulling lines one at a time from ``src``, so a record with a
    quoted line break may span blocks)."""
    record, header_or_row, bad, ncols, fmt, progress, tally = walk
    dropped, dropped_names, dropped_fields = drops
    file = src.part.name
    where = src.store.describe(src.part.container, file)
    reader = csv.reader(src, **_reader_kwargs(fmt))
    get = lookup.get
    hits = 0
    header_pending = True
    start: int | None = None  # where to go on in the current block (after a record that crossed into it)
    while True:
        if start is None:
            if not src.refill():
                break
            start = 0
        lines, hashes = src.lines, src.hashes
        short = _all_short(lines)
        members = list(map(get, hashes, repeat(-1)))
        if header_pending:  # the first non-empty record is parsed: it may be a header row to check
            for i in range(start, len(lines)):
                if lines[i] not in _EMPTY_LINES:
                    members[i] = -1
                    break
        skip = start
        start = None
        for pos, m in enumerate(members):
            if pos < skip:
                continue
            if m >= 0 and not claimed[m]:
                claimed[m] = 1
                hits += 1
                if dropped[m]:
                    for name in dropped_names[dropped[m]]:
                        dropped_fields[name] += 1
                continue
            # The full path: csv parses the record that starts here (it may pull following lines).
            src.pos = pos
            line = src.base + pos + 1
            fields = next(reader)
            crossed = src.lines is not lines
            last = src.base + src.pos
            if fields:
                if header_pending:
                    header_pending = False
                    if not header_or_row(where, line, last, fields):
                        fields = None
                if fields is None:
                    pass
                elif len(fields) == ncols:
                    if last == line and not crossed:
                        record(number, line, fields, hashes[pos], short)
                    else:
                        record(number, line, fields, 0, False)
                else:
                    bad(file, line, last, fields)
            if crossed:  # the record ran into the next block: go on from where csv stopped in it
                start = src.pos
                break
            skip = src.pos
        if start is None:
            src.pos = len(lines)
            if progress is not None:
                tally[5] = hits_before + hits
                progress(done + src.bytes_read)
    return hits


def _reference_rows(store, snapshot, record, on_reject, progress, tally) -> int:
    number = {name: i for i, name in enumerate(snapshot.partition_names)}
    """The same decisions from the reference reader (shared/segments/reader.py), every row parsed, no raw hash
    trusted or recorded (all 0). The equivalence test compares it with the fast path."""
    for row in read_rows(store, snapshot, progress=progress):
        if row.__class__ is BadRow:
            tally[1] += 1
            on_reject({"bucket": "rejected", "file": row.file, "line": row.line, "email": "", "reason": row.reason})
            continue
        record(number[row.file], row.line, row.fields, 0, False)
    return 0
