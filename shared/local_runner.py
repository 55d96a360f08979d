"""The local orchestrator: runs plan → send → verify → finalise in this process with a small thread pool.

The Azure Functions app drives the same stages through queues; nothing here is needed there.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from shared import pipeline
from shared.errors import FailRun, RetryLater, RunBusy
from shared.exports import ExportDefinition
from shared.names import RUNS_CONTAINER
from shared.omnisend.client import TAGS_REQUESTS_PER_MINUTE, TAGS_SAFETY_FACTOR, UNTAG_MAX_EMAILS
from shared.pipeline.start import HEARTBEAT_SECONDS, HEARTBEAT_STALE_SECONDS
from shared.preflight import preflight
from shared.progress import Progress, plural
from shared.runs import RunPaths
from shared.stopping import Stopped, StopSignal

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
# An export has at most one active run; finishing an interrupted older one first (or replacing this snapshot's
# own for --new-run) takes at most one extra pass.
MAX_OLDER_RUNS = 1
# Consecutive failed polls before the open batches are given up as "could not confirm".
VERIFY_GIVE_UP_ROUNDS = 20
# What the untag step is paced at (shown to the user): the client's own pacing of /contacts/tags.
UNTAG_RATE = TAGS_REQUESTS_PER_MINUTE * TAGS_SAFETY_FACTOR
# How often the send loop looks at the stop flag (Ctrl-C) and, when stopping, at the requests still in flight:
# the operator sees "stopping: N requests in flight" within this long.
STOP_CHECK_SECONDS = 0.2


def run_export(
    ctx: pipeline.Context,
    export: ExportDefinition,
    options: pipeline.RunOptions,
    progress: Progress | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the export's run for its newest snapshot to its end and return the report. An unfinished
    run of an older snapshot that this process may resume (it stopped, or its process died) is finished first:
    a newer snapshot's run only starts after the older one finished (ARCHITECTURE §4 rule 7)."""
    progress = progress or Progress(enabled=False)
    if options.dry_run:
        return pipeline.dry_run(ctx, export, options)
    sleep = sleep or ctx.client.stop.sleep
    try:
        for _ in range(MAX_OLDER_RUNS + 2):
            started = pipeline.start_run(ctx, export, options)
            if started.finished:
                report = pipeline.run_status(ctx, export.name, started.run_id)["report"]
                progress.note(
                    f"snapshot {started.snapshot_id} was already exported by run {started.run_id} "
                    f"(status {report['status']}); use --new-run to export it again"
                )
                return {**report, "alreadyExported": True}
            if not started.created:
                _check_resumable_here(ctx, export.name, started)
            if not started.busy:
                break
            if options.new_run and started.snapshot_id == started.wanted_snapshot:
                # --new-run over this snapshot's own unfinished run, which nobody works on: replace it.
                options = dataclasses.replace(options, supersede=True)
                continue
            progress.note(f"run {started.run_id} of the older snapshot {started.snapshot_id} did not finish: "
                          f"finishing it before snapshot {started.wanted_snapshot}")
            _drive(ctx, export, started.run_id, options, progress, sleep, resumed=True)
        else:  # pragma: no cover - each pass finishes one older run, and only one can be active
            raise FailRun(f"export {export.name!r} kept having unfinished runs; run the same command again")
        if started.note and started.created:
            progress.note(started.note)
        report, sending = _drive(ctx, export, started.run_id, options, progress, sleep,
                                 resumed=not started.created)
    finally:
        progress.close()
    return {**report, "sending": sending}


def _check_resumable_here(ctx: pipeline.Context, export: str, started: pipeline.StartedRun) -> None:
    """Resume a run only if nobody else is working on it: it stopped (failure.json) or its CLI process died.
    A run the Functions app drives, or another live CLI process, is left alone."""
    paths = RunPaths(export, started.run_id)
    if ctx.state_store.exists(RUNS_CONTAINER, paths.failure) or pipeline.is_interrupted(ctx, export, started.run_id):
        return
    info = pipeline.read_started(ctx, export, started.run_id)
    where = ("the Functions app" if info["options"].get("trigger", "cli") != "cli"
             else f"another process (heartbeat younger than {HEARTBEAT_STALE_SECONDS:.0f}s)")
    wanted = f" before snapshot {started.wanted_snapshot} can start" if started.busy else ""
    raise RunBusy(
        f"run {started.run_id} of export {export!r} (snapshot {started.snapshot_id}) is being run by {where}; "
        f"wait for it to finish{wanted}, or replace it with: python -m shared export {export} --supersede"
    )


def _drive(ctx: pipeline.Context, export: ExportDefinition, run_id: str, options: pipeline.RunOptions,
           progress: Progress, sleep, resumed: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plan, send, verify and finalise one run in this process, beating its heartbeat meanwhile. Raises the fatal
    error that stopped it (the run is then recorded as stopped and resumable), or ``Interrupted`` when its
    StopSignal was set by the operator (the run is left as it is)."""
    stop = ctx.client.stop
    if resumed:
        progress.note(f"resuming run {run_id}: batches already confirmed are not sent again")
        # It may have stopped (bad key, unreadable snapshot): it is running again.
        ctx.state_store.delete(RUNS_CONTAINER, RunPaths(export.name, run_id).failure)
    heart = _Heartbeat(ctx, export.name, run_id)
    try:
        try:
            _preflight(ctx, export.name, run_id)
            progress.phase("planning")
            total_bytes = pipeline.read_started(ctx, export.name, run_id)["source"].get("total_bytes", 0)

            def planning(rows: int, nbytes: int) -> None:
                stop.check()  # Ctrl-C while planning: stop at the next progress tick, not after the whole snapshot
                progress.planning(rows, nbytes, total_bytes)

            manifest = pipeline.plan(ctx, export, run_id, progress=planning)
            stop.check()
            progress.planned(_planned_text(manifest))
            sending = _send_and_verify(ctx, export.name, run_id, manifest["batches"], progress, sleep)
            _show_finalising(ctx, export, manifest, options, progress)
            # No one else works on this run (checked before resuming it), so a claim left by a dead process is ours.
            report = pipeline.finalise(ctx, export, run_id, take_over=True)
        except Stopped as exc:
            raise exc.reason from None
    except FailRun as exc:
        stop.stop(exc)
        pipeline.fail_run(ctx, export.name, run_id, exc)
        raise
    finally:
        heart.stop()
    if report is None:
        if pipeline.is_superseded(ctx, export.name, run_id):
            raise FailRun(f"run {run_id} was superseded by a newer snapshot's run while it ran; nothing to resume")
        raise FailRun(f"run {run_id} did not finish; run the same command again to resume it")  # pragma: no cover
    return report, sending


class _Heartbeat:
    """Writes the run's heartbeat every HEARTBEAT_SECONDS from a daemon thread, and a last one on the way out
    (finished, failed or interrupted), so `runs` tells a dead run from a live one."""

    def __init__(self, ctx: pipeline.Context, export: str, run_id: str) -> None:
        self.ctx, self.export, self.run_id = ctx, export, run_id
        self._stop = threading.Event()
        pipeline.beat(ctx, export, run_id)
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                pipeline.beat(self.ctx, self.export, self.run_id)
            except Exception:  # a missed beat only makes the run look older; the export goes on
                log.warning("could not write the heartbeat of run %s", self.run_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        pipeline.beat(self.ctx, self.export, self.run_id, ended=True)


def _preflight(ctx, export: str, run_id: str) -> None:
    """Prove URL, API version and key with one read before anything is written (see shared/preflight.py).
    A refused key, a wrong URL and an unreachable Omnisend end the run here, before the first batch. A 429/5xx
    the client's retries did not get past proves nothing either way: the run goes on, and its sends retry."""
    try:
        preflight(ctx, export, run_id)
    except RetryLater as exc:
        log.warning("preflight inconclusive, going on: %s", exc)


def _send_and_verify(ctx, export: str, run_id: str, total: int, progress: Progress, sleep) -> dict[str, Any]:
    """Submit every unsent batch and poll until each has a result. Returns how the sending phase used the
    budget: seconds from the first to the last submission and the requests made in between (polls included).

    When the run's StopSignal is set (Ctrl-C, or a fatal error in any thread) no batch is started any more; the
    requests already in flight finish, then ``Stopped`` is raised."""
    paths = RunPaths(export, run_id)
    stop = ctx.client.stop
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
    pool = ThreadPoolExecutor(SEND_WORKERS, thread_name_prefix="send")
    futures: dict[Future, int] = {}
    try:
        futures = {pool.submit(_send_one, ctx, export, run_id, n, sleep): n for n in to_send}
        while (futures or pending) and not stop.is_set():
            if not futures:
                sending_ended()
            if futures:
                finished, _ = wait(list(futures), timeout=STOP_CHECK_SECONDS, return_when=FIRST_COMPLETED)
                for fut in finished:
                    n = futures.pop(fut)
                    try:
                        outcome = fut.result()
                    except Stopped:
                        continue
                    except FailRun as exc:  # bad key, unreachable Omnisend, wrong URL: every thread stops
                        stop.stop(exc)
                        continue
                    if outcome == "submitted" or outcome == "already-sent":
                        pending.add(n)
                    else:
                        done.add(n)
                        failed.add(n)
            elif pending:
                sleep(POLL_INTERVAL_SECONDS)
            if stop.is_set():
                break
            if pending and (len(pending) >= POLL_MIN_PENDING or not futures):
                try:
                    result = pipeline.verify(ctx, export, run_id, sorted(pending))
                    failed_polls = 0
                except Stopped:
                    break
                except FailRun as exc:
                    stop.stop(exc)
                    break
                except RetryLater as exc:
                    failed_polls += 1
                    log.warning("poll failed (%d in a row): %s", failed_polls, exc)
                    if failed_polls >= VERIFY_GIVE_UP_ROUNDS:
                        for n in sorted(pending):
                            pipeline.record_batch_unconfirmed(ctx, export, run_id, n, f"could not confirm: {exc}")
                            done.add(n)
                            failed.add(n)
                        pending.clear()
                    continue
                for n in result.done:
                    pending.discard(n)
                    done.add(n)
            show()
    finally:
        # Batches not started yet are never started once stopping; the running ones finish their request.
        pool.shutdown(wait=False, cancel_futures=True)
        if stop.is_set():
            _wind_down(stop, futures, progress)
        pool.shutdown(wait=True)
    if stop.is_set():
        raise Stopped(stop.reason)
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


def _wind_down(stop: StopSignal, futures: dict[Future, int], progress: Progress) -> None:
    """Wait for the requests already in flight, telling the operator how many are left as they finish."""
    shown = None
    while True:
        running = [f for f in futures if not f.done()]
        if not running:
            break
        count = stop.in_flight
        if count != shown:
            _say(progress, f"stopping: {count} request{'' if count == 1 else 's'} in flight")
            shown = count
        wait(running, timeout=STOP_CHECK_SECONDS)
    if shown not in (None, 0):
        _say(progress, "stopping: 0 requests in flight")


def _say(progress: Progress, text: str) -> None:
    """What the operator must see even with --quiet (it explains why the command has not ended yet)."""
    if progress.enabled:
        progress.note(text)
    else:
        print(text, file=sys.stderr, flush=True)


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
            sleep(wait_s)  # the run's StopSignal.sleep: ends at once when the run stops
    return "failed"  # pragma: no cover
