"""The local orchestrator: runs plan → send → verify → finalise in this process with a small thread pool.

The Azure Functions app drives the same stages through queues; nothing here is needed there.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from shared import pipeline
from shared.errors import FailRun, RetryLater
from shared.exports import ExportDefinition
from shared.names import RUNS_CONTAINER
from shared.progress import Progress
from shared.runs import RunPaths

log = logging.getLogger("exporter")

# At 400 requests/min the pacer hands out a slot every 150 ms, and a POST /batches takes roughly 100-500 ms:
# four requests in flight keep every slot used without queueing many threads behind the pacer.
SEND_WORKERS = 4
# One batch-list request covers up to 250 batches, so polling once at least 200 batches wait keeps verification
# near 1/200 of a request per batch (the target is ≤ 1.03 requests per batch in all).
POLL_MIN_PENDING = 200
# Once everything is submitted, how often to poll the batches still open.
POLL_INTERVAL_SECONDS = 1.0
# After the client's own retries gave up on a batch (RetryLater), wait this long and try again, this many times;
# then the batch counts as failed (its rows in rejected.csv) so the run still finishes.
SEND_ROUNDS = 3
SEND_ROUND_PAUSE_SECONDS = 30.0
# Consecutive failed polls before the open batches are given up as "could not confirm".
VERIFY_GIVE_UP_ROUNDS = 20


def run_export(
    ctx: pipeline.Context,
    export: ExportDefinition,
    options: pipeline.RunOptions,
    progress: Progress | None = None,
    sleep=time.sleep,
) -> dict[str, Any]:
    progress = progress or Progress(enabled=False)
    if options.dry_run:
        return pipeline.dry_run(ctx, export, options)
    started = pipeline.start_run(ctx, export, options)
    if started.finished:
        report = pipeline.run_status(ctx, export.name, started.run_id)["report"]
        progress.note(
            f"snapshot {started.snapshot_id} was already exported by run {started.run_id} "
            f"(status {report['status']}); use --force to export it again"
        )
        return {**report, "alreadyExported": True}
    if not started.created:
        progress.note(f"resuming run {started.run_id}: batches already confirmed are not sent again")
        # It may have stopped (bad key, unreadable snapshot): it is running again.
        ctx.state_store.delete(RUNS_CONTAINER, RunPaths(export.name, started.run_id).failure)
    try:
        manifest = pipeline.plan(
            ctx, export, started.run_id,
            progress=lambda rows, nbytes: progress.planning(rows, nbytes),
        )
        progress.note(
            f"planned {manifest['rows']:,} rows: {manifest['toSend']:,} to send in {manifest['batches']:,} batches, "
            f"{manifest['unchanged']:,} unchanged, {manifest['rejected']:,} rejected, "
            f"{manifest['duplicates']:,} duplicates ({manifest['planSeconds']:.1f}s)"
        )
        sending = _send_and_verify(ctx, export.name, started.run_id, manifest["batches"], progress, sleep)
        report = pipeline.finalise(ctx, export, started.run_id)
    except FailRun as exc:
        pipeline.fail_run(ctx, export.name, started.run_id, exc)
        raise
    finally:
        progress.close()
    if report is None:  # pragma: no cover - every batch has a result by now
        raise FailRun(f"run {started.run_id} did not finish; run the same command again to resume it")
    return {**report, "sending": sending}


def _send_and_verify(ctx, export: str, run_id: str, total: int, progress: Progress, sleep) -> dict[str, Any]:
    """Submit every unsent batch and poll until each has a result. Returns how the sending phase used the
    budget: seconds from the first to the last submission and the requests made in between (polls included)."""
    paths = RunPaths(export, run_id)
    done, attempts = pipeline._run_listing(ctx, paths)
    pending = {n for n in attempts if n not in done}
    to_send = [n for n in range(1, total + 1) if n not in done and n not in attempts]
    rpm = ctx.settings.omnisend_requests_per_minute
    t0 = time.monotonic()
    requests0 = ctx.client.requests_made if to_send or pending else 0
    failed_polls = 0

    def show(force: bool = False) -> None:
        progress.sending(len(done), len(done) + len(pending), total,
                         ctx.client.requests_made - requests0, t0, rpm, force)

    sending: dict[str, Any] = {"seconds": 0.0, "requests": 0, "batches": len(to_send)}
    send_t0, send_r0 = time.perf_counter(), ctx.client.requests_made if to_send else 0

    def sending_ended() -> None:
        """Record the sending phase once, when the last submission is done."""
        if to_send and not sending["seconds"]:
            sending["seconds"] = time.perf_counter() - send_t0
            sending["requests"] = ctx.client.requests_made - send_r0
    with ThreadPoolExecutor(SEND_WORKERS, thread_name_prefix="send") as pool:
        futures: dict[Future, int] = {pool.submit(_send_one, ctx, export, run_id, n, sleep): n for n in to_send}
        while futures or pending:
            if not futures:
                sending_ended()
            if futures:
                finished, _ = wait(list(futures), timeout=POLL_INTERVAL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = futures.pop(fut)
                    outcome = fut.result()  # FailRun (bad key) propagates and ends the run
                    if outcome == "submitted" or outcome == "already-sent":
                        pending.add(n)
                    else:
                        done.add(n)
            elif pending:
                sleep(POLL_INTERVAL_SECONDS)
            if pending and (len(pending) >= POLL_MIN_PENDING or not futures):
                try:
                    result = pipeline.verify(ctx, export, run_id, sorted(pending))
                    failed_polls = 0
                except RetryLater as exc:
                    failed_polls += 1
                    log.warning("poll failed (%d in a row): %s", failed_polls, exc)
                    if failed_polls >= VERIFY_GIVE_UP_ROUNDS:
                        for n in sorted(pending):
                            pipeline.record_batch_unconfirmed(ctx, export, run_id, n, f"could not confirm: {exc}")
                            done.add(n)
                        pending.clear()
                    continue
                for n in result.done:
                    pending.discard(n)
                    done.add(n)
            show()
    sending_ended()
    show(force=True)
    return sending


def _send_one(ctx, export: str, run_id: str, n: int, sleep) -> str:
    for round_no in range(1, SEND_ROUNDS + 1):
        try:
            return pipeline.send_batch(ctx, export, run_id, n, sole_sender=True)  # one process per run
        except RetryLater as exc:
            if round_no == SEND_ROUNDS:
                pipeline.record_batch_failure(ctx, export, run_id, n, f"Omnisend kept failing: {exc}")
                return "failed"
            wait_s = max(exc.retry_after or 0, SEND_ROUND_PAUSE_SECONDS)
            log.warning("batch %d: %s; trying again in %.0fs", n, exc, wait_s)
            sleep(wait_s)
    return "failed"  # pragma: no cover
