"""Per-export membership state: who was delivered last time, and a fingerprint of what they were sent.

The next run sends only contacts whose payload fingerprint changed (issue: incremental sync) and finds the
leavers (in the state, not in the new snapshot). It is written only when a run finalises, and only with
contacts that were delivered (or unchanged), so a contact that failed is retried next time.

File format (``<export>/members.bin`` in ``names.STATE_CONTAINER``), chosen to stay small for 1M contacts:
    version 2: b"CIOSTATE2\\n" + uint32 n (LE) + n bytes of JSON metadata + zlib(body)
    version 1: b"CIOSTATE1\\n" + zlib(body)                    (still read; its metadata is empty)
    body:      uint32 count | count × uint64 fingerprint (LE) | emails sorted, "\\n"-joined, UTF-8
The metadata says which run and snapshot the state describes (``StateMeta``), so a run of an older snapshot
that finalises late never untags against, nor overwrites, a newer state (ARCHITECTURE §4 rule 7).
Sorted emails share prefixes and domains, so zlib brings them to roughly a third of their size; the
fingerprints are random and stay 8 bytes each. ``bytes_per_contact`` reports what a given state reaches.
"""

from __future__ import annotations

import json
import struct
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
MAGIC = b"CIOSTATE2\n"
MAGICS = (MAGIC, MAGIC_V1)
# zlib level 6 is the library default: level 9 saves ~2% more on sorted emails for ~2x the time.
COMPRESSION_LEVEL = 6


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


@dataclass
class MemberState:
    """Emails sorted ascending with their fingerprints, plus a key index for O(log n) lookups."""

    emails: list[str]
    fingerprints: array  # 'Q', aligned with emails
    _keys: array | None = None  # 'Q' sorted email keys
    _key_fp: array | None = None  # 'Q' fingerprints aligned with _keys
    meta: StateMeta = StateMeta()

    def __len__(self) -> int:
        return len(self.fingerprints)

    def _index(self) -> None:
        pairs = sorted(zip((email_key(e) for e in self.emails), self.fingerprints, strict=True))
        self._keys = array("Q", (k for k, _ in pairs))
        self._key_fp = array("Q", (f for _, f in pairs))

    def fingerprint_of(self, key: int) -> int | None:
        """The fingerprint last delivered for this email key, or None if the contact is not in the state."""
        if self._keys is None:
            self._index()
        keys = self._keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return self._key_fp[i]
        return None

    def key_index(self) -> array:
        if self._keys is None:
            self._index()
        return self._keys

    def drop_emails(self) -> None:
        """Free the email strings once the key index exists (planning needs only keys and fingerprints)."""
        self.key_index()
        self.emails = []

    @staticmethod
    def empty() -> MemberState:
        return MemberState([], array("Q"))


def encode_state(entries: Iterable[tuple[str, int]], meta: StateMeta | None = None) -> bytes:
    ordered = sorted(entries)
    fps = array("Q", (fp for _, fp in ordered))
    if struct.pack("<H", 1) != b"\x01\x00":  # pragma: no cover - big-endian hosts
        fps.byteswap()
    body = struct.pack("<I", len(ordered)) + fps.tobytes() + "\n".join(e for e, _ in ordered).encode("utf-8")
    header = json.dumps((meta or StateMeta()).to_json(), separators=(",", ":")).encode("utf-8")
    return MAGIC + struct.pack("<I", len(header)) + header + zlib.compress(body, COMPRESSION_LEVEL)


def decode_state(data: bytes, where: str) -> MemberState:
    if not data.startswith(MAGICS):
        raise StateCorrupt(f"{where}: not a membership state file; run with --full-resync to rebuild it")
    try:
        meta, offset = StateMeta(), len(MAGIC_V1)
        if data.startswith(MAGIC):
            (size,) = struct.unpack_from("<I", data, offset)
            meta = StateMeta.from_json(json.loads(data[offset + 4 : offset + 4 + size]))
            offset += 4 + size
        body = zlib.decompress(data[offset:])
        (count,) = struct.unpack_from("<I", body)
        fps = array("Q")
        fps.frombytes(body[4 : 4 + 8 * count])
        if struct.pack("<H", 1) != b"\x01\x00":  # pragma: no cover
            fps.byteswap()
        text = body[4 + 8 * count :].decode("utf-8")
    except (zlib.error, struct.error, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise StateCorrupt(f"{where}: unreadable ({exc}); run with --full-resync to rebuild it") from None
    emails = text.split("\n") if count else []
    if len(emails) != count or len(fps) != count:
        raise StateCorrupt(f"{where}: truncated ({len(emails)} emails for {count} entries); use --full-resync")
    return MemberState(emails, fps, meta=meta)


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
        if not data.startswith(MAGIC):
            return StateMeta()
        (size,) = struct.unpack_from("<I", data, len(MAGIC))
        return StateMeta.from_json(json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + size]))
    return StateMeta()


def save_state(store: ObjectStore, export: str, entries: Iterable[tuple[str, int]],
               meta: StateMeta | None = None) -> int:
    """Write the state (and what it describes); returns its size in bytes."""
    data = encode_state(entries, meta)
    store.write(STATE, state_name(export), data)
    if store.exists(names.RUNS_CONTAINER, _legacy_state_name(export)):
        store.delete(names.RUNS_CONTAINER, _legacy_state_name(export))
    return len(data)
