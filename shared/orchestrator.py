"""The Azure Functions orchestrator: what each trigger does, over queues, in terms of the pipeline stages.

function_app.py only decodes bindings and calls these methods. Flow:

    timer / HTTP start ──► export-plan ──► PLAN ──► export-send  (one message per batch) ──► SEND
                                              └──► export-verify (one message per group of batches, delayed)
                                                        │ VERIFY: settle finished batches, re-enqueue itself
                                                        └─► FINALISE once the last result exists: prepare,
                                                            then export-finalise (one message per untag chunk)
                                                            ──► UNTAG chunk ──► the last one completes the run
    <queue>-poison ──► plan: the run fails; send: failed if never POSTed, else unconfirmed or left to verify;
                       verify: checked again (bounded), then its open batches unconfirmed; finalise: an untag
                       chunk's leavers stay in the state. The run still finalises.

A send claims its batch before POSTing (shared/pipeline/send.py); a twin that finds the claim held re-queues
itself. A verify round is claimed by a marker per (group, round), so duplicate messages never fork the chain.

A 429 or other transient failure re-enqueues the message with a visibility delay instead of sleeping inside the
function. One request budget holds across every instance and run (shared/budget.py): PLAN reserves a slot per
batch and sends each send message with its slot as visibility delay, so the queue releases sends at the budget
rate; a send re-enqueued (429/5xx, or delivered too late for its slot) reserves a new slot.

Each export goes to the Omnisend brand of its connection (shared/connections.py): every handler that talks to
Omnisend takes the Context (client, key, breaker) and the request budget of that brand (``brand_of``), so two
brands never share a budget, a key cache or a circuit breaker. Storage-only work uses ``ctx`` (the stores are
shared by every brand).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from shared import leases, names, pipeline, retention
from shared.budget import LATE_TOLERANCE_SECONDS, BudgetBusy, BudgetPacer, SlotMissed
from shared.errors import AuthRejected, FailRun, RetryLater
from shared.exports import EXPORT_NAME_RE, ExportDefinition, ExportNotRunnable, find_export
from shared.http_input import excerpt
from shared.omnisend.errors import BaseUrlNotFound, OmnisendUnreachable
from shared.pipeline.send import (
    SEND_CLAIM_SECONDS,
    TAKEOVER_SLOTS,
    TakeoverNeedsSlots,
    claim_exists,
    claim_expired,
)
from shared.pipeline.verify import VERIFY_CONFIRM_SECONDS
from shared.preflight import preflight
from shared.queues import MAX_DELAY_SECONDS, StageMessage
from shared.runs import RUN_ID_RE, RunPaths, dumps, read_json
from shared.secrets import ApiKeyUnavailable

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
# A send put back because the budget had no slot for it (SlotMissed: it reached its request too late; BudgetBusy;
# TakeoverNeedsSlots) asked nothing of Omnisend, so it is not an attempt; but it must not come back for ever. After
# this many such re-queues its batch is recorded unconfirmed if a takeover was under way (the dead holder may have
# POSTed it), else failed (never sent). A takeover needs one re-queue (to be released for TAKEOVER_SLOTS slots) and
# then runs on its own slots; the rest is room for storage slow enough to make a send miss its slot again and again.
SEND_MAX_BUDGET_REQUEUES = 20
# A run whose plan message never arrived (lost between the start and the enqueue) is re-planned by the timer.
STALE_PLAN_SECONDS = 15 * 60
# Must equal host.json extensions.queues.maxDequeueCount (tests/azure check it): used in the poison reason.
HOST_MAX_DEQUEUE_COUNT = 5
# A preflight that got no answer puts the plan message back this much later, at most this many times: by then
# the instance's circuit breaker (shared/omnisend/breaker.py, ≥ 5 s without an answer) has decided.
PREFLIGHT_RETRY_SECONDS = 5
PREFLIGHT_MAX_REQUEUES = 6
# Errors that would be the same for every message of a run (ARCHITECTURE §4 rule 10): a refused key, no key from
# Key Vault, no answer from Omnisend (the client's circuit breaker), a wrong base URL.
STOPS_THE_RUN = (AuthRejected, ApiKeyUnavailable, OmnisendUnreachable, BaseUrlNotFound)
# A chunk of leavers whose untag keeps meeting 429/5xx is re-queued (with the send back-off) this many times,
# then recorded failed: those leavers stay in the state and the next run untags them.
UNTAG_MAX_REQUEUES = 8
# A finalisation found claimed is looked at again this long after the claim expires (lease expiry is not exact).
FINALISE_RECHECK_MARGIN = 30
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
                 preflight_retry_delay: int = PREFLIGHT_RETRY_SECONDS,
                 claim_recheck_delay: int = SEND_CLAIMED_RECHECK_SECONDS,
                 verify_confirm_seconds: float = VERIFY_CONFIRM_SECONDS,
                 unsent_give_up_seconds: float = VERIFY_UNSENT_GIVE_UP_SECONDS,
                 pacer: BudgetPacer | None = None,
                 late_tolerance: float = LATE_TOLERANCE_SECONDS,
                 release_lead: float = SEND_RELEASE_LEAD_SECONDS,
                 brand_of: Callable[[ExportDefinition], tuple[pipeline.Context, BudgetPacer | None]] | None = None,
                 ) -> None:
        self.ctx = ctx
        self.queues = queues
        self.load_exports = load_exports
        self.verify_delay = verify_delay
        self.send_backoff = send_backoff
        self.preflight_retry_delay = preflight_retry_delay
        self.claim_recheck_delay = claim_recheck_delay
        self.verify_confirm_seconds = verify_confirm_seconds
        self.unsent_give_up_seconds = unsent_give_up_seconds
        # The shared request budget (None: no slots; the client's own pacer alone paces this process).
        self.pacer = pacer
        self.late_tolerance = late_tolerance
        self.release_lead = release_lead
        # The Context and budget of an export's brand when it names a connection; ``ctx`` and ``pacer`` are those
        # of the implicit default connection (a file without connections), and every export's when this is None.
        self.brand_of = brand_of

    def _brand(self, export: ExportDefinition) -> tuple[pipeline.Context, BudgetPacer | None]:
        """The Context (client) and request budget of the brand ``export`` goes to."""
        if self.brand_of is None or export.resolved_connection.implicit:
            return self.ctx, self.pacer
        return self.brand_of(export)

    def _brand_by_name(self, export_name: str) -> tuple[pipeline.Context, BudgetPacer | None]:
        if self.brand_of is None:
            return self.ctx, self.pacer
        return self._brand(find_export(self.load_exports(), export_name))

    # ------------------------------------------------------------------------------------------ starting runs

    def start(self, export_name: str, options: pipeline.RunOptions) -> tuple[int, dict[str, Any]]:
        """HTTP start: (status code, body). 404 unknown export; 202 with the run id once queued; 202 with the
        running run's id for a plain start of the snapshot under way; 409 with the active run's id when this start
        cannot begin (a forced start while a run is active, or a newer snapshot while an older run is active,
        unless "supersede"); 200 with the report for a snapshot already exported (unless force)."""
        exports = self.load_exports()
        try:
            export = find_export(exports, export_name)
        except FailRun:
            return 404, {"error": f"unknown export {excerpt(export_name)!r}", "exports": [e.name for e in exports]}
        ctx, _ = self._brand(export)
        if options.dry_run:
            return 200, pipeline.dry_run(ctx, export, options)
        try:
            started = pipeline.start_run(ctx, export, options)
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
            return 202, {**body, "status": "queued", **({"note": started.note} if started.note else {})}
        if started.busy or options.fresh:
            what = (f"snapshot {started.wanted_snapshot} cannot start" if started.busy
                    else "a forced run cannot start")
            return 409, {**body, "status": "active", "alreadyRunning": True,
                         "error": f"{what} while run {started.run_id} of export {export.name!r} is unfinished",
                         "hint": 'wait for it (see statusUrl), or send {"supersede": true} to replace it'}
        # Already under way. If it stopped (bad key, say) or its plan message was lost, starting it again resumes
        # it: PLAN is idempotent and queues only the batches that were not sent yet.
        if self._nudge(export, started.run_id):
            return 202, {**body, "status": "resumed"}
        return 202, {**body, "status": "running", "alreadyRunning": True}

    def _stopped(self, paths: RunPaths) -> bool:
        """Stopped (bad key) or superseded: its remaining messages end without a request."""
        return (self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.failure)
                or self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.superseded))

    def on_timer(self) -> list[dict[str, Any]]:
        """For every runnable export whose newest snapshot has no run yet, start one, unless the export has an
        unfinished run: then nothing new starts (one active run per export) and that run is nudged on if it
        stopped, lost its plan message or its finaliser died. Duplicate fires find the run their twin started."""
        started = []
        for export in self.load_exports():
            if not (export.enabled and export.transfer_acknowledged):
                continue
            try:
                run = pipeline.start_run(self._brand(export)[0], export, pipeline.RunOptions(trigger="timer"))
            except FailRun as exc:
                log.error("timer export=%s could not start: %s", export.name, exc)
                continue
            if run.created:
                self._enqueue_plan(export.name, run.run_id)
                started.append({"export": export.name, "runId": run.run_id})
            elif not run.finished:
                if run.busy:
                    log.info("timer export=%s: snapshot %s waits for run %s", export.name, run.wanted_snapshot,
                             run.run_id)
                self._nudge(export, run.run_id)
        # Finished runs older than RUN_RETENTION_DAYS are deleted (unfinished ones never): shared/retention.py.
        retention.prune_for_timer(self.ctx.state_store, now=self.ctx.clock(),
                                  retention_days=self.ctx.settings.run_retention_days)
        return started

    def _nudge(self, export: ExportDefinition, run_id: str) -> bool:
        """Get an unfinished run moving again if nothing drives it: resume a stopped run, re-queue a lost plan,
        re-queue a finalisation whose holder died (its claims expired). True if something was queued."""
        paths = RunPaths(export.name, run_id)
        store = self.ctx.state_store
        if store.exists(names.RUNS_CONTAINER, paths.superseded):
            return False
        if store.exists(names.RUNS_CONTAINER, paths.failure) or self._plan_is_stale(export.name, run_id):
            log.warning("export=%s runId=%s stopped or never planned: queuing its plan again", export.name, run_id)
            self._enqueue_plan(export.name, run_id)
            return True
        manifest = read_json(store, names.RUNS_CONTAINER, paths.manifest)
        if manifest is None or store.exists(names.RUNS_CONTAINER, paths.report):
            return False
        results = sum(1 for _ in store.list(names.RUNS_CONTAINER, paths.results_prefix))
        now = self.ctx.clock()
        claims = [leases.current(store, names.RUNS_CONTAINER, prefix)
                  for prefix in (paths.finalise_claims, paths.complete_claims)]
        if results >= manifest["batches"] and all(c is None or c.expires_at <= now for c in claims):
            log.warning("export=%s runId=%s has every result but no report: queuing its finalisation",
                        export.name, run_id)
            self._enqueue_finalise(export.name, run_id)
            return True
        return False

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
        if self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.superseded):
            return {"superseded": message.run_id}  # a newer snapshot's run replaced it: plan nothing
        self.ctx.state_store.delete(names.RUNS_CONTAINER, paths.failure)
        try:
            # Before any send is queued: a refused key, a wrong URL or an unreachable Omnisend stop the run here
            # (one or two requests) instead of once per queued batch.
            ctx, pacer = self._brand(export)
            if not self._preflight(ctx, export.name, message):
                return {"requeued": "preflight"}
            manifest = pipeline.plan(ctx, export, message.run_id)
        except FailRun as exc:
            pipeline.fail_run(self.ctx, export.name, message.run_id, exc)
            log.error("plan export=%s runId=%s failed: %s", export.name, message.run_id, exc)
            return {"failed": str(exc)}
        total = manifest["batches"]
        done, attempts = pipeline._run_listing(self.ctx, paths)
        to_send = [n for n in range(1, total + 1) if n not in done and n not in attempts]
        t0 = time.perf_counter()
        # One reservation for the whole run: each send message becomes visible at its slot of the brand's budget.
        slots = pacer.budget.reserve(len(to_send)) if pacer else [None] * len(to_send)
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            list(pool.map(lambda n, slot: self._send_at(StageMessage(export.name, message.run_id, n), slot, pacer),
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

    def _preflight(self, ctx: pipeline.Context, export: str, message: StageMessage) -> bool:
        """False when the plan message was put back for later: no answer from Omnisend yet, and this instance's
        circuit breaker has not decided (it opens after BREAKER_MIN_SECONDS, raising OmnisendUnreachable). A
        429/5xx proves nothing either way: planning goes on and the sends retry as usual."""
        try:
            preflight(ctx, export, message.run_id)
        except RetryLater as exc:
            if exc.status is None and message.attempt < PREFLIGHT_MAX_REQUEUES:
                self.queues.send(names.PLAN_QUEUE, message.retried(), delay_seconds=self.preflight_retry_delay)
                log.warning("plan export=%s runId=%s: preflight got no answer, again in %ss: %s", export,
                            message.run_id, self.preflight_retry_delay, exc)
                return False
            log.warning("plan export=%s runId=%s: preflight inconclusive, going on: %s", export, message.run_id, exc)
        return True

    def _send_at(self, message: StageMessage, slot: float | None, pacer: BudgetPacer | None) -> None:
        """Enqueue a send message to become visible at ``slot`` (epoch seconds; None: now). The delay is rounded
        down (visibility is whole seconds): on_send sleeps the fraction left."""
        if slot is None:
            self.queues.send(names.SEND_QUEUE, message)
            return
        timed = StageMessage(message.export, message.run_id, message.batch, message.attempt,
                             {**message.extra, "slot": round(slot, 3)})
        delay = min(MAX_DELAY_SECONDS, max(0, int(slot - self.release_lead - pacer.budget.clock())))
        self.queues.send(names.SEND_QUEUE, timed, delay_seconds=delay)

    def _slot_or_reschedule(
        self, message: StageMessage, pacer: BudgetPacer | None
    ) -> tuple[float | None, StageMessage] | str:
        """The slot this delivery may use, with the message as it runs; or "rescheduled" when it went back to the
        queue for a slot: too late for its own (a crashed instance's message, a backlog) or far too early."""
        slot = message.extra.get("slot")
        if pacer is None or slot is None:
            return None, message  # no slot: the client takes one from the budget at request time
        now = pacer.budget.clock()
        if now - slot > self.late_tolerance:
            paths = RunPaths(message.export, message.run_id)
            if self.ctx.state_store.exists(names.RUNS_CONTAINER, paths.sent(message.batch, 0)):
                return None, message  # sent already (a redelivery, a twin's re-check): it ends without a request
            if self._slots_needed(message) < TAKEOVER_SLOTS and claim_expired(self.ctx, paths, message.batch):
                # Late and its batch's claim expired: the redelivery of a send whose instance died; it will take the
                # claim over. Its new reservation pays for the adoption reads too (TAKEOVER_SLOTS), which spares it
                # a second trip to the end of the send lane (TakeoverNeedsSlots).
                message = StageMessage(message.export, message.run_id, message.batch, message.attempt,
                                       {**message.extra, "slots": TAKEOVER_SLOTS})
            fresh = pacer.budget.reserve(self._slots_needed(message))[0]
            if fresh - now <= self.late_tolerance:
                # The send lane is idle (instances slower than the budget, or a backlog drained): run on the fresh
                # slot now. Re-queuing here would only make the next delivery late again, for ever.
                return float(fresh), message
            self._send_at(message, fresh, pacer)
            return "rescheduled"
        if slot - now > MAX_EARLY_SLEEP_SECONDS + self.release_lead:
            self._send_at(message, slot, pacer)
            return "rescheduled"
        return float(slot), message

    def on_send(self, message: StageMessage) -> str:
        export, run_id, n = message.export, message.run_id, message.batch
        paths = RunPaths(export, run_id)
        if self._stopped(paths):
            return "run-stopped"  # a bad key stopped the run: do not keep knocking with it
        ctx, pacer = self._brand_by_name(export)
        timed = self._slot_or_reschedule(message, pacer)
        if timed == "rescheduled":
            return "rescheduled"
        slot, message = timed
        slots = self._slots_needed(message)
        try:
            if slot is None:
                outcome = pipeline.send_batch(ctx, export, run_id, n, takeover_paid=pacer is None)
            else:
                # The POST uses the slot this message was released for, or none if that slot is missed by then; a
                # takeover's message was released for TAKEOVER_SLOTS slots, for its adoption reads and its POST.
                with pacer.prepaid(slot, self.late_tolerance, count=slots):
                    outcome = pipeline.send_batch(ctx, export, run_id, n, takeover_paid=slots >= TAKEOVER_SLOTS)
        except (SlotMissed, BudgetBusy) as exc:
            return self._requeue_for_budget(message, exc, pacer)
        except STOPS_THE_RUN as exc:
            # The same for every batch of the run: it is marked stopped once; its later messages end without a
            # request.
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
            if pacer is None:
                self.queues.send(names.SEND_QUEUE, message.retried(), delay_seconds=int(delay))
            else:  # a retry is a new request: it takes a new slot of the budget, no earlier than the back-off
                self._send_at(message.retried(), pacer.budget.reserve(
                    slots, not_before=pacer.budget.clock() + delay)[0], pacer)
            log.warning("send export=%s runId=%s batch=%d retry in %ss: %s", export, run_id, n, int(delay), exc)
            return "requeued"
        if outcome == "claimed-elsewhere":
            # A twin delivery holds the batch: look again later (not an attempt: SEND_MAX_REQUEUES is untouched).
            rechecks = int(message.extra.get("rechecks", 0)) + 1
            # Its next delivery decides afresh whether it takes a claim over ("slots": see _slot_or_reschedule).
            extra = {key: value for key, value in message.extra.items() if key != "slots"}
            again = StageMessage(export, run_id, n, message.attempt, {**extra, "rechecks": rechecks})
            self.queues.send(names.SEND_QUEUE, again, delay_seconds=self.claim_recheck_delay)
        if outcome == "rejected":
            self._finalise_by_name(export, run_id)
        return outcome

    @staticmethod
    def _slots_needed(message: StageMessage) -> int:
        """Send-lane slots the message is released for: 1, or TAKEOVER_SLOTS once it must take over a claim."""
        return TAKEOVER_SLOTS if int(message.extra.get("slots", 1)) > 1 else 1  # never more than a takeover needs

    def _requeue_for_budget(self, message: StageMessage, exc: RetryLater, pacer: BudgetPacer | None) -> str:
        """The budget had no slot for this send's requests (nothing reached Omnisend, so it is not an attempt): put
        it back on a new reservation (TAKEOVER_SLOTS slots for a takeover), at most SEND_MAX_BUDGET_REQUEUES times."""
        export, run_id, n = message.export, message.run_id, message.batch
        takeover = isinstance(exc, TakeoverNeedsSlots) or self._slots_needed(message) >= TAKEOVER_SLOTS
        requeues = int(message.extra.get("budgetRequeues", 0)) + 1
        if requeues > SEND_MAX_BUDGET_REQUEUES:
            why = f"no request slot of the budget in {SEND_MAX_BUDGET_REQUEUES} tries ({exc})"
            if takeover:  # its dead holder may have POSTed it: neither delivered nor failed
                pipeline.record_batch_unconfirmed(self.ctx, export, run_id, n, f"its claim takeover got {why}")
                outcome = "unconfirmed"
            else:
                pipeline.record_batch_failure(self.ctx, export, run_id, n, f"never sent: {why}")
                outcome = "failed"
            self._finalise_by_name(export, run_id)
            return outcome
        extra = {**message.extra, "budgetRequeues": requeues}
        if takeover:
            extra["slots"] = TAKEOVER_SLOTS
        again = StageMessage(export, run_id, n, message.attempt, extra)
        if pacer is None:
            self.queues.send(names.SEND_QUEUE, again, delay_seconds=self.verify_delay or 1)
        else:
            self._send_at(again, pacer.budget.reserve(self._slots_needed(again))[0], pacer)
        log.info("send export=%s runId=%s batch=%d back on the budget (%d of %d): %s", export, run_id, n, requeues,
                 SEND_MAX_BUDGET_REQUEUES, exc)
        return "rescheduled"

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
            outcome = pipeline.verify(self._brand_by_name(export)[0], export, run_id, list(range(first, last + 1)),
                                      confirm_within=self.verify_confirm_seconds)
        except RetryLater as exc:
            self._requeue_verify(message, rounds, max(exc.retry_after or 0, self.verify_delay))
            return None
        except STOPS_THE_RUN as exc:
            # Fatal for the whole run: stop it once (starting it again queues fresh verify messages).
            pipeline.fail_run(self.ctx, export, run_id, exc)
            log.error("verify export=%s runId=%s batches=%d-%d: %s", export, run_id, first, last, exc)
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
            elif stage == names.FINALISE_QUEUE and message.extra.get("kind") == "untag":
                # Its leavers stay in the state (so the next run untags them) and the report says so.
                pipeline.record_untag_failure(self.ctx, message.export, message.run_id, message.batch, reason)
            elif stage == names.FINALISE_QUEUE:
                return "left-to-timer"  # the timer re-queues a finalisation whose claims expired (_nudge)
            self._finalise_by_name(message.export, message.run_id)
            return "recorded"
        except Exception:
            log.exception("poison queue=%s: could not record the failure; message: %.500s", queue_name, body)
            return "unrecorded"

    # ------------------------------------------------------------------------------------------ finalise

    def on_finalise(self, message: StageMessage) -> str:
        """A finalisation step: untag one chunk of leavers (kind "untag", chunk number in ``batch``), or try to
        finalise (kind "finalise": a nudge, or a retry after another holder's claim expired)."""
        export = find_export(self.load_exports(), message.export)
        if self._stopped(RunPaths(export.name, message.run_id)):
            return "run-stopped"
        if message.extra.get("kind") == "untag":
            try:
                pipeline.untag_chunk(self._brand(export)[0], export, message.run_id, message.batch,
                                     give_up=message.attempt >= UNTAG_MAX_REQUEUES)
            except RetryLater as exc:
                backoff = self.send_backoff[min(message.attempt, len(self.send_backoff) - 1)]
                self.queues.send(names.FINALISE_QUEUE, message.retried(),
                                 delay_seconds=int(max(exc.retry_after or 0, backoff)))
                log.warning("untag export=%s runId=%s chunk=%d retry: %s", export.name, message.run_id,
                            message.batch, exc)
                return "requeued"
        report = self._finalise(export, message.run_id, requeue=message.extra.get("kind") == "finalise")
        return "finalised" if report is not None else "pending"

    def _enqueue_finalise(self, export: str, run_id: str, delay: float = 0) -> None:
        self.queues.send(names.FINALISE_QUEUE, StageMessage(export, run_id, extra={"kind": "finalise"}),
                         delay_seconds=int(min(delay, MAX_DELAY_SECONDS)))

    def _queue_chunks(self, export: str, run_id: str, chunks: list[int]) -> None:
        with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
            list(pool.map(lambda i: self.queues.send(
                names.FINALISE_QUEUE, StageMessage(export, run_id, i, extra={"kind": "untag"})), chunks))

    def _finalise_by_name(self, export_name: str, run_id: str) -> dict[str, Any] | None:
        export = find_export(self.load_exports(), export_name)
        return self._finalise(export, run_id)

    def _finalise(self, export: ExportDefinition, run_id: str, requeue: bool = False) -> dict[str, Any] | None:
        try:
            return pipeline.finalise(self._brand(export)[0], export, run_id, requeue=requeue,
                                     queue_chunks=lambda chunks: self._queue_chunks(export.name, run_id, chunks))
        except pipeline.FinaliseBusy as exc:
            # Someone holds the step. If it dies, its claim expires: look again then (it is a no-op if it finished).
            self._enqueue_finalise(export.name, run_id, delay=(exc.retry_after or 0) + FINALISE_RECHECK_MARGIN)
            log.info("finalise export=%s runId=%s: %s; checking again later", export.name, run_id, exc)
            return None

    # ------------------------------------------------------------------------------------------ status

    def status(self, export_name: str, run_id: str) -> dict[str, Any] | None:
        """The run's status, or None when there is no such run (a malformed name or id never reaches storage)."""
        if not EXPORT_NAME_RE.fullmatch(export_name) or not RUN_ID_RE.fullmatch(run_id):
            return None
        return pipeline.run_status(self.ctx, export_name, run_id)

    def overview(self) -> list[dict[str, Any]]:
        out = []
        for export in self.load_exports():
            runs = pipeline.list_runs(self.ctx, export.name)
            out.append({"name": export.name, "enabled": export.enabled,
                        "dataTransferAcknowledged": export.transfer_acknowledged, "connection": export.connection,
                        "tags": list(export.tags), "lastRuns": runs[:5]})
        return out
