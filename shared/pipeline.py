"""The four stages of an export run: plan, send, verify, finalise.

Both orchestrators call these and nothing else: the local CLI (shared/local_runner.py, a thread pool) and the
Azure Functions app (function_app.py, one queue message per batch). Every stage is idempotent: it finds the
markers an earlier call left (shared/runs.py) and does nothing twice, so redelivered messages, racing workers
and re-runs after a crash are safe.
"""

from __future__ import annotations

import gc
import json
import logging
import struct
import sys
import threading
import time
import uuid
import zlib
from array import array
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from typing import Any

from shared import names
from shared.contacts import ContactMapper, email_key
from shared.errors import FailRun, RejectRow, RetryLater
from shared.exports import ExportDefinition, ensure_runnable
from shared.logs import mask_email
from shared.omnisend import API_LIMITS, OmnisendClient, build_contact_payload
from shared.omnisend.errors import BatchRejected, UntagNotSupported
from shared.runs import (
    RunPaths,
    check_accounting,
    derive_run_id,
    dumps,
    read_json,
    rejected_csv,
)
from shared.segments import BadRow, CsvFormat, Partition, Snapshot, discover_snapshot, read_rows
from shared.settings import Settings
from shared.state import MemberState, load_state, save_state
from shared.storage import ObjectStore

try:  # orjson is in requirements.txt; the stdlib fallback keeps a bare checkout importable
    from orjson import dumps as _encode_payload
except ImportError:  # pragma: no cover
    def _encode_payload(obj: Any) -> bytes:
        return dumps(obj)

RUNS = names.RUNS_CONTAINER
# A batch whose items fail with a retryable code (408/429/5xx per item) is re-submitted with just those items,
# at most this many attempts in all; then they count as failed and the next run retries them (they are not
# written to the state).
MAX_BATCH_ATTEMPTS = 3
# With a remote store (Blob), batch files are written by the store's ``parallel_writes`` threads while planning goes
# on, at most WRITE_AHEAD waiting in memory (100 batches of ~30 KB: a few MB).
WRITE_AHEAD = 100
# Dry-run reports show this many sample payloads (emails masked).
DRY_RUN_SAMPLES = 5

log = logging.getLogger("exporter")


@dataclass
class Context:
    """What every stage needs. Built once per process (CLI) or per function instance (Azure)."""

    settings: Settings
    state_store: ObjectStore
    source_store: ObjectStore
    client_factory: Callable[[], OmnisendClient]
    clock: Callable[[], float] = time.time
    _client: OmnisendClient | None = field(default=None, repr=False)

    @property
    def client(self) -> OmnisendClient:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    @property
    def api_version(self) -> str:
        return self.settings.omnisend_api_version


@dataclass(frozen=True)
class RunOptions:
    force: bool = False
    dry_run: bool = False
    full_resync: bool = False
    allow_mass_exit: bool = False
    trigger: str = "cli"


@dataclass(frozen=True)
class StartedRun:
    export: str
    run_id: str
    created: bool  # False: this snapshot's run already existed
    finished: bool  # a report exists
    snapshot_id: str


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    return asdict(snapshot)


def _snapshot_from_json(data: dict[str, Any]) -> Snapshot:
    return Snapshot(
        snapshot_id=data["snapshot_id"],
        columns=tuple(data["columns"]),
        partitions=tuple(Partition(**p) for p in data["partitions"]),
        csv_format=CsvFormat(**data["csv_format"]),
        description=data["description"],
        total_bytes=data["total_bytes"],
    )


# ---------------------------------------------------------------------------------------------------- start


def start_run(ctx: Context, export: ExportDefinition, options: RunOptions) -> StartedRun:
    """Find the newest snapshot and claim its run. The run id comes from export + snapshot, so a second start of
    the same snapshot (a duplicate timer fire, a re-run) finds the first run instead of starting another."""
    ensure_runnable(export)
    snapshot = discover_snapshot(ctx.source_store, export.source)
    fresh = options.force or options.full_resync or options.allow_mass_exit
    run_id = derive_run_id(export.name, snapshot.snapshot_id, ctx.clock() if fresh else None)
    paths = RunPaths(export.name, run_id)
    started = {
        "runId": run_id,
        "export": export.name,
        "snapshot": snapshot.snapshot_id,
        "startedAt": _now_iso(ctx.clock),
        "startedAtEpoch": ctx.clock(),
        "apiVersion": ctx.api_version,
        "options": asdict(options),
        "source": _snapshot_to_json(snapshot),
    }
    created = ctx.state_store.create(RUNS, paths.started, dumps(started))
    finished = (not created) and ctx.state_store.exists(RUNS, paths.report)
    log.info(
        "run start export=%s runId=%s snapshot=%s created=%s finished=%s",
        export.name, run_id, snapshot.snapshot_id, created, finished,
    )
    return StartedRun(export.name, run_id, created, finished, snapshot.snapshot_id)


def read_started(ctx: Context, export: str, run_id: str) -> dict[str, Any]:
    started = read_json(ctx.state_store, RUNS, RunPaths(export, run_id).started)
    if started is None:
        raise FailRun(f"run {run_id} of export {export!r} does not exist (no started.json)")
    return started


# ---------------------------------------------------------------------------------------------------- plan


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


class _BatchWriter:
    """Cuts planned contacts into batches under both caps (items and body bytes), writes each batch file, and
    keeps the email + fingerprint + batch of every planned contact (changes.bin) for the new state."""

    def __init__(self, ctx: Context, paths: RunPaths | None, max_items: int, max_bytes: int) -> None:
        self.ctx, self.paths = ctx, paths
        self.max_items = max_items
        # Envelope around the items: {"method":"POST","endpoint":"contacts","items":[...]}.
        self.max_bytes = max_bytes - 64
        self.bodies: list[bytes] = []
        self.rows: list[tuple[str, int, str, int]] = []
        self.size = 0
        self.count = 0
        self.sizes: list[int] = []  # rows per batch, kept in the manifest
        self._change_parts: list[bytes] = []
        # An upload waits ~10 ms on the network (10,000 batches: minutes), so remote stores get writer threads.
        # A local file takes ~0.2 ms, mostly CPU: threads there only fight the planning loop for the GIL and did
        # not make planning 1M rows any faster (25-37 s either way on the 2-core dev VM, whose speed varies).
        self._threads = getattr(ctx.state_store, "parallel_writes", 0)
        self._pool = ThreadPoolExecutor(max(1, self._threads), thread_name_prefix="batch-write")
        self._slots = threading.BoundedSemaphore(WRITE_AHEAD)
        self._writes: list[Future] = []

    def add(self, body: bytes, row: tuple[str, int, str, int]) -> None:
        if len(self.bodies) >= self.max_items or self.size + len(body) > self.max_bytes:
            self.flush()
        self.bodies.append(body)
        self.rows.append(row)
        self.size += len(body) + 1

    def flush(self) -> None:
        if not self.bodies:
            return
        self.count += 1
        n = self.count
        self.sizes.append(len(self.bodies))
        if self.paths is not None:
            data = b'{"rows":' + _encode_payload(self.rows) + b',"items":[' + b",".join(self.bodies) + b"]}"
            if self._threads:
                self._slots.acquire()
                self._writes.append(self._pool.submit(self._write, self.paths.batch(n), data))
            else:
                self.ctx.state_store.write(RUNS, self.paths.batch(n), data)
            self._change_parts.append(_change_block(n, self.rows))
        self.bodies, self.rows, self.size = [], [], 0

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.ctx.state_store.write(RUNS, name, data)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Wait for every batch file to be written; raises the first write error."""
        self._pool.shutdown(wait=True)
        for fut in self._writes:
            fut.result()
        self._writes.clear()

    def changes(self) -> bytes:
        """changes.bin: one block per batch (see _change_block)."""
        return b"".join(self._change_parts)


# changes.bin holds, per batch: uint32 batch, uint32 count, count × uint64 fingerprint, uint32 byte length, the
# emails "\n"-joined (UTF-8). Built from whole lists in C, it costs next to nothing per row; compressing it cost
# more CPU than any other step of planning, for a file read once (at finalise).
_BLOCK_HEAD = struct.Struct("<II")
_LENGTH = struct.Struct("<I")


def _change_block(batch: int, rows: list[tuple[str, int, str, int]]) -> bytes:
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


def _key_of(email: str) -> int:
    """contacts.email_key for an email that is already normalised (skips normalising it again)."""
    return int.from_bytes(blake2b(email.encode(), digest_size=8).digest(), "big")


def _plan_rows(
    ctx: Context,
    export: ExportDefinition,
    snapshot: Snapshot,
    state: MemberState,
    full_resync: bool,
    writer: _BatchWriter,
    on_reject: Callable[[dict[str, Any]], None],
    on_sample: Callable[[dict[str, Any]], None] | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[PlanCounts, array]:
    """The hot loop of planning (a million rows in seconds): locals only, no per-row allocations it can avoid."""
    counts = PlanCounts(previous_members=len(state))
    map_row = ContactMapper(export, snapshot.columns).map
    email_index = snapshot.columns.index(export.mapping["email"])
    seen: set[int] = set()
    seen_add = seen.add
    planned = array("Q")
    planned_append = planned.append
    version = ctx.api_version
    build = build_contact_payload
    add = writer.add
    previous = state.fingerprint_of if len(state) and not full_resync else None
    rows = rejected = duplicates = unchanged = to_send = 0
    dropped_fields = counts.dropped_fields
    def track(n: int) -> None:
        if progress:
            progress(rows, n)

    for row in read_rows(ctx.source_store, snapshot, progress=track if progress else None):
        rows += 1
        if row.__class__ is BadRow:
            rejected += 1
            on_reject({"bucket": "rejected", "file": row.file, "line": row.line, "email": "", "reason": row.reason})
            continue
        try:
            contact = map_row(row.file, row.line, row.fields)
        except RejectRow as exc:
            rejected += 1
            raw = row.fields[email_index] if email_index < len(row.fields) else ""
            on_reject({"bucket": "rejected", "file": row.file, "line": row.line, "email": raw, "reason": exc.reason})
            continue
        email = contact.email
        key = _key_of(email)
        if key in seen:
            duplicates += 1
            on_reject({"bucket": "duplicate", "file": row.file, "line": row.line, "email": email,
                       "reason": "duplicate email: an earlier row with the same address was exported (first wins)"})
            continue
        seen_add(key)
        planned_append(key)
        if contact.dropped:
            for name in contact.dropped:
                dropped_fields[name] += 1
        payload = build(contact, export, version)
        body = _encode_payload(payload)
        fp = int.from_bytes(blake2b(body, digest_size=8).digest(), "big")  # contacts.fingerprint, inlined
        if previous is not None and previous(key) == fp:
            unchanged += 1
            continue
        to_send += 1
        add(body, (row.file, row.line, email, fp))
        if on_sample is not None and to_send <= DRY_RUN_SAMPLES:
            on_sample(payload)
    writer.flush()
    writer.close()
    counts.rows, counts.rejected, counts.duplicates = rows, rejected, duplicates
    counts.unchanged, counts.to_send = unchanged, to_send
    counts.valid = rows - rejected - duplicates
    counts.batches = writer.count
    if len(state):
        counts.leavers = sum(1 for k in state.key_index() if k not in seen)
    return counts, planned


def plan(
    ctx: Context, export: ExportDefinition, run_id: str, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Read the snapshot, write the batches and the manifest. Idempotent: an existing manifest is returned."""
    paths = RunPaths(export.name, run_id)
    existing = read_json(ctx.state_store, RUNS, paths.manifest)
    if existing is not None:
        return existing
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])
    snapshot = _snapshot_from_json(started["source"])
    limits = API_LIMITS[ctx.api_version]
    t0 = time.perf_counter()
    state = MemberState.empty() if options.full_resync else load_state(ctx.state_store, RUNS, export.name)
    state.drop_emails()  # planning needs keys and fingerprints only; finalise reloads the emails

    rejected: list[dict[str, Any]] = []
    writer = _BatchWriter(ctx, paths, limits.max_batch_items, limits.max_body_bytes)
    with _gc_paused():
        counts, planned = _plan_rows(
            ctx, export, snapshot, state, options.full_resync, writer, rejected.append, None, progress
        )
    planned = array("Q", sorted(planned))
    ctx.state_store.write(RUNS, paths.changes, writer.changes())
    ctx.state_store.write(RUNS, paths.planned_keys, zlib.compress(planned.tobytes(), 1))
    ctx.state_store.write(RUNS, paths.plan_rejected, rejected_csv(rejected))
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
        "leavers": counts.leavers,
        "previousMembers": counts.previous_members,
        "droppedFields": dict(counts.dropped_fields),
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


def dry_run(ctx: Context, export: ExportDefinition, options: RunOptions) -> dict[str, Any]:
    """Everything a run would do, with reads only: no write request to Omnisend, nothing stored."""
    ensure_runnable(export)
    t0 = time.perf_counter()
    snapshot = discover_snapshot(ctx.source_store, export.source)
    limits = API_LIMITS[ctx.api_version]
    state = MemberState.empty() if options.full_resync else load_state(ctx.state_store, RUNS, export.name)
    state.drop_emails()
    samples: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    writer = _BatchWriter(ctx, None, limits.max_batch_items, limits.max_body_bytes)
    with _gc_paused():
        counts, _ = _plan_rows(
            ctx, export, snapshot, state, options.full_resync, writer, rejected.append,
            lambda p: samples.append(_mask_payload(p)), None,
        )
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
        "droppedFields": dict(counts.dropped_fields),
        "estimatedRequests": requests + untag_calls,
        "estimatedSeconds": round(seconds, 1),
        "requestsPerMinute": rpm,
        "samplePayloads": samples,
        "rejectedSample": rejected[:20],
        "planSeconds": round(time.perf_counter() - t0, 3),
    }


def _mask_payload(payload: dict[str, Any]) -> dict[str, Any]:
    masked = json.loads(json.dumps(payload))
    for ident in masked.get("identifiers", []):
        if ident.get("type") == "email":
            ident["id"] = mask_email(ident["id"])
        elif ident.get("type") == "phone":
            ident["id"] = ident["id"][:3] + "***"
    return masked


def _mass_exit_tripped(export: ExportDefinition, leavers: int, previous: int, allowed: bool) -> bool:
    if allowed or export.on_exit != "untag" or not export.tags or previous == 0:
        return False
    return leavers > export.max_exit_fraction * previous


# ---------------------------------------------------------------------------------------------------- send


def _load_batch(ctx: Context, paths: RunPaths, n: int) -> dict[str, Any]:
    return json.loads(ctx.state_store.read(RUNS, paths.batch(n)))


def _attempts(ctx: Context, paths: RunPaths, n: int) -> int:
    """How many attempts of batch n were submitted."""
    return sum(1 for _ in ctx.state_store.list(RUNS, paths.sent_prefix(n)))


def _requests_delta(ctx: Context, before: int) -> int:
    """Requests this thread made since ``before`` (a value of ``client.thread_requests``)."""
    return ctx.client.thread_requests - before


def send_batch(ctx: Context, export: str, run_id: str, n: int) -> str:
    """Submit batch n once. Returns "submitted", "already-sent" or "rejected" (Omnisend refused the whole batch)."""
    paths = RunPaths(export, run_id)
    if ctx.state_store.exists(RUNS, paths.result(n)) or ctx.state_store.exists(RUNS, paths.sent(n, 0)):
        return "already-sent"
    batch = _load_batch(ctx, paths, n)
    client = ctx.client
    before = client.thread_requests
    t0 = time.perf_counter()
    try:
        batch_id = client.create_batch(batch["items"])
    except BatchRejected as exc:
        failures = [_failed_row(row, exc.status, str(exc)) for row in batch["rows"]]
        _write_result(ctx, paths, n, sent=0, failed=failures, requests=_requests_delta(ctx, before), attempts=1)
        log.warning("send export=%s runId=%s batch=%d rejected status=%s", export, run_id, n, exc.status)
        return "rejected"
    marker = {"batchId": batch_id, "items": len(batch["items"]), "requests": _requests_delta(ctx, before)}
    marker["submittedAt"] = _now_iso(ctx.clock)
    ctx.state_store.create(RUNS, paths.sent(n, 0), dumps(marker))
    log.info(
        "send export=%s runId=%s batch=%d items=%d omnisendBatch=%s seconds=%.2f",
        export, run_id, n, len(batch["items"]), batch_id, time.perf_counter() - t0,
    )
    return "submitted"


def _failed_row(row: list[Any], status: int | None, message: str) -> dict[str, Any]:
    return {"file": row[0], "line": row[1], "email": row[2], "httpStatus": status, "omnisendMessage": message}


def _write_result(
    ctx: Context, paths: RunPaths, n: int, *, sent: int, failed: list[dict[str, Any]], requests: int, attempts: int
) -> bool:
    result = {"batch": n, "sent": sent, "failed": failed, "requests": requests, "attempts": attempts}
    return ctx.state_store.create(RUNS, paths.result(n), dumps(result))


def record_batch_failure(ctx: Context, export: str, run_id: str, n: int, reason: str) -> bool:
    """A batch that could not be processed (its message went to the poison queue, or retries ran out): every
    row of it counts as failed with the reason, so the run still finalises (status partial)."""
    paths = RunPaths(export, run_id)
    if ctx.state_store.exists(RUNS, paths.result(n)):
        return False
    try:
        rows = _load_batch(ctx, paths, n)["rows"]
    except Exception:  # an unreadable batch file must not stop the failure from being recorded
        # Its rows are unknown, but not their number: count each as failed so every row stays accounted for.
        sizes = (read_json(ctx.state_store, RUNS, paths.manifest) or {}).get("batchSizes") or []
        rows = [["", "", "", 0]] * (sizes[n - 1] if n <= len(sizes) else 0)
        reason = f"{reason} (batch {n}'s file is unreadable, so its rows cannot be named)"
    failures = [_failed_row(row, None, reason) for row in rows]
    created = _write_result(ctx, paths, n, sent=0, failed=failures, requests=0, attempts=0)
    log.error("batch failed export=%s runId=%s batch=%d rows=%d reason=%s", export, run_id, n, len(rows), reason)
    return created


# ---------------------------------------------------------------------------------------------------- verify


@dataclass
class VerifyOutcome:
    done: list[int] = field(default_factory=list)  # batches whose result now exists
    pending: list[int] = field(default_factory=list)  # submitted, not finished yet (or re-submitted)
    unsent: list[int] = field(default_factory=list)  # not submitted yet


def _run_listing(ctx: Context, paths: RunPaths) -> tuple[set[int], dict[int, int]]:
    """(batches with a result, batch -> number of submitted attempts), from two listings."""
    results = {int(o.name.rsplit("/", 1)[1][:5]) for o in ctx.state_store.list(RUNS, paths.results_prefix)}
    attempts: Counter = Counter()
    for o in ctx.state_store.list(RUNS, f"{paths.root}/sent/"):
        attempts[int(o.name.rsplit("/", 1)[1][:5])] += 1
    return results, dict(attempts)


def verify(ctx: Context, export: str, run_id: str, batches: list[int] | None = None) -> VerifyOutcome:
    """Check submitted batches cheaply (one list request covers up to 250), fetch items only for batches that
    report errors, re-submit retryable item failures, and write each batch's result exactly once."""
    paths = RunPaths(export, run_id)
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        raise FailRun(f"run {run_id} of {export!r} has no manifest yet: plan it first")
    done, attempts = _run_listing(ctx, paths)
    wanted = batches if batches is not None else list(range(1, manifest["batches"] + 1))
    outcome = VerifyOutcome()
    latest: dict[int, tuple[int, dict[str, Any]]] = {}
    for n in wanted:
        if n in done:
            outcome.done.append(n)
        elif n not in attempts:
            outcome.unsent.append(n)
        else:
            k = attempts[n] - 1
            marker = read_json(ctx.state_store, RUNS, paths.sent(n, k))
            if marker is None:  # listed but unreadable: a concurrent writer; look again next time
                outcome.pending.append(n)
                continue
            latest[n] = (k, marker)
    if not latest:
        return outcome
    client = ctx.client
    t0 = time.perf_counter()
    before = client.thread_requests
    statuses = client.batch_statuses([m["batchId"] for _, m in latest.values()])
    poll_requests = _requests_delta(ctx, before)
    for n, (k, marker) in sorted(latest.items()):
        status = statuses.get(marker["batchId"])
        if status is None or status.status in ("pending", "inProgress"):
            outcome.pending.append(n)
            continue
        before = client.thread_requests
        finished = _finish_attempt(ctx, export, run_id, paths, n, k, status, poll_requests, before)
        poll_requests = 0  # the shared poll is counted once, on the first batch it settled
        (outcome.done if finished else outcome.pending).append(n)
    if poll_requests:
        ctx.state_store.write(RUNS, f"{paths.root}/polls/{uuid.uuid4().hex}.json", dumps({"requests": poll_requests}))
    log.info(
        "verify export=%s runId=%s checked=%d done=%d pending=%d unsent=%d seconds=%.2f",
        export, run_id, len(latest), len(outcome.done), len(outcome.pending), len(outcome.unsent),
        time.perf_counter() - t0,
    )
    return outcome


def _finish_attempt(
    ctx: Context, export: str, run_id: str, paths: RunPaths, n: int, k: int, status: Any, poll_requests: int,
    before: int,
) -> bool:
    """Attempt k of batch n has ended. Record its failures; re-submit retryable ones or write the result."""
    client = ctx.client
    batch = _load_batch(ctx, paths, n)
    rows_by_email = {row[2]: row for row in batch["rows"]}
    failures = client.batch_failures(status.batch_id) if status.errors or status.status != "finished" else []
    failed_emails = {f.email for f in failures}
    if status.status not in ("finished",):
        # "stopped" (too many errors) or "missing" (expired/unknown): items with no error entry were not
        # confirmed either; treat them as retryable so they are re-submitted (upserts are safe to repeat).
        attempted = _attempt_emails(ctx, paths, n, k, batch)
        for email in attempted - failed_emails:
            failures.append(_Unconfirmed(email, status.status))
    retryable = [f for f in failures if f.retryable and f.email in rows_by_email]
    record = {
        "failures": [
            {"email": f.email, "code": f.response_code, "message": f.message, "retryable": f.retryable}
            for f in failures
        ],
        "requests": poll_requests + _requests_delta(ctx, before),
    }
    ctx.state_store.create(RUNS, paths.outcome(n, k), dumps(record))
    if retryable and k + 1 < MAX_BATCH_ATTEMPTS:
        emails = {f.email for f in retryable}
        items = [item for item, row in zip(batch["items"], batch["rows"], strict=True) if row[2] in emails]
        before = client.thread_requests
        try:
            batch_id = client.create_batch(items)
        except BatchRejected as exc:
            log.warning("re-submit of batch %d refused: %s", n, exc)
        else:
            marker = {"batchId": batch_id, "items": len(items), "emails": sorted(emails),
                      "requests": _requests_delta(ctx, before), "submittedAt": _now_iso(ctx.clock)}
            ctx.state_store.create(RUNS, paths.sent(n, k + 1), dumps(marker))
            log.info("verify export=%s runId=%s batch=%d resubmitted=%d attempt=%d", export, run_id, n, len(items),
                     k + 1)
            return False
    # Final: gather permanent failures of every attempt, and whatever still failed in the last one.
    final_failures: dict[str, dict[str, Any]] = {}
    for attempt in range(k + 1):
        rec = read_json(ctx.state_store, RUNS, paths.outcome(n, attempt)) or {"failures": []}
        for f in rec["failures"]:
            if f["email"] in rows_by_email and (not f["retryable"] or attempt == k):
                final_failures[f["email"]] = f
    # An email that failed retryably earlier and succeeded later is not in the last attempt's failures.
    last = {f.email for f in failures}
    final_failures = {
        e: f for e, f in final_failures.items() if not f["retryable"] or e in last
    }
    failed_rows = [
        _failed_row(rows_by_email[e], f["code"], f["message"]) for e, f in sorted(final_failures.items())
    ]
    requests = sum(
        (read_json(ctx.state_store, RUNS, paths.sent(n, a)) or {}).get("requests", 0)
        + (read_json(ctx.state_store, RUNS, paths.outcome(n, a)) or {}).get("requests", 0)
        for a in range(k + 1)
    )
    _write_result(
        ctx, paths, n, sent=len(batch["rows"]) - len(failed_rows), failed=failed_rows, requests=requests,
        attempts=k + 1,
    )
    log.info(
        "verify export=%s runId=%s batch=%d sent=%d failed=%d attempts=%d",
        export, run_id, n, len(batch["rows"]) - len(failed_rows), len(failed_rows), k + 1,
    )
    return True


@dataclass(frozen=True)
class _Unconfirmed:
    email: str
    state: str
    response_code: int = 0
    retryable: bool = True

    @property
    def message(self) -> str:
        return f"batch ended '{self.state}' before this item was confirmed"


def _attempt_emails(ctx: Context, paths: RunPaths, n: int, k: int, batch: dict[str, Any]) -> set[str]:
    marker = read_json(ctx.state_store, RUNS, paths.sent(n, k)) or {}
    emails = marker.get("emails")
    return set(emails) if emails is not None else {row[2] for row in batch["rows"]}


# ---------------------------------------------------------------------------------------------------- finalise


def finalise(ctx: Context, export: ExportDefinition, run_id: str) -> dict[str, Any] | None:
    """When every batch has a result: claim finalisation once, untag leavers, commit the new state and write
    report.json + rejected.csv. Returns the report, or None while batches are still open."""
    paths = RunPaths(export.name, run_id)
    existing = read_json(ctx.state_store, RUNS, paths.report)
    if existing is not None:
        return existing
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return None
    results_list = list(ctx.state_store.list(RUNS, paths.results_prefix))
    if len(results_list) < manifest["batches"]:
        return None
    if not ctx.state_store.create(RUNS, paths.final, dumps({"claimedAt": _now_iso(ctx.clock)})):
        return None  # another worker is finalising
    try:
        return _finalise_claimed(ctx, export, run_id, paths, manifest, results_list)
    except BaseException:
        # Give the claim back so a later call (the next verify message, a re-run) can finalise the run.
        ctx.state_store.delete(RUNS, paths.final)
        raise


def _finalise_claimed(
    ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths, manifest: dict[str, Any], results_list: list
) -> dict[str, Any]:
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])

    sent = 0
    requests = 0
    failed_rows: list[dict[str, Any]] = []
    for obj in results_list:
        result = json.loads(ctx.state_store.read(RUNS, obj.name))
        sent += result["sent"]
        requests += result["requests"]
        failed_rows.extend(result["failed"])
    for obj in ctx.state_store.list(RUNS, f"{paths.root}/polls/"):
        requests += json.loads(ctx.state_store.read(RUNS, obj.name)).get("requests", 0)

    # New membership state: unchanged contacts keep their fingerprint; sent ones get the new one; failed ones
    # are left out so the next run retries them; leavers leave (unless their untag is held or failed).
    # Even after --full-resync the previous state still tells who left the segment.
    full_previous = load_state(ctx.state_store, RUNS, export.name)
    planned = array("Q")
    planned.frombytes(zlib.decompress(ctx.state_store.read(RUNS, paths.planned_keys)))
    planned_set = set(planned)
    del planned
    changes = _read_changes(ctx.state_store.read(RUNS, paths.changes))
    failed_emails = {row["email"] for row in failed_rows}
    changed_emails = {email for email, _, _ in changes}
    entries: list[tuple[str, int]] = [(e, fp) for e, fp, _ in changes if e not in failed_emails]
    leaver_emails: list[str] = []
    for email, fp in zip(full_previous.emails, full_previous.fingerprints, strict=True):
        key = email_key(email)
        if key in planned_set:
            if email not in changed_emails:
                entries.append((email, fp))
        else:
            leaver_emails.append(email)

    status = "failed" if failed_rows and sent == 0 and manifest["toSend"] > 0 else (
        "partial" if failed_rows else "succeeded"
    )
    message = ""
    untagged = 0
    keep_leavers = False
    if leaver_emails and export.on_exit == "untag" and export.tags:
        if _mass_exit_tripped(export, len(leaver_emails), len(full_previous), options.allow_mass_exit):
            status = "held"
            keep_leavers = True
            message = (
                f"{len(leaver_emails)} of {len(full_previous)} members left the segment, more than maxExitFraction "
                f"{export.max_exit_fraction:g}: the untag step was skipped in case the snapshot is truncated. "
                f"If the segment really shrank, confirm with: python -m shared export {export.name} --allow-mass-exit "
                f'(HTTP: {{"allowMassExit": true}})'
            )
        else:
            before = ctx.client.thread_requests
            try:
                ctx.client.untag(leaver_emails, list(export.tags))
                untagged = len(leaver_emails)
            except UntagNotSupported:
                message = (
                    f"API v3 has no untag endpoint: {len(leaver_emails)} leavers keep the tag(s) "
                    f"{', '.join(export.tags)} in Omnisend; they are counted as leavers only"
                )
            except RetryLater as exc:
                keep_leavers = True
                status = "partial"
                message = f"untagging {len(leaver_emails)} leavers failed ({exc}); the next run tries again"
            requests += ctx.client.thread_requests - before
    if keep_leavers:
        leaver_set = set(leaver_emails)
        entries.extend((e, fp) for e, fp in zip(full_previous.emails, full_previous.fingerprints, strict=True)
                       if e in leaver_set)
    state_bytes = save_state(ctx.state_store, RUNS, export.name, entries)

    plan_rejected = ctx.state_store.read(RUNS, paths.plan_rejected).decode("utf-8")
    failed_csv = rejected_csv([{**row, "bucket": "failed", "reason": "Omnisend refused the contact"}
                               for row in failed_rows]).decode("utf-8")
    body = plan_rejected + "".join(failed_csv.splitlines(keepends=True)[1:])
    ctx.state_store.write(RUNS, paths.rejected, body.encode("utf-8"))

    now = ctx.clock()
    report = {
        "runId": run_id,
        "export": export.name,
        "snapshot": manifest["snapshot"],
        "status": status,
        "message": message,
        "apiVersion": manifest["apiVersion"],
        "rows": manifest["rows"],
        "valid": manifest["valid"],
        "rejected": manifest["rejected"],
        "duplicates": manifest["duplicates"],
        "unchanged": manifest["unchanged"],
        "sent": sent,
        "failed": len(failed_rows),
        "leavers": len(leaver_emails),
        "untagged": untagged,
        "batches": manifest["batches"],
        "requests": requests,
        "droppedFields": manifest["droppedFields"],
        "stateMembers": len(entries),
        "stateBytes": state_bytes,
        "startedAt": started["startedAt"],
        "finishedAt": _now_iso(lambda: now),
        "durationSeconds": round(now - started["startedAtEpoch"], 3),
        "trigger": options.trigger,
        "rejectedCsv": ctx.state_store.describe(RUNS, paths.rejected),
    }
    check_accounting(report)
    ctx.state_store.write(RUNS, paths.report, dumps(report))
    log.info(
        "finalise export=%s runId=%s status=%s rows=%d sent=%d failed=%d rejected=%d duplicates=%d unchanged=%d "
        "leavers=%d untagged=%d requests=%d",
        export.name, run_id, status, report["rows"], sent, len(failed_rows), report["rejected"],
        report["duplicates"], report["unchanged"], len(leaver_emails), untagged, requests,
    )
    return report


def fail_run(ctx: Context, export: str, run_id: str, error: Exception) -> dict[str, Any]:
    """Record why a run cannot go on (bad key, unreadable snapshot) so its status says so. It is not a report:
    starting the same run again (after fixing the key, say) resumes it where it stopped."""
    paths = RunPaths(export, run_id)
    failure = {"runId": run_id, "export": export, "status": "failed", "message": str(error),
               "error": type(error).__name__, "failedAt": _now_iso(ctx.clock)}
    ctx.state_store.write(RUNS, paths.failure, dumps(failure))
    return failure


# ---------------------------------------------------------------------------------------------------- status


def run_status(ctx: Context, export: str, run_id: str) -> dict[str, Any] | None:
    """Stage, counts, progress and ETA of a run; the report once it is finished."""
    paths = RunPaths(export, run_id)
    started = read_json(ctx.state_store, RUNS, paths.started)
    if started is None:
        return None
    report = read_json(ctx.state_store, RUNS, paths.report)
    if report is not None:
        return {"runId": run_id, "export": export, "stage": "finished", "status": report["status"], "report": report}
    failure = read_json(ctx.state_store, RUNS, paths.failure)
    if failure is not None:
        return {**failure, "stage": "stopped", "hint": "fix the cause, then start the run again to resume it"}
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return {"runId": run_id, "export": export, "stage": "planning", "startedAt": started["startedAt"]}
    done, attempts = _run_listing(ctx, paths)
    total = manifest["batches"]
    remaining = total - len(done)
    rpm = ctx.settings.omnisend_requests_per_minute
    return {
        "runId": run_id,
        "export": export,
        "stage": "sending" if len(attempts) < total else "verifying",
        "startedAt": started["startedAt"],
        "batches": total,
        "batchesSubmitted": len(attempts),
        "batchesDone": len(done),
        "progress": round(len(done) / total, 4) if total else 1.0,
        "etaSeconds": round(remaining * 60.0 / rpm, 1),
        "counts": {k: manifest[k] for k in ("rows", "valid", "rejected", "duplicates", "unchanged", "toSend")},
    }


def list_runs(ctx: Context, export: str) -> list[dict[str, Any]]:
    """Runs of an export, newest first, with status."""
    runs = []
    for obj in ctx.state_store.list(RUNS, f"{export}/runs/"):
        if obj.name.endswith("/started.json"):
            started = json.loads(ctx.state_store.read(RUNS, obj.name))
            paths = RunPaths(export, started["runId"])
            report = read_json(ctx.state_store, RUNS, paths.report)
            stopped = report is None and ctx.state_store.exists(RUNS, paths.failure)
            runs.append({
                "runId": started["runId"],
                "snapshot": started["snapshot"],
                "startedAt": started["startedAt"],
                "status": report["status"] if report else "failed" if stopped else "running",
                "sent": report.get("sent") if report else None,
                "failed": report.get("failed") if report else None,
            })
    runs.sort(key=lambda r: r["startedAt"], reverse=True)
    return runs


__all__ = [
    "Context",
    "RunOptions",
    "StartedRun",
    "dry_run",
    "fail_run",
    "finalise",
    "list_runs",
    "plan",
    "record_batch_failure",
    "run_status",
    "send_batch",
    "start_run",
    "verify",
]
