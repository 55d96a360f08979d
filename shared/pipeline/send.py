"""Sending: submit a planned batch once; record a batch that could not be processed.

A send claims its batch before POSTing, so two deliveries of the same message at the same moment POST it once:

    claims/<n>.g<k>.json   created if absent (generation k) with an expiry; the creator may POST batch n
    sent/<n>.a0.json       written after the POST: Omnisend's batchID (the claim's job is done)

A twin that finds a live claim returns "claimed-elsewhere" (the Functions orchestrator re-queues its message with a
delay; by then the marker exists and it ends as "already-sent"). A claim outlives ``functionTimeout``, so a live
holder is never overtaken; an expired one means its holder died. Whoever creates the next generation takes it over
and first looks for the dead holder's batch among the batches Omnisend created since the claim (same item count,
the same emails echoed by GET /batches/{id}/items); found → adopted, no POST. When that cannot be told (the batch
still pending with no items to compare, more candidates than we check, no echo), it POSTs again: the effect is
bounded to one more upsert of the same contacts per takeover (Omnisend applies upserts by email; contacts end the
same), and it is logged as such.

Those adoption reads need request slots of the brand's budget (shared/budget.py) beyond the one a send message is
released for. A takeover never takes them at request time (the side lane may be busy for longer than an invocation
may wait, and re-queuing for it would repeat for ever): a delivery released for one slot that finds it must take
over gives the claim back at once, before any request, and raises ``TakeoverNeedsSlots``; the orchestrator
re-queues the message released for ``TAKEOVER_SLOTS`` consecutive send-lane slots, which pay for every read and the
POST.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.batch_store import read_batch
from shared.budget import BudgetBusy
from shared.omnisend.errors import BatchRejected
from shared.pipeline.context import RUNS, Context, _now_iso, log
from shared.runs import (
    RunPaths,
    batch_label,
    dumps,
    read_json,
)

# A claim must outlive any invocation that holds it: host.json functionTimeout is 10 minutes, plus a minute of margin
# for clock differences between instances. An expired claim means its holder died; it is then taken over.
SEND_CLAIM_SECONDS = 11 * 60
# Detecting a dead holder's POST: batches Omnisend created since (claim time - this) are candidates. Covers clock
# difference between our instances and Omnisend's createdAt.
CLAIM_CLOCK_SKEW_SECONDS = 120
# At most this many list pages (250 batches each) and candidate item reads per takeover: takeovers are rare (an
# instance died mid-send), and past these bounds a duplicate upsert is cheaper than the reads.
DETECT_MAX_LIST_PAGES = 2
DETECT_MAX_CANDIDATES = 5
# Every request a takeover may make: the list pages, one item read per candidate, and the POST. A takeover's message
# is released for this many send-lane slots at once, so it never waits for a slot inside its invocation.
TAKEOVER_SLOTS = DETECT_MAX_LIST_PAGES + DETECT_MAX_CANDIDATES + 1


class TakeoverNeedsSlots(BudgetBusy):
    """This send must take over a dead holder's claim, but its message was released for one request slot, not the
    ``TAKEOVER_SLOTS`` the adoption reads and the POST need. Nothing was asked of Omnisend and the claim was given
    back: send the message again released for ``TAKEOVER_SLOTS`` slots."""

# ---------------------------------------------------------------------------------------------------- send


def _load_batch(ctx: Context, paths: RunPaths, n: int) -> dict[str, Any]:
    return read_batch(ctx.state_store, paths, n)  # one ranged read of its segment (shared/batch_store.py)


def _attempts(ctx: Context, paths: RunPaths, n: int) -> int:
    """How many attempts of batch n were submitted."""
    return sum(1 for _ in ctx.state_store.list(RUNS, paths.sent_prefix(n)))


def record_requests(ctx: Context, paths: RunPaths, stage: str, requests: int) -> None:
    """Persist requests of one invocation in a file of its own (created once, never overwritten)."""
    if requests > 0:
        name = f"{paths.root}/requests/{stage}-{uuid.uuid4().hex}.json"
        ctx.state_store.create(RUNS, name, dumps({"stage": stage, "requests": requests}))


class RequestTally:
    """Every request one invocation makes is counted exactly once in the run's report: in a record it creates (a sent
    marker, which the batch's result sums; a result) when there is one, else in a requests/ file written at the end,
    also when the invocation raises. So the common path adds no file, and retries, twins' POSTs and failed
    invocations are still counted."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.before = ctx.client.thread_requests
        self.covered = 0

    def take(self) -> int:
        """Requests made so far and not yet covered, now counted as covered (put them in the record being made)."""
        n = self.ctx.client.thread_requests - self.before - self.covered
        self.covered += n
        return n

    def give_back(self, n: int) -> None:
        """The record that was to hold ``n`` requests was not created (it existed): count them elsewhere."""
        self.covered -= n

    def record(self, paths: RunPaths, stage: str) -> None:
        record_requests(self.ctx, paths, stage, self.take())


def marker_requests(ctx: Context, paths: RunPaths, n: int) -> int:
    """Requests recorded in batch n's sent markers (attempts 0, 1, ... until one is missing): what its POSTs cost,
    summed into its result. Read one by one rather than listed: a listing of a big run's folder per batch would
    make a run quadratic in its batches."""
    total, attempt = 0, 0
    while (marker := read_json(ctx.state_store, RUNS, paths.sent(n, attempt))) is not None:
        total += marker.get("requests", 0)
        attempt += 1
    return total


@dataclass(frozen=True)
class Claim:
    won: bool
    generation: int
    taken_over: dict[str, Any] | None = None  # the expired claim this one replaced


def claim_path(paths: RunPaths, n: int, generation: int) -> str:
    return f"{paths.root}/claims/{batch_label(n)}.g{generation}.json"


def claim_exists(ctx: Context, paths: RunPaths, n: int) -> bool:
    return any(True for _ in ctx.state_store.list(RUNS, f"{paths.root}/claims/{batch_label(n)}.g"))


def claim_expired(ctx: Context, paths: RunPaths, n: int) -> bool:
    """Batch n's newest claim has expired (its holder died): the next send of it takes the claim over."""
    prefix = f"{paths.root}/claims/{batch_label(n)}.g"
    generations = sorted(int(o.name[len(prefix):].split(".", 1)[0]) for o in ctx.state_store.list(RUNS, prefix))
    newest = read_json(ctx.state_store, RUNS, claim_path(paths, n, generations[-1])) if generations else None
    return newest is not None and newest.get("expiresAt", 0) <= ctx.clock()


def claim_batch(ctx: Context, paths: RunPaths, n: int, *, sole_sender: bool = False) -> Claim:
    """Claim batch n for sending: create the next claim generation if the newest one expired (or none exists).
    ``sole_sender``: the caller knows no other process sends this run (the CLI, one process per run), so a claim
    left by an earlier process is taken over at once instead of after its expiry."""
    first = _create_claim(ctx, paths, n, 0, None)
    if first.won:  # the common case: nobody claimed it before; no listing
        return first
    prefix = f"{paths.root}/claims/{batch_label(n)}.g"
    generations = sorted(int(o.name[len(prefix):].split(".", 1)[0]) for o in ctx.state_store.list(RUNS, prefix))
    previous = None
    if generations:
        newest = generations[-1]
        previous = read_json(ctx.state_store, RUNS, claim_path(paths, n, newest))
        if previous is None:  # given back (deleted) between the listing and the read: claim its generation
            return _create_claim(ctx, paths, n, newest, None)
        if not sole_sender and previous.get("expiresAt", 0) > ctx.clock():
            return Claim(False, newest)
        generation = newest + 1
    else:
        generation = 0
    return _create_claim(ctx, paths, n, generation, previous)


def _create_claim(ctx: Context, paths: RunPaths, n: int, generation: int, previous: dict[str, Any] | None) -> Claim:
    now = ctx.clock()
    body = {"claimedAt": now, "expiresAt": now + SEND_CLAIM_SECONDS, "holder": uuid.uuid4().hex}
    if not ctx.state_store.create(RUNS, claim_path(paths, n, generation), dumps(body)):
        return Claim(False, generation)  # a twin took this generation a moment before us
    return Claim(True, generation, previous)


def send_batch(ctx: Context, export: str, run_id: str, n: int, *, sole_sender: bool = False,
               takeover_paid: bool = True) -> str:
    """Submit batch n once. Returns "submitted", "already-sent", "claimed-elsewhere" (a twin holds the claim: look
    again later) or "rejected" (Omnisend refused the whole batch). ``takeover_paid``: False when this delivery's
    requests were paid for one slot only (the Functions app's budget): a takeover then raises
    ``TakeoverNeedsSlots`` before any request instead of starving on the budget (see the module docstring)."""
    paths = RunPaths(export, run_id)
    if _already_sent(ctx, paths, n):
        return "already-sent"
    batch = _load_batch(ctx, paths, n)  # before claiming: an unreadable batch never leaves a claim behind
    claim = claim_batch(ctx, paths, n, sole_sender=sole_sender)
    if not claim.won:
        log.info("send export=%s runId=%s batch=%d claimed elsewhere (generation %d)", export, run_id, n,
                 claim.generation)
        return "claimed-elsewhere"
    if _already_sent(ctx, paths, n):  # the holder we replaced finished just before we claimed
        return "already-sent"
    tally = RequestTally(ctx)
    try:
        if claim.taken_over is not None and not takeover_paid:
            raise TakeoverNeedsSlots(f"batch {n}: taking over an expired claim needs {TAKEOVER_SLOTS} request slots")
        return _send_claimed(ctx, paths, n, batch, claim, tally)
    except BaseException:
        # The POST did not succeed (or its answer was lost): give the claim back so the retry of this message
        # need not wait for it to expire. A POST whose answer was lost may have been applied; the retry re-applies
        # the same upserts, as the client's own retries already may (OmnisendClient.create_batch).
        ctx.state_store.delete(RUNS, claim_path(paths, n, claim.generation))
        raise
    finally:
        tally.record(paths, "send")


def _already_sent(ctx: Context, paths: RunPaths, n: int) -> bool:
    return ctx.state_store.exists(RUNS, paths.result(n)) or ctx.state_store.exists(RUNS, paths.sent(n, 0))


def _send_claimed(ctx: Context, paths: RunPaths, n: int, batch: dict[str, Any], claim: Claim,
                  tally: RequestTally) -> str:
    export, run_id = paths.export, paths.run_id
    client = ctx.client
    t0 = time.perf_counter()
    adopted = None
    if claim.taken_over is not None:
        adopted = _find_posted(ctx, batch, float(claim.taken_over.get("claimedAt") or 0))
        log.warning(
            "send export=%s runId=%s batch=%d took over an expired claim; %s", export, run_id, n,
            f"adopting Omnisend batch {adopted} its holder created" if adopted
            else "no batch of its holder found: sending (at worst one more upsert of the same contacts)",
        )
    if adopted is not None:
        batch_id = adopted
    else:
        try:
            batch_id = client.create_batch(batch["items"])
        except BatchRejected as exc:
            failures = [_failed_row(row, exc.status, str(exc)) for row in batch["rows"]]
            taken = tally.take()
            if not _write_result(ctx, paths, n, sent=0, failed=failures, attempts=1, requests=taken):
                tally.give_back(taken)
            log.warning("send export=%s runId=%s batch=%d rejected status=%s", export, run_id, n, exc.status)
            return "rejected"
    marker = {"batchId": batch_id, "items": len(batch["items"]), "submittedAt": _now_iso(ctx.clock),
              "submittedAtEpoch": ctx.clock()}
    if adopted is not None:
        marker["adopted"] = True
    marker["requests"] = tally.take()
    if not ctx.state_store.create(RUNS, paths.sent(n, 0), dumps(marker)):
        tally.give_back(marker["requests"])
    log.info(
        "send export=%s runId=%s batch=%d items=%d omnisendBatch=%s seconds=%.2f",
        export, run_id, n, len(batch["items"]), batch_id, time.perf_counter() - t0,
    )
    return "submitted"


def _find_posted(ctx: Context, batch: dict[str, Any], claimed_at: float) -> str | None:
    """The id of a batch Omnisend created since ``claimed_at`` holding exactly this batch's emails, or None when
    none is found or it cannot be told (see the module docstring)."""
    client = ctx.client
    emails = {row[2] for row in batch["rows"]}
    candidates = [
        b for b in client.recent_batches(claimed_at - CLAIM_CLOCK_SKEW_SECONDS, DETECT_MAX_LIST_PAGES)
        if b.total == len(batch["items"])
    ]
    for candidate in candidates[:DETECT_MAX_CANDIDATES]:
        items = client.batch_items(candidate.batch_id)
        if items is None:
            continue
        echoed = {e for e, _ in items.succeeded if e} | {f.email for f in items.failures if f.email}
        if echoed and echoed == emails:
            return candidate.batch_id
    return None


def _failed_row(row: list[Any], status: int | None, message: str) -> dict[str, Any]:
    return {"file": row[0], "line": row[1], "email": row[2], "httpStatus": status, "omnisendMessage": message}


def _write_result(
    ctx: Context, paths: RunPaths, n: int, *, sent: int, failed: list[dict[str, Any]], attempts: int,
    unconfirmed: list[dict[str, Any]] | None = None, requests: int = 0,
) -> bool:
    """Write batch n's result once, with the requests its sent markers recorded (plus ``requests``)."""
    requests += marker_requests(ctx, paths, n)
    result = {"batch": n, "sent": sent, "failed": failed, "unconfirmed": unconfirmed or [], "attempts": attempts,
              "requests": requests}
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
    created = _write_result(ctx, paths, n, sent=0, failed=failures, attempts=0)
    log.error("batch failed export=%s runId=%s batch=%d rows=%d reason=%s", export, run_id, n, len(rows), reason)
    return created


def record_batch_unconfirmed(ctx: Context, export: str, run_id: str, n: int, reason: str) -> bool:
    """Batch n's fate is unknown (its verification kept crashing, or it was never confirmed): every row of it not
    settled yet counts as unconfirmed, never as sent or failed, and stays out of the state so the next run sends
    it again. Nothing if its result exists already."""
    paths = RunPaths(export, run_id)
    if ctx.state_store.exists(RUNS, paths.result(n)):
        return False
    try:
        rows = _load_batch(ctx, paths, n)["rows"]
    except Exception:  # as in record_batch_failure: keep every row accounted for even if the file is unreadable
        sizes = (read_json(ctx.state_store, RUNS, paths.manifest) or {}).get("batchSizes") or []
        rows = [["", "", "", 0]] * (sizes[n - 1] if n <= len(sizes) else 0)
    submitted = ctx.state_store.exists(RUNS, paths.sent(n, 0))
    known = "submitted to Omnisend, not confirmed" if submitted else "no submission recorded"
    unconfirmed = [_failed_row(row, None, f"{known}: {reason}") for row in rows]
    created = _write_result(ctx, paths, n, sent=0, failed=[], unconfirmed=unconfirmed, attempts=0)
    log.error("batch unconfirmed export=%s runId=%s batch=%d rows=%d reason=%s", export, run_id, n, len(rows), reason)
    return created


