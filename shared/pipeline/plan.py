"""Planning: read the snapshot, map and validate rows, diff against the state, cut batches; and the dry run."""

from __future__ import annotations

import gc
import struct
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from shared import hashing
from shared.batch_store import SegmentWriter, decode_batch, encode_batch
from shared.exports import ExportDefinition, ensure_runnable
from shared.logs import mask_email
from shared.omnisend import API_LIMITS
from shared.omnisend.payloads import OLD_STATUS_DATE
from shared.pipeline.context import RUNS, Context, RunOptions, _now_iso, _snapshot_from_json, log
from shared.pipeline.rowloop import PLANNED_KEYS_FORMAT, PlanCounts, plan_rows
from shared.pipeline.start import read_started
from shared.runs import (
    RunPaths,
    dumps,
    read_json,
    rejected_csv,
)
from shared.segments import discover_snapshot
from shared.state import load_state

# Dry-run reports show DRY_RUN_SAMPLES (shared/pipeline/rowloop.py) sample payloads and this many rejected rows
# (every value masked: see _mask_payload).
DRY_RUN_REJECTED_SAMPLES = 20
# Rejection reasons quoted in a mapping-guard message and a dry run, most frequent first, and how many masked
# file:line samples each: enough to recognise a wrong mapping without listing people.
TOP_REASONS = 3
REASON_SAMPLES = 3

# ---------------------------------------------------------------------------------------------------- plan


class _BatchWriter:
    """Cuts planned contacts into batches under both caps (items and body bytes), hands each batch to the segment
    writer (shared/batch_store.py), and keeps the email + fingerprint + batch of every planned contact
    (changes.bin) for the new state."""

    def __init__(
        self, ctx: Context, paths: RunPaths | None, max_items: int, max_bytes: int, files: list[str]
    ) -> None:
        self.ctx, self.paths = ctx, paths
        self.files = files  # partition paths; a row names its partition by its number in this list
        self.count = 0
        self.sizes: list[int] = []  # rows per batch, kept in the manifest
        self._change_parts: list[bytes] = []
        self.segments = SegmentWriter(ctx.state_store, paths) if paths is not None else None
        self.layout: dict[str, Any] | None = None  # what close() wrote, for the manifest
        self.add, self.flush = self._batcher(max_items, max_bytes - 64)  # 64: {"method":"POST",...,"items":[...]}

    def _batcher(self, max_items: int, max_bytes: int):
        """``add(body, row)`` and ``flush()``. Closures over local lists and a cell, not methods over attributes:
        ``add`` runs once per planned contact, and this way it costs about half as much."""
        bodies: list[bytes] = []
        rows: list[tuple[int, int, str, int]] = []
        size = 0
        segments, sizes, change_parts, files = self.segments, self.sizes, self._change_parts, self.files

        def flush() -> None:
            nonlocal size
            if not bodies:
                return
            self.count += 1
            n = self.count
            sizes.append(len(bodies))
            if segments is not None:
                first, last = rows[0][0], rows[-1][0]  # rows come in partition order
                segments.add(n, encode_batch({str(f): files[f] for f in range(first, last + 1)}, rows, bodies))
                change_parts.append(_change_block(n, rows))
            bodies.clear()
            rows.clear()
            size = 0

        def add(body: bytes, row: tuple[int, int, str, int]) -> None:
            nonlocal size
            if size + len(body) > max_bytes or len(bodies) >= max_items:
                flush()
            bodies.append(body)
            rows.append(row)
            size += len(body) + 1

        return add, flush

    def close(self) -> None:
        """Write the last segment and the batch index; raises the first write error."""
        if self.segments is not None:
            self.layout = self.segments.close()

    def changes(self) -> bytes:
        """changes.bin: one block per batch (see _change_block)."""
        return b"".join(self._change_parts)


# changes.bin holds, per batch: uint32 batch, uint32 count, count × uint64 fingerprint, uint32 byte length, the
# emails "\n"-joined (UTF-8). Built from whole lists in C, it costs next to nothing per row; compressing it cost
# more CPU than any other step of planning, for a file read once (at finalise).
_BLOCK_HEAD = struct.Struct("<II")
_LENGTH = struct.Struct("<I")


def _change_block(batch: int, rows: list[tuple[int, int, str, int]]) -> bytes:
    emails = "\n".join([r[2] for r in rows]).encode()
    fps = array("Q", [r[3] for r in rows])
    if sys.byteorder != "little":  # pragma: no cover
        fps.byteswap()
    return _BLOCK_HEAD.pack(batch, len(rows)) + fps.tobytes() + _LENGTH.pack(len(emails)) + emails


def _read_changes(data: bytes) -> list[tuple[str, int, int]]:
    """(email, fingerprint, batch) for every planned contact, from changes.bin."""
    out: list[tuple[str, int, int]] = []
    pos = 0
    while pos < len(data):
        batch, count = _BLOCK_HEAD.unpack_from(data, pos)
        pos += _BLOCK_HEAD.size
        fps = array("Q")
        fps.frombytes(data[pos : pos + 8 * count])
        if sys.byteorder != "little":  # pragma: no cover
            fps.byteswap()
        pos += 8 * count
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        emails = data[pos : pos + length].decode("utf-8").split("\n")
        pos += length
        out.extend(zip(emails, fps, [batch] * count, strict=True))
    return out


@contextmanager
def _gc_paused():
    """Planning makes no reference cycles, but the cyclic collector would still walk the objects it keeps
    alive thousands of times over a million rows (~10% of planning time): pause it for the loop."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# contacts.email_key for an email that is already normalised (skips normalising it again).
_key_of = hashing.key_of_normalised


def plan(
    ctx: Context, export: ExportDefinition, run_id: str, progress: Callable[[int, int], None] | None = None,
    *, fast_path: bool = True,
) -> dict[str, Any]:
    """Read the snapshot, write the batches and the manifest. Idempotent: an existing manifest is returned.
    ``fast_path=False`` parses every row with the reference reader (the equivalence test; same result)."""
    paths = RunPaths(export.name, run_id)
    existing = read_json(ctx.state_store, RUNS, paths.manifest)
    if existing is not None:
        return existing
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])
    snapshot = _snapshot_from_json(started["source"])
    limits = API_LIMITS[ctx.api_version]
    t0 = time.perf_counter()
    # Even a full resync reads the state: its members are claimed (finalise keeps them aligned), never compared.
    state = load_state(ctx.state_store, export.name)
    state.drop_emails()  # planning needs keys, fingerprints and raw hashes only; finalise reloads the emails

    rejected: list[dict[str, Any]] = []
    writer = _BatchWriter(ctx, paths, limits.max_batch_items, limits.max_body_bytes, snapshot.partition_names)
    with _gc_paused():
        counts, planned = plan_rows(
            ctx.source_store, export, snapshot, state, ctx.api_version, not options.full_resync, writer.add,
            rejected.append, None, progress, fast=fast_path,
        )
        writer.flush()
        writer.close()
        counts.batches = writer.count
    guard = mapping_guard(export, counts, rejected)
    if guard is not None:
        # Nothing of this run may reach Omnisend: the planned contacts become "failed" rows and their payloads go.
        assert writer.segments is not None
        rejected.extend(_unsend(writer.segments, guard["reason"]))
        writer.sizes.clear()
        writer._change_parts.clear()
        counts.batches, writer.layout = 0, None
        planned.keep_state(state)
        log.warning("plan export=%s runId=%s %s", export.name, run_id, guard["message"])
    # This attempt's own files, created once in a fresh folder: a twin planner of the same run (a redelivered plan
    # message, perhaps with an edited definition or another version) writes its own, and the manifest created
    # first picks whose are read.
    plan_files = {"planFiles": f"plan/{uuid.uuid4().hex[:16]}/"}
    for name, data in (  # one at a time: built, written, freed (together they are ~70 MB per 1M contacts)
        ("changes.bin", writer.changes),
        ("planned-keys.bin", lambda: planned.encode(state)),
        ("plan-rejected.csv", lambda: rejected_csv(rejected)),
    ):
        ctx.state_store.create(RUNS, paths.plan_file(plan_files, name), data())
    manifest = {
        "runId": run_id,
        "export": export.name,
        "snapshot": snapshot.snapshot_id,
        "apiVersion": ctx.api_version,
        "rows": counts.rows,
        "valid": counts.valid,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "unchanged": counts.unchanged,
        "toSend": counts.to_send,
        "batches": counts.batches,
        "batchSizes": writer.sizes,
        # Where the batches are (shared/batch_store.py): the layout this attempt wrote, pinned by this manifest.
        "batchFiles": writer.layout,
        "plannedKeysFormat": PLANNED_KEYS_FORMAT,
        **plan_files,
        "leavers": counts.leavers,
        "previousMembers": counts.previous_members,
        "droppedFields": dict(counts.dropped_fields),
        "guard": guard,
        "plannedAt": _now_iso(ctx.clock),
        "planSeconds": round(time.perf_counter() - t0, 3),
    }
    # The manifest is the commit point of planning: written last, once.
    if not ctx.state_store.create(RUNS, paths.manifest, dumps(manifest)):
        manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    log.info(
        "plan export=%s runId=%s rows=%d valid=%d rejected=%d duplicates=%d unchanged=%d batches=%d seconds=%.2f",
        export.name, run_id, counts.rows, counts.valid, counts.rejected, counts.duplicates, counts.unchanged,
        counts.batches, manifest["planSeconds"],
    )
    return manifest


def dry_run(ctx: Context, export: ExportDefinition, options: RunOptions, *, fast_path: bool = True) -> dict[str, Any]:
    """Everything a run would do, with reads only: no write request to Omnisend, nothing stored."""
    ensure_runnable(export)
    t0 = time.perf_counter()
    snapshot = discover_snapshot(ctx.source_store, export.source)
    limits = API_LIMITS[ctx.api_version]
    state = load_state(ctx.state_store, export.name)
    state.drop_emails()
    samples: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    writer = _BatchWriter(ctx, None, limits.max_batch_items, limits.max_body_bytes, snapshot.partition_names)
    with _gc_paused():
        counts, _ = plan_rows(
            ctx.source_store, export, snapshot, state, ctx.api_version, not options.full_resync, writer.add,
            rejected.append, lambda p: samples.append(_mask_payload(p)), None, fast=fast_path,
        )
        writer.flush()
        writer.close()
        counts.batches = writer.count
    guard_tripped = mapping_guard(export, counts, rejected)
    would_untag = counts.leavers if export.on_exit == "untag" and export.tags else 0
    guard = _mass_exit_tripped(export, counts.leavers, counts.previous_members, options.allow_mass_exit)
    untag_calls = -(-would_untag // 250) if ctx.api_version != "v3" and not guard else 0
    rpm = ctx.settings.omnisend_requests_per_minute
    # One POST per batch plus one batch-list poll per ~250 batches; untag calls have their own 60/min limit.
    requests = counts.batches + -(-counts.batches // 250)
    seconds = requests * 60.0 / rpm + untag_calls * 60.0 / 60
    return {
        "dryRun": True,
        "export": export.name,
        "snapshot": snapshot.snapshot_id,
        "source": snapshot.description,
        "apiVersion": ctx.api_version,
        "rows": counts.rows,
        "valid": counts.valid,
        "rejected": counts.rejected,
        "duplicates": counts.duplicates,
        "unchanged": counts.unchanged,
        "wouldCreateOrUpdate": counts.to_send,
        "batches": counts.batches,
        "leavers": counts.leavers,
        "wouldUntag": 0 if guard or ctx.api_version == "v3" else would_untag,
        "massExitGuard": guard,
        "mappingGuard": guard_tripped["message"] if guard_tripped else None,
        "rejectedReasons": rejection_reasons(rejected),
        "droppedFields": dict(counts.dropped_fields),
        "estimatedRequests": requests + untag_calls,
        "estimatedSeconds": round(seconds, 1),
        "requestsPerMinute": rpm,
        "samplePayloads": samples,
        "rejectedSample": [_mask_rejected(r) for r in rejected[:DRY_RUN_REJECTED_SAMPLES]],
        "planSeconds": round(time.perf_counter() - t0, 3),
    }


# Dry runs show shapes, not people (ARCHITECTURE §4 rule 11): every value that came from a row is masked, keeping
# its field name, length and format (letters -> x/X, digits -> 9, punctuation kept: "+370 612" -> "+999 999");
# emails keep their first character and domain. Values that are the export's own settings stay readable.
_SETTING_KEYS = frozenset({"type", "status", "sendWelcomeMessage", "tags"})


def mask_shape(value: str) -> str:
    """``"Jane O'Neil"`` -> ``"Xxxx X'Xxxx"``: the length and format of a value, not the value."""
    return "".join(
        ("X" if c.isupper() else "x") if c.isalpha() else "9" if c.isdigit() else c for c in value
    )


def _mask_cell(value: str) -> str:
    """A raw cell as read (it may be an address, or any text)."""
    masked = mask_email(value)
    return masked if masked != "***" else mask_shape(value)


def _mask_value(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask_value(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_value(v, key) for v in value]
    if not isinstance(value, str) or key in _SETTING_KEYS or value == OLD_STATUS_DATE:
        return value
    return mask_shape(value)

def rejection_reasons(rows: list[dict[str, Any]], top: int = TOP_REASONS) -> list[dict[str, Any]]:
    """The ``top`` most frequent reasons of the rejected rows, with counts and masked ``file:line`` samples."""
    counts: Counter = Counter()
    samples: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["bucket"] != "rejected":
            continue
        reason = row["reason"]
        counts[reason] += 1
        kept = samples.setdefault(reason, [])
        if len(kept) < REASON_SAMPLES:
            kept.append({"file": row["file"], "line": row["line"], "email": mask_email(row["email"])})
    return [{"reason": r, "count": n, "samples": samples[r]} for r, n in counts.most_common(top)]


def mapping_guard(export: ExportDefinition, counts: PlanCounts, rejected: list[dict[str, Any]]) -> dict | None:
    """The mapping guard: a snapshot with no valid row, or more rejected rows than ``maxRejectedFraction`` allows,
    almost always means a wrong mapping (email mapped to another column) or a broken snapshot. Such a run sends
    nothing and fails, saying the top reasons. None when the run may go on."""
    rows = counts.rows
    if rows == 0 or (counts.valid > 0 and counts.rejected <= export.max_rejected_fraction * rows):
        return None
    top = rejection_reasons(rejected)
    reasons = "; ".join(f"{r['reason']} ({r['count']:,})" for r in top)
    share = f"{counts.rejected:,} of {rows:,} rows rejected ({100 * counts.rejected / rows:.0f}%)"
    limit = f"more than maxRejectedFraction {export.max_rejected_fraction:g}"
    why = "no row is valid" if counts.valid == 0 else limit
    message = (
        f"mapping guard: {share}, {why}, so nothing was sent and nobody was untagged. Top reasons: {reasons}. "
        f'Check the export\'s mapping (email is read from column "{export.mapping["email"]}") and the snapshot; '
        "if the data really is this dirty, raise maxRejectedFraction in the export definition"
    )
    reason = f"not sent: the mapping guard stopped the run ({share})"
    return {"message": message, "reason": reason, "rejected": counts.rejected, "rows": rows,
            "maxRejectedFraction": export.max_rejected_fraction, "notSent": counts.to_send, "topReasons": top}


def _unsend(segments: SegmentWriter, reason: str) -> list[dict[str, Any]]:
    """The rows of the batches already written, as "failed" rows with ``reason``; the segment files are deleted."""
    rows: list[dict[str, Any]] = []
    for data in segments.batches():
        rows += [{"bucket": "failed", "file": f, "line": line, "email": email, "reason": reason}
                 for f, line, email, _ in decode_batch(data)["rows"]]
    segments.delete()
    return rows


def _mask_payload(payload: dict[str, Any]) -> dict[str, Any]:
    masked = _mask_value(payload)
    for ident in masked.get("identifiers", []):
        if ident.get("type") == "email":
            original = next(i["id"] for i in payload["identifiers"] if i.get("type") == "email")
            ident["id"] = mask_email(original)
    return masked


def _mask_rejected(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "email": _mask_cell(row.get("email") or "")}


def _mass_exit_tripped(export: ExportDefinition, leavers: int, previous: int, allowed: bool) -> bool:
    if allowed or export.on_exit != "untag" or not export.tags or previous == 0:
        return False
    return leavers > export.max_exit_fraction * previous


