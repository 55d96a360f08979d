"""Sending: submit a planned batch once; record a batch that could not be processed."""

from __future__ import annotations

import json
import time
from typing import Any

from shared.omnisend.errors import BatchRejected
from shared.pipeline.context import RUNS, Context, _now_iso, log
from shared.runs import (
    RunPaths,
    dumps,
    read_json,
)

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


