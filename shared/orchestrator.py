"""The Azure Functions orchestrator: what each trigger does, over queues, in terms of the pipeline stages.

function_app.py only decodes bindings and calls these methods. Flow:

    timer / HTTP start ──► export-plan ──► PLAN ──► export-send  (one message per batch) ──► SEND
                                              └──► export-verify (one message per group of batches, delayed)
                                                        │ VERIFY: settle finished batches, re-enqueue itself
                                                        └─► FINALISE once the last result exists
    <queue>-poison ──► the batch (or group, or plan) is recorded as failed, so the run still finalises.

A 429 or other transient failure re-enqueues the message with a visibility delay instead of sleeping inside the
function. One request budget holds across every instance and run (shared/budget.py): PLAN reserves a slot per
batch and sends each send message with its slot as visibility delay, so the queue releases sends at the budget
rate; a send re-enqueued (429/5xx, or delivered too late for its slot) reserves a new slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from shared import names, pipeline
from shared.budget import LATE_TOLERANCE_SECONDS, BudgetPacer, SlotMissed
from shared.errors import AuthRejected, FailRun, RetryLater
from shared.exports import ExportDefinition, ExportNotRunnable, find_export
from shared.queues import MAX_DELAY_SECONDS, StageMessage
from shared.runs import RunPaths, read_json

log = logging.getLogger("exporter")

# One batch-list request covers up to 250 batches, so one verify message looks after up to 200 of them:
# verification then costs about one request per 200 batches instead of one per batch.
VERIFY_GROUP_SIZE = 200
# Omnisend finishes most batches within seconds; polling sooner than this mostly finds them still pending.
VERIFY_DELAY_SECONDS = 15
# 240 rounds × 15 s = 1 hour: batches still unconfirmed then are recorded as failed so the run can finish.
VERIFY_MAX_ROUNDS = 240
# A send that keeps meeting 429/5xx is re-enqueued with back-off this many times, then counted as failed.
SEND_MAX_REQUEUES = 8
SEND_BACKOFF_SECONDS = (5, 15, 30, 60, 120, 300, 600, 900)
# A run whose plan message never arrived (lost between the start and the enqueue) is re-planned by the timer.
STALE_PLAN_SECONDS = 15 * 60
# Must equal host.json extensions.queues.maxDequeueCount (tests/azure check it): used in the poison reason.
HOST_MAX_DEQUEUE_COUNT = 5
# Enqueuing 10,000 send messages one by one takes minutes; a few threads bring that to seconds.
ENQUEUE_THREADS = 8
# Send messages become visible this long before their slot (then wait for it in the invocation), so the instances'
# polling lag does not make them late. 0: visibility is rounded down to whole seconds, up to 1 s early already.
SEND_RELEASE_LEAD_SECONDS = 0.0
# A send message delivered this much before its slot (its delay was capped at the queue's 7-day maximum, or a
# clock differs) goes back to the queue for the rest of the wait instead of sleeping through it. Below it, the
# send sleeps until its slot: visibility is whole seconds, so messages arrive up to a second early.
MAX_EARLY_SLEEP_SECONDS = 2.0


class Queues(Protocol):
    def send(self, queue_name: str, message: Any, delay_seconds: int = 0) -> str: ...


class Orchestrator:
    def __init__(self, ctx: pipeline.Context, queues: Queues, load_exports: Callable[[], list[ExportDefinition]],
                 *, verify_delay: int = VERIFY_DELAY_SECONDS,
                 send_backoff: tuple[int, ...] = SEND_BACKOFF_SECONDS,
                 pacer: BudgetPacer | None = None,
                 late_tolerance: float = LATE_TOLERANCE_SECONDS,
                 release_lead: float = SEND_RELEASE_LEAD_SECONDS) -> None:
        self.ctx = ctx
        self.queues = queues
        self.load_exports = load_exports
        self.verify_delay = verify_delay
        self.send_backoff = send_backoff
        # The shared request budget (None: no slots; the client's own pacer alone paces this process).
        self.pacer = pacer
        self.late_tolerance = late_tolerance
        self.release_lead = release_lead

    # ------------------------------------------------------------------------------------------ starting runs

    def start(self, export_name: str, options: pipeline.RunOptions) -> tuple[int, dict[str, Any]]:
        """HTTP start: (status code, body). 404 unknown export; 202 with the run id once queued; the running
        run's id instead of a second run; 200 with the report for a snapshot already exported (unless force)."""
        exports = self.load_exports()
        try:
            export = find_export(exports, export_name)
        except FailRun:
            return 404, {"error": f"unknown export {export_name!r}", "exports": [e.name for e in exports]}
        if options.dry_run:
            return 200, pipeline.dry_run(self.ctx, export, options)
        try:
            started = pipeline.start_run(self.ctx, export, options)
        except ExportNotRunnable as exc:
            return 409, {"error": str(exc)}
        except FailRun as exc:  # unreadable snapshot and the like
            return 422, {"error": str(exc), "kind": type(exc).__name__}
        body = {"export": export.name, "runId": started.run_id, "snapshot": started.snapshot_id}
        if started.finished:
            status = pipeline.run_status(self.ctx, export.name, started.run_id)
            return 200, {**body, "alreadyExported": True, "status": status["status"],
                         "hint": 'this snapshot was already exported; send {"force": true} to export it again'}
        if started.created:
            self._enqueue_plan(export.name, started.run_id)
            return 202, {**body, "status": "queued"}
        # Already under way. If it stopped (bad key, say) or its plan message was lost, starting it again resumes
        # it: PLAN is idempotent and queues only the batches that were not sent yet.
        paths = RunPaths(export.name, started.run_id)
        if self._stopped(paths) or self._plan_is_stale(export.name, started.run_id):
            self._enqueue_plan(export.name, started.run_id)
            return 202, {**body, "status": "resumed"}
        return 202, {**body, "status": "running", "alreadyRunning": True}

    def _stopped(self, paths: RunPaths) -> bool:
        return self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.failure)

    def on_timer(self) -> list[dict[str, Any]]:
        """For every runnable export whose newest snapshot has no run yet, start one. Duplicate fires find the
        run their twin started (same export + snapshot → same run id) and start nothing."""
        started = []
        for export in self.load_exports():
            if not (export.enabled and export.data_transfer_acknowledged):
                continue
            try:
                run = pipeline.start_run(self.ctx, export, pipeline.RunOptions(trigger="timer"))
            except FailRun as exc:
                log.error("timer export=%s could not start: %s", export.name, exc)
                continue
            if run.created:
                self._enqueue_plan(export.name, run.run_id)
                started.append({"export": export.name, "runId": run.run_id})
            elif not run.finished and self._plan_is_stale(export.name, run.run_id):
                log.warning("timer export=%s runId=%s: plan never ran; queuing it again", export.name, run.run_id)
                self._enqueue_plan(export.name, run.run_id)
        return started

    def _plan_is_stale(self, export: str, run_id: str) -> bool:
        paths = RunPaths(export, run_id)
        if self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.manifest):
            return False
        started = read_json(self.ctx.state_store, names.RUNS_CONTAINER, paths.started) or {}
        return self.ctx.clock() - started.get("startedAtEpoch", self.ctx.clock()) > STALE_PLAN_SECONDS

    def _enqueue_plan(self, export: str, run_id: str) -> None:
        self.queues.send(names.PLAN_QUEUE, StageMessage(export, run_id))

    # ------------------------------------------------------------------------------------------ stages

    def on_plan(self, message: StageMessage) -> dict[str, Any]:
        export = find_export(self.load_exports(), message.export)
        paths = RunPaths(export.name, message.run_id)
        self.ctx.state_store.delete(names.RUNS_CONTAINER, paths.failure)
        try:
            manifest = pipeline.plan(self.ctx, export, message.run_id)
        except FailRun as exc:
            pipeline.fail_run(self.ctx, export.name, message.run_id, exc)
            log.error("plan export=%s runId=%s failed: %s", export.name, message.run_id, exc)
            return {"failed": str(exc)}
        total = manifest["batches"]
        done, attempts = pipeline._run_listing(self.ctx, paths)
        to_send = [n for n in range(1, total + 1) if n not in done and n not in attempts]
        t0 = time.perf_counter()
        # One reservation for the whole run: each send message becomes visible at its slot of the brand's budget.
        slots = self.pacer.budget.reserve(len(to_send)) if self.pacer else [None] * len(to_send)
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            list(pool.map(lambda n, slot: self._send_at(StageMessage(export.name, message.run_id, n), slot),
                          to_send, slots))
        for first in range(1, total + 1, VERIFY_GROUP_SIZE):
            last = min(total, first + VERIFY_GROUP_SIZE - 1)
            self.queues.send(names.VERIFY_QUEUE, StageMessage(export.name, message.run_id, first,
                                                              extra={"last": last, "round": 0}),
                             delay_seconds=self.verify_delay)
        log.info("plan export=%s runId=%s queued send=%d verifyGroups=%d seconds=%.2f", export.name,
                 message.run_id, len(to_send), -(-total // VERIFY_GROUP_SIZE), time.perf_counter() - t0)
        if total == 0:
            self._finalise(export, message.run_id)
        return manifest

    def _send_at(self, message: StageMessage, slot: float | None) -> None:
        """Enqueue a send message to become visible at ``slot`` (epoch seconds; None: now). The delay is rounded
        down (visibility is whole seconds): on_send sleeps the fraction left."""
        if slot is None:
            self.queues.send(names.SEND_QUEUE, message)
            return
        timed = StageMessage(message.export, message.run_id, message.batch, message.attempt,
                             {**message.extra, "slot": round(slot, 3)})
        delay = min(MAX_DELAY_SECONDS, max(0, int(slot - self.release_lead - self.pacer.budget.clock())))
        self.queues.send(names.SEND_QUEUE, timed, delay_seconds=delay)

    def _slot_or_reschedule(self, message: StageMessage) -> float | None | str:
        """The slot this delivery may use; or "rescheduled" when it went back to the queue for a slot: too late for
        its own (a crashed instance's message, a backlog) or far too early."""
        slot = message.extra.get("slot")
        if self.pacer is None or slot is None:
            return None  # no slot: the client takes one from the budget at request time
        now = self.pacer.budget.clock()
        if now - slot > self.late_tolerance:
            self._send_at(message, self.pacer.budget.reserve(1)[0])
            return "rescheduled"
        if slot - now > MAX_EARLY_SLEEP_SECONDS + self.release_lead:
            self._send_at(message, slot)
            return "rescheduled"
        return float(slot)

    def on_send(self, message: StageMessage) -> str:
        export, run_id, n = message.export, message.run_id, message.batch
        paths = RunPaths(export, run_id)
        if self._stopped(paths):
            return "run-stopped"  # a bad key stopped the run: do not keep knocking with it
        slot = self._slot_or_reschedule(message)
        if slot == "rescheduled":
            return "rescheduled"
        try:
            if slot is None:
                outcome = pipeline.send_batch(self.ctx, export, run_id, n)
            else:
                # The POST uses the slot this message was released for, or none if that slot is missed by then.
                with self.pacer.prepaid(slot, self.late_tolerance):
                    outcome = pipeline.send_batch(self.ctx, export, run_id, n)
        except SlotMissed:
            self._send_at(message, self.pacer.budget.reserve(1)[0])
            return "rescheduled"
        except AuthRejected as exc:
            pipeline.fail_run(self.ctx, export, run_id, exc)
            log.error("send export=%s runId=%s batch=%d: %s", export, run_id, n, exc)
            return "run-stopped"
        except RetryLater as exc:
            if message.attempt >= SEND_MAX_REQUEUES:
                pipeline.record_batch_failure(self.ctx, export, run_id, n, f"Omnisend kept failing: {exc}")
                self._finalise_by_name(export, run_id)
                return "failed"
            backoff = self.send_backoff[min(message.attempt, len(self.send_backoff) - 1)]
            delay = max(exc.retry_after or 0, backoff)
            if self.pacer is None:
                self.queues.send(names.SEND_QUEUE, message.retried(), delay_seconds=int(delay))
            else:  # a retry is a new request: it takes a new slot of the budget, no earlier than the back-off
                self._send_at(message.retried(), self.pacer.budget.reserve(
                    1, not_before=self.pacer.budget.clock() + delay)[0])
            log.warning("send export=%s runId=%s batch=%d retry in %ss: %s", export, run_id, n, int(delay), exc)
            return "requeued"
        if outcome == "rejected":
            self._finalise_by_name(export, run_id)
        return outcome

    def on_verify(self, message: StageMessage) -> pipeline.VerifyOutcome | None:
        export, run_id = message.export, message.run_id
        first, last = message.batch, int(message.extra["last"])
        rounds = int(message.extra.get("round", 0))
        if self._stopped(RunPaths(export, run_id)):
            return None  # stopped (bad key): starting the run again queues fresh verify messages
        try:
            outcome = pipeline.verify(self.ctx, export, run_id, list(range(first, last + 1)))
        except RetryLater as exc:
            self._requeue_verify(message, rounds, max(exc.retry_after or 0, self.verify_delay))
            return None
        if outcome.pending or outcome.unsent:
            if rounds + 1 >= VERIFY_MAX_ROUNDS:
                for n in outcome.pending + outcome.unsent:
                    pipeline.record_batch_failure(
                        self.ctx, export, run_id, n,
                        f"not confirmed by Omnisend within {VERIFY_MAX_ROUNDS * VERIFY_DELAY_SECONDS // 60} minutes")
            else:
                self._requeue_verify(message, rounds, self.verify_delay)
                return outcome
        self._finalise_by_name(export, run_id)
        return outcome

    def _requeue_verify(self, message: StageMessage, rounds: int, delay: float) -> None:
        again = StageMessage(message.export, message.run_id, message.batch,
                             extra={**message.extra, "round": rounds + 1})
        self.queues.send(names.VERIFY_QUEUE, again, delay_seconds=int(delay))

    def on_poison(self, queue_name: str, body: str | bytes) -> str:
        """A message failed maxDequeueCount times. Record it as failed so the run still finalises; never raise
        (a poison queue has no poison queue of its own, so a raising handler would loop forever)."""
        try:
            message = StageMessage.parse(body)
            stage = queue_name.removesuffix(names.POISON_SUFFIX)
            reason = f"the {stage} stage failed {HOST_MAX_DEQUEUE_COUNT} times; see the function logs for the error"
            if stage == names.PLAN_QUEUE:
                pipeline.fail_run(self.ctx, message.export, message.run_id, FailRun(reason))
                return "plan-failed"
            if stage == names.SEND_QUEUE:
                pipeline.record_batch_failure(self.ctx, message.export, message.run_id, message.batch, reason)
            elif stage == names.VERIFY_QUEUE:
                for n in range(message.batch, int(message.extra["last"]) + 1):
                    pipeline.record_batch_failure(self.ctx, message.export, message.run_id, n, reason)
            self._finalise_by_name(message.export, message.run_id)
            return "recorded"
        except Exception:
            log.exception("poison queue=%s: could not record the failure; message: %.500s", queue_name, body)
            return "unrecorded"

    # ------------------------------------------------------------------------------------------ finalise

    def _finalise_by_name(self, export_name: str, run_id: str) -> dict[str, Any] | None:
        export = find_export(self.load_exports(), export_name)
        return self._finalise(export, run_id)

    def _finalise(self, export: ExportDefinition, run_id: str) -> dict[str, Any] | None:
        try:
            return pipeline.finalise(self.ctx, export, run_id)
        except RetryLater as exc:
            # Untagging could not get through; the state keeps the leavers and the next run tries again.
            log.warning("finalise export=%s runId=%s: %s", export.name, run_id, exc)
            return None

    # ------------------------------------------------------------------------------------------ status

    def status(self, export_name: str, run_id: str) -> dict[str, Any] | None:
        return pipeline.run_status(self.ctx, export_name, run_id)

    def overview(self) -> list[dict[str, Any]]:
        out = []
        for export in self.load_exports():
            runs = pipeline.list_runs(self.ctx, export.name)
            out.append({"name": export.name, "enabled": export.enabled,
                        "dataTransferAcknowledged": export.data_transfer_acknowledged,
                        "tags": list(export.tags), "lastRuns": runs[:5]})
        return out
