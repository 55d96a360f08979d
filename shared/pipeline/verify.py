"""Verifying: check submitted batches, re-submit retryable item failures, write each result once."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.errors import FailRun
from shared.omnisend.errors import BatchRejected
from shared.pipeline.context import RUNS, Context, _now_iso, log
from shared.pipeline.send import _failed_row, _load_batch, _requests_delta, _write_result
from shared.runs import (
    RunPaths,
    dumps,
    read_json,
)

# A batch whose items fail with a retryable code (408/429/5xx per item) is re-submitted with just those items,
# at most this many attempts in all; then they count as failed and the next run retries them (they are not
# written to the state).
MAX_BATCH_ATTEMPTS = 3


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


