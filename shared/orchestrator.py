"""The Azure Functions orchestrator: what each trigger does, over queues, in terms of the pipeline stages.

function_app.py only decodes bindings and calls these methods. Flow:

    timer / HTTP start ──► export-plan ──► PLAN ──► export-send  (one message per batch) ──► SEND
                                              └──► export-verify (one message per group of batches, delayed)
                                                        │ VERIFY: settle finished batches, re-enqueue itself
                                                        └─► FINALISE once the last result exists
    <queue>-poison ──► plan: the run fails; send: failed if never POSTed, else unconfirmed or left to verify;
                       verify: checked again (bounded), then its open batches unconfirmed. The run still finalises.

A send claims its batch before POSTing (shared/pipeline/send.py); a twin that finds the claim held re-queues
itself. A verify round is claimed by a marker per (group, round), so duplicate messages never fork the chain.

A 429 or other transient failure re-enqueues the message with a visibility delay instead of sleeping inside the
function; the pacer of each instance keeps requests inside its share of the Omnisend budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from shared import names, pipeline
from shared.errors import AuthRejected, FailRun, RetryLater
from shared.exports import ExportDefinition, ExportNotRunnable, find_export
from shared.pipeline.send import SEND_CLAIM_SECONDS, claim_exists
from shared.pipeline.verify import VERIFY_CONFIRM_SECONDS
from shared.queues import StageMessage
from shared.runs import RunPaths, dumps, read_json

log = logging.getLogger("exporter")

# One batch-list request covers up to 250 batches, so one verify message looks after up to 200 of them:
# verification then costs about one request per 200 batches instead of one per batch.
VERIFY_GROUP_SIZE = 200
# Omnisend finishes most batches within seconds; polling sooner than this mostly finds them still pending.
VERIFY_DELAY_SECONDS = 15
# A verify round is claimed by a marker (verify/<first>.r<round>.json) held this long: longer than functionTimeout,
# so a live invocation is never overtaken; a marker left by an instance that died is taken over after it.
VERIFY_ROUND_LEASE_SECONDS = SEND_CLAIM_SECONDS
# A verify group whose message keeps crashing (poison) is checked again this many times, each after this many
# verify delays, before its open batches are recorded unconfirmed.
VERIFY_POISON_RESCHEDULES = 2
VERIFY_POISON_DELAY_ROUNDS = 4
# Batches still unsent this long after the run started (their send messages lost, say) are recorded unconfirmed
# so the run can finish; sends are otherwise bounded by SEND_MAX_REQUEUES and the poison queue.
VERIFY_UNSENT_GIVE_UP_SECONDS = 24 * 3600
# A send whose batch another delivery holds (a twin) looks again after this long: by then the holder has
# usually written the marker, and the message ends as "already-sent".
SEND_CLAIMED_RECHECK_SECONDS = 30
# A send that keeps meeting 429/5xx is re-enqueued with back-off this many times, then counted as failed.
SEND_MAX_REQUEUES = 8
SEND_BACKOFF_SECONDS = (5, 15, 30, 60, 120, 300, 600, 900)
# A run whose plan message never arrived (lost between the start and the enqueue) is re-planned by the timer.
STALE_PLAN_SECONDS = 15 * 60
# Must equal host.json extensions.queues.maxDequeueCount (tests/azure check it): used in the poison reason.
HOST_MAX_DEQUEUE_COUNT = 5
# Enqueuing 10,000 send messages one by one takes minutes; a few threads bring that to seconds.
ENQUEUE_THREADS = 8


class Queues(Protocol):
    def send(self, queue_name: str, message: Any, delay_seconds: int = 0) -> str: ...


class Orchestrator:
    def __init__(self, ctx: pipeline.Context, queues: Queues, load_exports: Callable[[], list[ExportDefinition]],
                 *, verify_delay: int = VERIFY_DELAY_SECONDS,
                 send_backoff: tuple[int, ...] = SEND_BACKOFF_SECONDS,
                 claim_recheck_delay: int = SEND_CLAIMED_RECHECK_SECONDS,
                 verify_confirm_seconds: float = VERIFY_CONFIRM_SECONDS,
                 unsent_give_up_seconds: float = VERIFY_UNSENT_GIVE_UP_SECONDS) -> None:
        self.ctx = ctx
        self.queues = queues
        self.load_exports = load_exports
        self.verify_delay = verify_delay
        self.send_backoff = send_backoff
        self.claim_recheck_delay = claim_recheck_delay
        self.verify_confirm_seconds = verify_confirm_seconds
        self.unsent_give_up_seconds = unsent_give_up_seconds

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
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            list(pool.map(lambda n: self.queues.send(names.SEND_QUEUE, StageMessage(export.name, message.run_id, n)),
                          to_send))
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

    def on_send(self, message: StageMessage) -> str:
        export, run_id, n = message.export, message.run_id, message.batch
        paths = RunPaths(export, run_id)
        if self._stopped(paths):
            return "run-stopped"  # a bad key stopped the run: do not keep knocking with it
        try:
            outcome = pipeline.send_batch(self.ctx, export, run_id, n)
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
            self.queues.send(names.SEND_QUEUE, message.retried(), delay_seconds=int(delay))
            log.warning("send export=%s runId=%s batch=%d retry in %ss: %s", export, run_id, n, int(delay), exc)
            return "requeued"
        if outcome == "claimed-elsewhere":
            # A twin delivery holds the batch: look again later (not an attempt: SEND_MAX_REQUEUES is untouched).
            rechecks = int(message.extra.get("rechecks", 0)) + 1
            again = StageMessage(export, run_id, n, message.attempt, {**message.extra, "rechecks": rechecks})
            self.queues.send(names.SEND_QUEUE, again, delay_seconds=self.claim_recheck_delay)
        if outcome == "rejected":
            self._finalise_by_name(export, run_id)
        return outcome

    def on_verify(self, message: StageMessage) -> pipeline.VerifyOutcome | None:
        """One round of checking a group of batches. Each (group, round) is claimed by a marker, so duplicate
        deliveries never fork the polling chain: a round already done ends without a request, a round another
        invocation holds is looked at again later."""
        export, run_id = message.export, message.run_id
        first, last = message.batch, int(message.extra["last"])
        rounds = int(message.extra.get("round", 0))
        paths = RunPaths(export, run_id)
        if self._stopped(paths):
            return None  # stopped (bad key): starting the run again queues fresh verify messages
        marker = self._round_marker(paths, first, rounds)
        claim = self._claim_round(marker)
        if claim == "done":
            return None
        if claim == "held":
            self.queues.send(names.VERIFY_QUEUE, message, delay_seconds=self.verify_delay)
            return None
        try:
            outcome = self._verify_round(message, paths, first, last, rounds)
        except BaseException:
            self.ctx.state_store.delete(names.RUNS_CONTAINER, marker)  # give the round back to the redelivery
            raise
        self.ctx.state_store.write(names.RUNS_CONTAINER, marker, dumps({"done": True}))
        return outcome

    def _verify_round(self, message: StageMessage, paths: RunPaths, first: int, last: int,
                      rounds: int) -> pipeline.VerifyOutcome | None:
        export, run_id = paths.export, paths.run_id
        try:
            outcome = pipeline.verify(self.ctx, export, run_id, list(range(first, last + 1)),
                                      confirm_within=self.verify_confirm_seconds)
        except RetryLater as exc:
            self._requeue_verify(message, rounds, max(exc.retry_after or 0, self.verify_delay))
            return None
        if outcome.unsent and not outcome.pending and self._unsent_too_long(paths):
            for n in outcome.unsent:
                pipeline.record_batch_unconfirmed(
                    self.ctx, export, run_id, n,
                    f"its send message did not run within {self.unsent_give_up_seconds / 3600:g} hours")
        elif outcome.pending or outcome.unsent:
            # Batches are settled only by what happened to them (verify counts each one's time from its own
            # submission); unsent ones wait for their send messages, which are bounded on their own.
            self._requeue_verify(message, rounds, self.verify_delay)
            return outcome
        self._finalise_by_name(export, run_id)
        return outcome

    def _unsent_too_long(self, paths: RunPaths) -> bool:
        started = read_json(self.ctx.state_store, names.RUNS_CONTAINER, paths.started) or {}
        return self.ctx.clock() - started.get("startedAtEpoch", self.ctx.clock()) > self.unsent_give_up_seconds

    @staticmethod
    def _round_marker(paths: RunPaths, first: int, rounds: int) -> str:
        return f"{paths.root}/verify/{first:05d}.r{rounds}.json"

    def _claim_round(self, marker: str) -> str:
        """"mine" (go ahead), "done" (a twin finished this round) or "held" (a twin is on it)."""
        store, now = self.ctx.state_store, self.ctx.clock()
        body = dumps({"claimedAt": now, "expiresAt": now + VERIFY_ROUND_LEASE_SECONDS})
        if store.create(names.RUNS_CONTAINER, marker, body):
            return "mine"
        held = read_json(store, names.RUNS_CONTAINER, marker)
        if held is None:  # given back a moment ago
            return "mine" if store.create(names.RUNS_CONTAINER, marker, body) else "held"
        if held.get("done"):
            return "done"
        if held.get("expiresAt", 0) > now:
            return "held"
        store.write(names.RUNS_CONTAINER, marker, body)  # its holder died: take the round over
        return "mine"

    def _requeue_verify(self, message: StageMessage, rounds: int, delay: float) -> None:
        again = StageMessage(message.export, message.run_id, message.batch,
                             extra={**message.extra, "round": rounds + 1})
        self.queues.send(names.VERIFY_QUEUE, again, delay_seconds=int(delay))

    def on_poison(self, queue_name: str, body: str | bytes) -> str:
        """A message failed maxDequeueCount times. Never raise (a poison queue has no poison queue of its own, so
        a raising handler would loop forever). A batch is failed only by what happened to it:
        - plan: the run fails (resumable);
        - send: a batch never claimed was never POSTed: failed; one claimed but without a marker may have been
          POSTed: unconfirmed; one submitted is left to verification;
        - verify: the group is checked again (bounded), then its open batches are recorded unconfirmed."""
        try:
            message = StageMessage.parse(body)
            stage = queue_name.removesuffix(names.POISON_SUFFIX)
            reason = f"the {stage} stage failed {HOST_MAX_DEQUEUE_COUNT} times; see the function logs for the error"
            paths = RunPaths(message.export, message.run_id)
            if stage == names.PLAN_QUEUE:
                pipeline.fail_run(self.ctx, message.export, message.run_id, FailRun(reason))
                return "plan-failed"
            if stage == names.SEND_QUEUE:
                n = message.batch
                if self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.sent(n, 0)):
                    return "left-to-verify"
                if claim_exists(self.ctx, paths, n):
                    pipeline.record_batch_unconfirmed(self.ctx, message.export, message.run_id, n, reason)
                else:
                    pipeline.record_batch_failure(self.ctx, message.export, message.run_id, n, reason)
            elif stage == names.VERIFY_QUEUE:
                poisoned = int(message.extra.get("poisoned", 0))
                if poisoned < VERIFY_POISON_RESCHEDULES:
                    rounds = int(message.extra.get("round", 0))
                    again = StageMessage(message.export, message.run_id, message.batch,
                                         extra={**message.extra, "round": rounds + 1, "poisoned": poisoned + 1})
                    self.queues.send(names.VERIFY_QUEUE, again,
                                     delay_seconds=self.verify_delay * VERIFY_POISON_DELAY_ROUNDS)
                    log.warning("verify export=%s runId=%s group=%d poisoned; checking again (%d of %d)",
                                message.export, message.run_id, message.batch, poisoned + 1,
                                VERIFY_POISON_RESCHEDULES)
                    return "rescheduled"
                for n in range(message.batch, int(message.extra["last"]) + 1):
                    pipeline.record_batch_unconfirmed(
                        self.ctx, message.export, message.run_id, n,
                        f"its verification failed {HOST_MAX_DEQUEUE_COUNT} times, "
                        f"{VERIFY_POISON_RESCHEDULES + 1} rounds in a row")
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
