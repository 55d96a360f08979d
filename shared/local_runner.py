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
from shared.omnisend.client import TAGS_REQUESTS_PER_MINUTE, TAGS_SAFETY_FACTOR, UNTAG_MAX_EMAILS
from shared.progress import Progress, plural
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
# What the untag step is paced at (shown to the user): the client's own pacing of /contacts/tags.
UNTAG_RATE = TAGS_REQUESTS_PER_MINUTE * TAGS_SAFETY_FACTOR


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
        progress.phase("planning")
        total_bytes = pipeline.read_started(ctx, export.name, started.run_id)["source"].get("total_bytes", 0)
        manifest = pipeline.plan(
            ctx, export, started.run_id,
            progress=lambda rows, nbytes: progress.planning(rows, nbytes, total_bytes),
        )
        progress.planned(_planned_text(manifest))
        sending = _send_and_verify(ctx, export.name, started.run_id, manifest["batches"], progress, sleep)
        _show_finalising(ctx, export, manifest, options, progress)
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
    requests0 = ctx.client.requests_made if to_send or pending else 0
    failed_polls = 0
    failed: set[int] = set()  # batches that failed as a whole (refused, or Omnisend kept failing)
    progress.phase("sending")

    def show(force: bool = False) -> None:
        if total:
            progress.sending(len(done) + len(pending), len(done - failed), len(failed), total,
                             ctx.client.requests_made - requests0, rpm, force)

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
                        failed.add(n)
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
                            pipeline.record_batch_failure(ctx, export, run_id, n, f"could not confirm: {exc}")
                            done.add(n)
                            failed.add(n)
                        pending.clear()
                    continue
                for n in result.done:
                    pending.discard(n)
                    done.add(n)
            show()
    sending_ended()
    show(force=True)
    return sending


def _planned_text(manifest: dict[str, Any]) -> str:
    return (
        f"{plural(manifest['rows'], 'row')}: {manifest['toSend']:,} to send in {plural(manifest['batches'], 'batch')}, "
        f"{manifest['unchanged']:,} unchanged, {manifest['rejected']:,} rejected, "
        f"{plural(manifest['duplicates'], 'duplicate')}"
        + (", STOPPED by the mapping guard (nothing is sent)" if manifest.get("guard") else "")
    )


def _show_finalising(ctx, export: ExportDefinition, manifest: dict[str, Any], options: pipeline.RunOptions,
                     progress: Progress) -> None:
    """Name the untag step when there is one (at 54 requests/min it can take minutes), then finalising."""
    from shared.pipeline.plan import _mass_exit_tripped

    leavers = manifest.get("leavers", 0)
    if leavers and export.on_exit == "untag" and export.tags and ctx.api_version != "v3" and not manifest.get("guard"):
        previous = manifest.get("previousMembers", 0)
        if _mass_exit_tripped(export, leavers, previous, options.allow_mass_exit):
            progress.phase("untagging", f"held: {leavers:,} of {previous:,} members left, more than maxExitFraction "
                                        f"{export.max_exit_fraction:g}; nobody is untagged")
        else:
            calls = -(-leavers // UNTAG_MAX_EMAILS)
            progress.phase("untagging", f"{plural(leavers, 'leaver')}: removing the export's tags, "
                                        f"{plural(calls, 'request')} at most {UNTAG_RATE:g}/min")
    progress.phase("finalising", "committing the membership state, writing the report and rejected.csv")


def _send_one(ctx, export: str, run_id: str, n: int, sleep) -> str:
    for round_no in range(1, SEND_ROUNDS + 1):
        try:
            return pipeline.send_batch(ctx, export, run_id, n)
        except RetryLater as exc:
            if round_no == SEND_ROUNDS:
                pipeline.record_batch_failure(ctx, export, run_id, n, f"Omnisend kept failing: {exc}")
                return "failed"
            wait_s = max(exc.retry_after or 0, SEND_ROUND_PAUSE_SECONDS)
            log.warning("batch %d: %s; trying again in %.0fs", n, exc, wait_s)
            sleep(wait_s)
    return "failed"  # pragma: no cover
