"""Verifying: check submitted batches, re-submit retryable item failures, write each result once.

A batch is settled only by what happened to *it*: its own attempts' answers from Omnisend, and time counted from its
own submission. What cannot be known ends *unconfirmed* (never "sent", never "failed"): kept out of the state, so
the next run sends it again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.errors import FailRun
from shared.omnisend.client import MISSING_STATUS, BatchItems, ItemFailure
from shared.omnisend.errors import BatchRejected
from shared.pipeline.context import RUNS, Context, _now_iso, log
from shared.pipeline.send import RequestTally, _failed_row, _load_batch, _write_result
from shared.runs import (
    RunPaths,
    dumps,
    read_json,
)

# A batch whose items fail with a retryable code (408/429/5xx per item), or whose items could not be confirmed
# (Omnisend forgot the batch: 404; failures it did not map to items), is re-submitted with just those items, at most
# this many attempts in all; then they count as failed (a retryable code) or unconfirmed, and the next run sends
# them again (they are not written to the state).
MAX_BATCH_ATTEMPTS = 3
# Omnisend finishes a batch within seconds to minutes. One still pending or in progress this long after its own
# submission is given up as unconfirmed, so the run can finish; the next run sends its contacts again.
VERIFY_CONFIRM_SECONDS = 60 * 60


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


def verify(ctx: Context, export: str, run_id: str, batches: list[int] | None = None, *,
           confirm_within: float = VERIFY_CONFIRM_SECONDS) -> VerifyOutcome:
    """Check submitted batches cheaply (one list request covers up to 250), fetch items only for batches that
    report errors, re-submit retryable item failures, and write each batch's result exactly once. A batch still
    unfinished ``confirm_within`` seconds after its latest submission is settled as unconfirmed."""
    paths = RunPaths(export, run_id)
    tally = RequestTally(ctx)
    try:
        return _verify(ctx, export, run_id, paths, batches, confirm_within, tally)
    finally:
        tally.record(paths, "verify")


def _verify(ctx: Context, export: str, run_id: str, paths: RunPaths, batches: list[int] | None,
            confirm_within: float, tally: RequestTally) -> VerifyOutcome:
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
    statuses = client.batch_statuses([m["batchId"] for _, m in latest.values()])
    for n, (k, marker) in sorted(latest.items()):
        status = statuses.get(marker["batchId"])
        if status is None or status.status in ("pending", "inProgress"):
            submitted = marker.get("submittedAtEpoch")
            if submitted is not None and ctx.clock() - float(submitted) > confirm_within:
                _finish_attempt(ctx, export, run_id, paths, n, k, None, tally, gave_up=True)
                outcome.done.append(n)
            else:
                outcome.pending.append(n)
            continue
        finished = _finish_attempt(ctx, export, run_id, paths, n, k, status, tally)
        (outcome.done if finished else outcome.pending).append(n)
    log.info(
        "verify export=%s runId=%s checked=%d done=%d pending=%d unsent=%d seconds=%.2f",
        export, run_id, len(latest), len(outcome.done), len(outcome.pending), len(outcome.unsent),
        time.perf_counter() - t0,
    )
    return outcome


@dataclass(frozen=True)
class _Unconfirmed:
    """An item whose fate Omnisend did not tell: re-submitted while attempts remain, then reported unconfirmed."""

    email: str
    why: str
    response_code: int = 0
    retryable: bool = True
    unconfirmed: bool = True

    @property
    def message(self) -> str:
        return self.why


def _attempt_rows(ctx: Context, paths: RunPaths, n: int, k: int, batch: dict[str, Any]) -> list[list[Any]]:
    """The rows attempt k of batch n submitted, in the order of its items (attempt 0: the whole batch)."""
    marker = read_json(ctx.state_store, RUNS, paths.sent(n, k)) or {}
    emails = marker.get("emails")
    if emails is None:
        return list(batch["rows"])
    wanted = set(emails)
    return [row for row in batch["rows"] if row[2] in wanted]


def _map_items(items: BatchItems, rows: list[list[Any]], state: str) -> list[Any]:
    """Failures of one attempt, each mapped to a row by its email, else by its position in the attempt. If fewer
    failures map than Omnisend's errorsCount, the rows neither mapped to a failure nor confirmed by an echoed
    success are unconfirmed: never counted as sent."""
    emails = {row[2] for row in rows}
    mapped: dict[str, Any] = {}
    for f in items.failures:
        email = f.email if f.email in emails else None
        if email is None and f.position is not None and f.position < len(rows):
            email = rows[f.position][2]
        if email is not None and email not in mapped:
            mapped[email] = ItemFailure(email, f.response_code, f.message, f.retryable, f.position)
    out = list(mapped.values())
    if len(mapped) < items.errors_count or state != "finished":
        confirmed = set()
        for email, position in items.succeeded:
            if email in emails:
                confirmed.add(email)
            elif position is not None and position < len(rows):
                confirmed.add(rows[position][2])
        if len(mapped) < items.errors_count:
            why = (f"Omnisend reported {items.errors_count} failed item(s) in the batch but named only {len(mapped)}; "
                   "this contact's result is not known")
        else:
            why = f"the batch ended '{state}' before this contact was confirmed"
        out += [_Unconfirmed(row[2], why) for row in rows if row[2] not in mapped and row[2] not in confirmed]
    return out


def _finish_attempt(
    ctx: Context, export: str, run_id: str, paths: RunPaths, n: int, k: int, status: Any, tally: RequestTally, *,
    gave_up: bool = False,
) -> bool:
    """Attempt k of batch n has ended (or was given up). Record its failures; re-submit retryable ones or write the
    result."""
    client = ctx.client
    batch = _load_batch(ctx, paths, n)
    rows_by_email = {row[2]: row for row in batch["rows"]}
    attempt_rows = _attempt_rows(ctx, paths, n, k, batch)
    failures: list[Any]
    if gave_up:
        why = (f"Omnisend had not finished the batch {VERIFY_CONFIRM_SECONDS // 60} minutes after it was submitted; "
               "it may still apply it")
        failures = [_Unconfirmed(row[2], why) for row in attempt_rows]
    elif status.status == MISSING_STATUS:
        failures = [_Unconfirmed(row[2], "Omnisend no longer knows the batch (404): not delivered as far as known")
                    for row in attempt_rows]
    elif status.errors or status.status != "finished":
        items = client.batch_items(status.batch_id)
        if items is None:
            failures = [_Unconfirmed(row[2], "Omnisend no longer knows the batch (404 on its items)")
                        for row in attempt_rows]
        else:
            failures = _map_items(items, attempt_rows, status.status)
    else:
        failures = []
    retryable = [f for f in failures if f.retryable and f.email in rows_by_email]
    record = {
        "failures": [
            {"email": f.email, "code": f.response_code, "message": f.message, "retryable": f.retryable,
             "unconfirmed": getattr(f, "unconfirmed", False)}
            for f in failures
        ],
    }
    ctx.state_store.create(RUNS, paths.outcome(n, k), dumps(record))
    if retryable and k + 1 < MAX_BATCH_ATTEMPTS and not gave_up:
        emails = {f.email for f in retryable}
        items_ = [item for item, row in zip(batch["items"], batch["rows"], strict=True) if row[2] in emails]
        try:
            batch_id = client.create_batch(items_)
        except BatchRejected as exc:
            log.warning("re-submit of batch %d refused: %s", n, exc)
        else:
            marker = {"batchId": batch_id, "items": len(items_), "emails": sorted(emails),
                      "submittedAt": _now_iso(ctx.clock), "submittedAtEpoch": ctx.clock(), "requests": tally.take()}
            if not ctx.state_store.create(RUNS, paths.sent(n, k + 1), dumps(marker)):
                tally.give_back(marker["requests"])
            log.info("verify export=%s runId=%s batch=%d resubmitted=%d attempt=%d", export, run_id, n, len(items_),
                     k + 1)
            return False
    # Final: gather permanent failures of every attempt, and whatever is still open after the last one.
    final: dict[str, dict[str, Any]] = {}
    for attempt in range(k + 1):
        rec = read_json(ctx.state_store, RUNS, paths.outcome(n, attempt)) or {"failures": []}
        for f in rec["failures"]:
            if f["email"] in rows_by_email and (not f["retryable"] or attempt == k):
                final[f["email"]] = f
    # An email that failed retryably earlier and succeeded later is not in the last attempt's failures.
    last = {f.email for f in failures}
    final = {e: f for e, f in final.items() if not f["retryable"] or e in last}
    failed_rows = [_failed_row(rows_by_email[e], f["code"], f["message"])
                   for e, f in sorted(final.items()) if not f.get("unconfirmed")]
    unconfirmed_rows = [_failed_row(rows_by_email[e], None, f["message"])
                        for e, f in sorted(final.items()) if f.get("unconfirmed")]
    sent = len(batch["rows"]) - len(failed_rows) - len(unconfirmed_rows)
    _write_result(ctx, paths, n, sent=sent, failed=failed_rows, unconfirmed=unconfirmed_rows, attempts=k + 1)
    log.info(
        "verify export=%s runId=%s batch=%d sent=%d failed=%d unconfirmed=%d attempts=%d",
        export, run_id, n, sent, len(failed_rows), len(unconfirmed_rows), k + 1,
    )
    return True
