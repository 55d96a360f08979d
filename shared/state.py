"""Per-export membership state: who was delivered last time, and a fingerprint of what they were sent.

The next run sends only contacts whose payload fingerprint changed (issue: incremental sync) and finds the
leavers (in the state, not in the new snapshot). It is written only when a run finalises, and only with
contacts that were delivered (or unchanged), so a contact that failed is retried next time.

File format (``<export>/members.bin`` in ``names.STATE_CONTAINER``), version 3, made to load without hashing a single
email and to stay within 32 bytes per contact:
    b"CIOSTATE3\\n" + uint32 n (LE) + n bytes of JSON metadata + uint32 count
    + uint32 m + zlib(the sorted email keys, as 8 byte planes)      the lookup index, sorted ascending
    + count × uint64 fingerprint (LE)                                 aligned with the keys
    + count × uint64 raw-record hash (LE; 0 = none)                   aligned with the keys (the fast path)
    + uint32 m + zlib(count bytes: which fields each member's row dropped; 0 = none; the combinations are listed
      in the metadata as "droppedNames")
    + zlib(the emails in key order, "\\n"-joined, UTF-8)            decompressed only when someone needs them
Sorted 64-bit keys share their top ~20 bits with their neighbours; stored byte plane by byte plane (all top bytes,
then all second bytes, ...) zlib squeezes those away: ~6 bytes per key instead of 8, for one extended-slice copy per
plane on load. Fingerprints and raw hashes are random and stay 8 bytes each. ``bytes_per_contact`` in a run report
says what a given state reaches (bench, 1M: 29.4 bytes; long, varied real addresses compress less).

Older versions are still read, once, on the slow path (every email hashed and sorted), then rewritten as version 3
by the run's finalise:
    version 2: b"CIOSTATE2\\n" + uint32 n (LE) + n bytes of JSON metadata + zlib(body)
    version 1: b"CIOSTATE1\\n" + zlib(body)                    (its metadata is empty)
    body:      uint32 count | count × uint64 blake2b fingerprint (LE) | emails sorted, "\\n"-joined, UTF-8
Their fingerprints are blake2b (``MemberState.legacy``): planning compares with ``hashing.legacy_fingerprint``.
The metadata says which run and snapshot the state describes (``StateMeta``), so a run of an older snapshot
that finalises late never untags against, nor overwrites, a newer state (ARCHITECTURE §4 rule 7).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from shared import names
from shared.contacts import email_key
from shared.errors import FailRun
from shared.storage import NotFound, ObjectStore

MAGIC_V1 = b"CIOSTATE1\n"
MAGIC_V2 = b"CIOSTATE2\n"
MAGIC = b"CIOSTATE3\n"
MAGICS = (MAGIC, MAGIC_V2, MAGIC_V1)
# zlib level 6 is the library default: level 9 saves ~2% more on emails for ~2x the time.
COMPRESSION_LEVEL = 6
_U32 = struct.Struct("<I")
_BIG_ENDIAN = sys.byteorder != "little"


class StateCorrupt(FailRun):
    """The stored state cannot be read; a full resync (--full-resync) rebuilds it."""


@dataclass(frozen=True)
class StateMeta:
    """What a state describes: the snapshot, the run that committed it, and when that run started (epoch
    seconds). Runs start on the newest snapshot at the time, so a run that started earlier describes an older
    snapshot: ``started_at`` orders snapshots whatever their ids look like (plain-CSV ids are digests)."""

    snapshot: str = ""
    run_id: str = ""
    started_at: float = 0.0

    def to_json(self) -> dict:
        return {"snapshot": self.snapshot, "runId": self.run_id, "startedAt": self.started_at}

    @staticmethod
    def from_json(data: dict) -> StateMeta:
        return StateMeta(str(data.get("snapshot", "")), str(data.get("runId", "")), float(data.get("startedAt", 0)))

    def is_newer_than(self, snapshot: str, started_at: float) -> bool:
        """True when this state describes a different snapshot than ``snapshot`` that a later run committed."""
        return bool(self.snapshot) and self.snapshot != snapshot and self.started_at > started_at


def _le(values: array) -> bytes:
    if _BIG_ENDIAN:  # pragma: no cover
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _from_le(data: bytes) -> array:
    values = array("Q")
    values.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        values.byteswap()
    return values


class MemberState:
    """The members sorted by email key, with aligned fingerprints, raw-record hashes and (lazily) emails."""

    __slots__ = (
        "_emails",
        "_packed_emails",
        "dropped",
        "dropped_names",
        "fingerprints",
        "keys",
        "legacy",
        "meta",
        "raws",
    )

    def __init__(
        self,
        keys: array,
        fingerprints: array,
        raws: array,
        emails: list[str] | None = None,
        packed_emails: bytes = b"",
        meta: StateMeta | None = None,
        legacy: bool = False,
        dropped: bytearray | None = None,
        dropped_names: list[tuple[str, ...]] | None = None,
    ) -> None:
        self.keys = keys  # 'Q', sorted ascending
        self.fingerprints = fingerprints  # 'Q', aligned with keys
        self.raws = raws  # 'Q', aligned with keys; 0 where no raw-record hash is known
        self._emails = emails
        self._packed_emails = packed_emails
        self.meta = meta or StateMeta()
        # True for a version-1/2 state: its fingerprints are blake2b (hashing.legacy_fingerprint), its raws all 0.
        self.legacy = legacy
        # Per member, which optional fields its row had dropped (an index into dropped_names; 0 = none), so that a
        # row recognised unparsed still counts in the run's droppedFields. At most 255 distinct combinations.
        self.dropped = dropped if dropped is not None else bytearray(len(keys))
        self.dropped_names: list[tuple[str, ...]] = dropped_names or [()]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def emails(self) -> list[str]:
        """The emails, aligned with ``keys`` (decompressed on first use: planning never needs them)."""
        if self._emails is None:
            try:
                text = zlib.decompress(self._packed_emails).decode("utf-8") if self._packed_emails else ""
            except (zlib.error, UnicodeDecodeError) as exc:
                raise StateCorrupt(f"the state's emails are unreadable ({exc}); run with --full-resync") from None
            self._emails = text.split("\n") if len(self.keys) else []
            if len(self._emails) != len(self.keys):
                raise StateCorrupt(
                    f"the state holds {len(self._emails)} emails for {len(self.keys)} members; "
                    "run with --full-resync to rebuild it"
                )
            self._packed_emails = b""
        return self._emails

    def index_of(self, key: int) -> int:
        """The position of this email key, or -1 when the contact is not in the state."""
        keys = self.keys
        i = bisect_left(keys, key)
        return i if i < len(keys) and keys[i] == key else -1

    def fingerprint_of(self, key: int) -> int | None:
        """The fingerprint last delivered for this email key, or None if the contact is not in the state."""
        i = self.index_of(key)
        return self.fingerprints[i] if i >= 0 else None

    def key_index(self) -> array:
        return self.keys

    def drop_emails(self) -> None:
        """Free the email strings (planning needs only keys, fingerprints and raw hashes)."""
        if self._emails is not None and not self._packed_emails:
            self._packed_emails = zlib.compress("\n".join(self._emails).encode("utf-8"), 1)
        self._emails = None

    def entries(self) -> list[tuple[str, int, int, tuple[str, ...]]]:
        """(email, fingerprint, raw hash, dropped field names) of every member."""
        names = self.dropped_names
        return list(zip(self.emails, self.fingerprints, self.raws, [names[c] for c in self.dropped], strict=True))

    @staticmethod
    def empty() -> MemberState:
        return MemberState(array("Q"), array("Q"), array("Q"), [])

    @staticmethod
    def build(entries: Iterable[tuple], meta: StateMeta | None = None, legacy: bool = False) -> MemberState:
        """From (email, fingerprint[, raw hash[, dropped field names]]) tuples in any order; the slow path (hashes
        every email)."""
        # One entry per key (a later tuple for the same email wins), sorted by key.
        by_key = {email_key(e[0]): e for e in entries}
        ordered = [by_key[k] for k in sorted(by_key)]
        combos = DroppedCombos()
        raws = array("Q", [e[2] if len(e) > 2 else 0 for e in ordered])
        dropped = bytearray(len(ordered))
        for i, e in enumerate(ordered):
            if len(e) > 3 and e[3]:
                dropped[i] = combos.id_of(tuple(e[3]))
                if not dropped[i]:
                    raws[i] = 0  # too many combinations to say: the row is parsed next time
        return MemberState(
            array("Q", sorted(by_key)),
            array("Q", [e[1] for e in ordered]),
            raws,
            [e[0] for e in ordered],
            meta=meta,
            legacy=legacy,
            dropped=dropped,
            dropped_names=combos.names,
        )


class DroppedCombos:
    """Numbers the combinations of dropped field names (0 = none), at most 255 of them (one byte per member)."""

    def __init__(self, names: list[tuple[str, ...]] | None = None) -> None:
        self.names: list[tuple[str, ...]] = list(names or [()])
        self._ids = {n: i for i, n in enumerate(self.names)}

    def id_of(self, names: tuple[str, ...]) -> int:
        """The number of this combination, or 0 when there are already 255 others."""
        found = self._ids.get(names)
        if found is None:
            if len(self.names) > 255:
                return 0
            found = self._ids[names] = len(self.names)
            self.names.append(names)
        return found


def _planes(keys: array) -> bytes:
    data = _le(keys)
    return b"".join(data[i::8] for i in range(7, -1, -1))


def _unplane(data: bytes, count: int) -> array:
    out = bytearray(8 * count)
    for plane, i in enumerate(range(7, -1, -1)):
        out[i::8] = data[plane * count : (plane + 1) * count]
    return _from_le(bytes(out))


def encode_members(state: MemberState) -> bytes:
    """A state in the current format (version 3)."""
    n = len(state)
    described = state.meta.to_json()
    if state.legacy:  # blake2b fingerprints carried over (forget rewrote a version-1/2 state): say so
        described["legacyFingerprints"] = True
    if len(state.dropped_names) > 1:
        described["droppedNames"] = [list(n) for n in state.dropped_names]
    dropped = zlib.compress(bytes(state.dropped), COMPRESSION_LEVEL)
    header = json.dumps(described, separators=(",", ":")).encode("utf-8")
    keys = zlib.compress(_planes(state.keys), COMPRESSION_LEVEL)
    emails = zlib.compress("\n".join(state.emails).encode("utf-8"), COMPRESSION_LEVEL)
    return b"".join(
        (
            MAGIC,
            _U32.pack(len(header)),
            header,
            _U32.pack(n),
            _U32.pack(len(keys)),
            keys,
            _le(state.fingerprints),
            _le(state.raws),
            _U32.pack(len(dropped)),
            dropped,
            emails,
        )
    )


def encode_state(entries: Iterable[tuple], meta: StateMeta | None = None) -> bytes:
    """(email, fingerprint[, raw hash]) tuples -> a version-3 state file."""
    return encode_members(MemberState.build(entries, meta))


def _decode_v3(data: bytes, meta: StateMeta, offset: int) -> MemberState:
    (count,) = _U32.unpack_from(data, offset)
    (size,) = _U32.unpack_from(data, offset + 4)
    offset += 8
    keys = _unplane(zlib.decompress(data[offset : offset + size]), count)
    offset += size
    fps = _from_le(data[offset : offset + 8 * count])
    raws = _from_le(data[offset + 8 * count : offset + 16 * count])
    offset += 16 * count
    (size,) = _U32.unpack_from(data, offset)
    dropped = bytearray(zlib.decompress(data[offset + 4 : offset + 4 + size]))
    packed = data[offset + 4 + size :]
    if len(keys) != count or len(fps) != count or len(raws) != count or len(dropped) != count:
        raise ValueError(f"{count} members announced, the arrays are shorter")
    zlib.decompressobj().decompress(packed[:64])  # a damaged email section fails here, not later
    return MemberState(keys, fps, raws, None, packed, meta, dropped=dropped)


def _decode_legacy(body: bytes, meta: StateMeta, where: str) -> MemberState:
    (count,) = struct.unpack_from("<I", body)
    fps = _from_le(body[4 : 4 + 8 * count])
    text = body[4 + 8 * count :].decode("utf-8")
    emails = text.split("\n") if count else []
    if len(emails) != count or len(fps) != count:
        raise StateCorrupt(f"{where}: truncated ({len(emails)} emails for {count} entries); use --full-resync")
    return MemberState.build(zip(emails, fps, strict=True), meta, legacy=True)


def decode_state(data: bytes, where: str) -> MemberState:
    if not data.startswith(MAGICS):
        raise StateCorrupt(f"{where}: not a membership state file; run with --full-resync to rebuild it")
    try:
        meta, offset, described = StateMeta(), len(MAGIC), {}
        if not data.startswith(MAGIC_V1):
            (size,) = _U32.unpack_from(data, offset)
            described = json.loads(data[offset + 4 : offset + 4 + size])
            meta = StateMeta.from_json(described)
            offset += 4 + size
        if data.startswith(MAGIC):
            state = _decode_v3(data, meta, offset)
            state.legacy = bool(described.get("legacyFingerprints"))
            state.dropped_names = [tuple(n) for n in described.get("droppedNames", [[]])]
            if max(state.dropped, default=0) >= len(state.dropped_names):
                raise ValueError("a member's dropped fields are not among the names recorded")
            return state
        return _decode_legacy(zlib.decompress(data[offset:]), meta, where)
    except StateCorrupt:
        raise
    except (zlib.error, struct.error, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise StateCorrupt(f"{where}: unreadable ({exc}); run with --full-resync to rebuild it") from None


STATE = names.STATE_CONTAINER


def state_name(export: str) -> str:
    return f"{export}/members.bin"


def _legacy_state_name(export: str) -> str:
    """Where states were kept before they moved out of the runs container (read once, removed on the next save)."""
    return f"{export}/state/members.bin"


def load_state(store: ObjectStore, export: str) -> MemberState:
    for container, name in ((STATE, state_name(export)), (names.RUNS_CONTAINER, _legacy_state_name(export))):
        try:
            data = store.read(container, name)
        except NotFound:
            continue
        return decode_state(data, store.describe(container, name))
    return MemberState.empty()


def load_state_meta(store: ObjectStore, export: str) -> StateMeta:
    """What the stored state describes, without decompressing its members (empty for none or a version-1 file)."""
    for container, name in ((STATE, state_name(export)), (names.RUNS_CONTAINER, _legacy_state_name(export))):
        try:
            data = store.read(container, name)
        except NotFound:
            continue
        if not data.startswith((MAGIC, MAGIC_V2)):
            return StateMeta()
        (size,) = _U32.unpack_from(data, len(MAGIC))
        return StateMeta.from_json(json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + size]))
    return StateMeta()


def save_state(
    store: ObjectStore, export: str, entries: Iterable[tuple] | MemberState, meta: StateMeta | None = None
) -> int:
    """Write the state (and what it describes); returns its size in bytes."""
    state = entries if isinstance(entries, MemberState) else MemberState.build(entries, meta)
    if meta is not None:
        state.meta = meta
    data = encode_members(state)
    store.write(STATE, state_name(export), data)
    if store.exists(names.RUNS_CONTAINER, _legacy_state_name(export)):
        store.delete(names.RUNS_CONTAINER, _legacy_state_name(export))
    return len(data)
