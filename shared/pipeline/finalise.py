"""Finalising: untag leavers, commit the new state, write the report and rejected.csv — surviving a crash at any line.

Three steps, each done once and each redone safely by whoever takes it over (ARCHITECTURE §4 rule 8):

    prepare   (claim finalise/claim.*)    count the results, find the leavers against the state, decide (held? an
                                          older snapshot than the state's?), write the new state's members and
                                          the leavers in chunks of ≤ 250, then summary.json (create-if-absent:
                                          the commit point; a redo after it reuses this summary, never recomputes
                                          against a state this run may already have replaced)
    untag     (one chunk at a time)       DELETE /contacts/tags for the chunk, then its done marker; the CLI loops
                                          over the chunks, the Functions app queues one message per chunk
    complete  (claim finalise/complete.*) commit the state (unless a newer snapshot's run committed one), write
                                          rejected.csv and report.json (create-if-absent), free the export

Claims are leases that expire (shared/leases.py); nothing is released on an exception, so a holder that dies
blocks the step only until its lease runs out. A crash between any two lines converges on redelivery: every
write is either create-if-absent or rewrites the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shared import events, leases
from shared.contacts import email_key
from shared.errors import RetryLater
from shared.exports import ExportDefinition
from shared.failures import failed_row_for_csv, failure_message
from shared.omnisend.client import UNTAG_MAX_EMAILS
from shared.omnisend.errors import UntagNotSupported
from shared.pipeline.context import RUNS, Context, RunOptions, _now_iso, log
from shared.pipeline.plan import _mass_exit_tripped, _read_changes
from shared.pipeline.rowloop import PLANNED_KEYS_FORMAT, decode_planned, planned_keys_format
from shared.pipeline.start import is_superseded, read_started, release_active
from shared.retention import delete_payloads
from shared.runs import (
    RunPaths,
    check_accounting,
    dumps,
    read_json,
    rejected_csv,
)
from shared.state import StateMeta, decode_state, encode_state, load_state, load_state_meta, save_state

# Leavers per untag step: the most one DELETE /contacts/tags takes, so a chunk is one request (plus retries) and
# 135k leavers become 540 short steps instead of one invocation that cannot end within functionTimeout.
UNTAG_CHUNK = UNTAG_MAX_EMAILS


class FinaliseBusy(RetryLater):
    """Another holder's claim on this step is live; ``retry_after`` says when it expires."""


@dataclass
class Counts:
    """What the batch results add up to. One field per report bucket the results feed; add a bucket here, in
    ``_count_results`` and in the report."""

    sent: int = 0
    requests: int = 0
    failed_rows: list[dict[str, Any]] = field(default_factory=list)
    # Submitted, fate unknown (shared/pipeline/verify.py): neither delivered nor failed; out of the state.
    unconfirmed_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def not_delivered(self) -> set[str]:
        """Emails kept out of the new state, so the next run sends them again."""
        return {row["email"] for row in self.failed_rows} | {row["email"] for row in self.unconfirmed_rows}


def _count_results(ctx: Context, paths: RunPaths) -> Counts:
    counts = Counts()
    for obj in ctx.state_store.list(RUNS, paths.results_prefix):
        result = json.loads(ctx.state_store.read(RUNS, obj.name))
        counts.sent += result["sent"]
        counts.requests += result.get("requests", 0)
        counts.failed_rows.extend(result["failed"])
        counts.unconfirmed_rows.extend(result.get("unconfirmed") or [])
    # Requests not in a result: the preflight (polls/), polls, twins' and failed invocations (requests/, see
    # shared/pipeline/send.py RequestTally).
    for prefix in (f"{paths.root}/polls/", f"{paths.root}/requests/"):
        for obj in ctx.state_store.list(RUNS, prefix):
            counts.requests += json.loads(ctx.state_store.read(RUNS, obj.name)).get("requests", 0)
    return counts


def _entries_name(paths: RunPaths, generation: int) -> str:
    return f"{paths.root}/finalise/g{generation}/entries.bin"


def _chunk_name(paths: RunPaths, generation: int, i: int) -> str:
    return f"{paths.root}/finalise/g{generation}/leavers-{i:05d}.bin"


# ---------------------------------------------------------------------------------------------------- finalise


def finalise(ctx: Context, export: ExportDefinition, run_id: str, *, take_over: bool = False,
             queue_chunks=None, requeue: bool = False) -> dict[str, Any] | None:
    """When every batch has a result: prepare, untag, complete (see the module docstring). Returns the report, or
    None while batches are still open, the run was superseded, or untag chunks are pending in the queue: the
    Functions app passes ``queue_chunks`` (a callable taking the chunk numbers still to do), called once per run,
    or again with ``requeue``; without it (the CLI) the chunks are untagged here, one after the other.
    Raises FinaliseBusy while another holder's claim is live. ``take_over``: the caller knows no one else works on
    the run (the CLI)."""
    paths = RunPaths(export.name, run_id)
    existing = read_json(ctx.state_store, RUNS, paths.report)
    if existing is not None:
        release_active(ctx, export.name, run_id)  # the finaliser may have died right after writing the report
        delete_payloads(ctx.state_store, paths)  # finishes a deletion a crash interrupted (no-op once done)
        return existing
    if is_superseded(ctx, export.name, run_id):
        return None  # superseded runs never untag nor commit the state
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return None
    if manifest.get("guard"):  # the mapping guard stopped it at planning: no batch, no untag, no state change
        report = _finalise_guarded(ctx, export, run_id, paths, manifest, read_started(ctx, export.name, run_id))
        release_active(ctx, export.name, run_id)
        delete_payloads(ctx.state_store, paths)
        return report
    if sum(1 for _ in ctx.state_store.list(RUNS, paths.results_prefix)) < manifest["batches"]:
        return None
    summary = read_json(ctx.state_store, RUNS, paths.finalise_summary)
    if summary is None and "plannedKeysFormat" not in manifest and planned_keys_format(
        manifest, ctx.state_store.read(RUNS, paths.plan_file(manifest, "planned-keys.bin"))
    ) != PLANNED_KEYS_FORMAT:
        report = _finalise_unreadable_plan(ctx, export, run_id, paths, manifest, read_started(ctx, export.name, run_id))
        release_active(ctx, export.name, run_id)
        delete_payloads(ctx.state_store, paths)
        return report
    if summary is None:
        lease = _claim(ctx, paths.finalise_claims, take_over)
        summary = _prepare(ctx, export, run_id, paths, manifest, lease.generation)
    done = {obj.name for obj in ctx.state_store.list(RUNS, paths.untag_prefix)}
    pending = [i for i in range(summary["chunks"]) if paths.untag_chunk(i) not in done]
    if pending:
        if queue_chunks is None:
            for i in pending:
                untag_chunk(ctx, export, run_id, i, give_up=True)
        else:
            # Queue the chunks once (a crash before the marker queues them twice: harmless, a chunk is done once);
            # later calls (each finished chunk, other verify groups) only look. ``requeue``: a nudge after a
            # holder died re-queues what is still pending.
            queued = f"{paths.root}/finalise/chunks-queued.json"
            if requeue or not ctx.state_store.exists(RUNS, queued):
                queue_chunks(pending)
                ctx.state_store.write(RUNS, queued, dumps({"chunks": len(pending), "at": _now_iso(ctx.clock)}))
            return None
    report = _complete(ctx, export, run_id, paths, manifest, summary, take_over)
    # The report is written: the payloads are no longer needed (personal data kept minimal, shared/retention.py).
    delete_payloads(ctx.state_store, paths)
    return report


def _claim(ctx: Context, prefix: str, take_over: bool) -> leases.Lease:
    now = ctx.clock()
    lease = leases.claim(ctx.state_store, RUNS, prefix, now, seconds=leases.FINALISE_LEASE_SECONDS,
                         take_over=take_over)
    if lease is None:
        held = leases.current(ctx.state_store, RUNS, prefix)
        wait = held.remaining(now) if held else 0.0
        raise FinaliseBusy(f"another worker holds {prefix}* for {wait:.0f}s more", retry_after=wait)
    return lease


def _prepare(ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths,
             manifest: dict[str, Any], generation: int) -> dict[str, Any]:
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])
    counts = _count_results(ctx, paths)

    # New membership state: unchanged contacts keep their fingerprint; sent ones get the new one; failed ones
    # are left out so the next run retries them; leavers leave (unless their untag is held or fails).
    # Even after --full-resync the previous state still tells who left the segment.
    previous = load_state(ctx.state_store, export.name)
    stale = previous.meta.is_newer_than(started["snapshot"], started["startedAtEpoch"])
    keys, fps, raws, dropped = decode_planned(ctx.state_store.read(RUNS, paths.plan_file(manifest, "planned-keys.bin")))
    changes = _read_changes(ctx.state_store.read(RUNS, paths.plan_file(manifest, "changes.bin")))
    failed_emails = counts.not_delivered  # unconfirmed contacts stay out too: the next run sends them again
    # Planned contacts carry the fingerprint and raw hash to keep (new, refreshed, or as stored); the ones this run
    # sent keep theirs only if delivered; the rest are members, whose emails the previous state holds.
    sent = {email_key(email): email for email, _, _ in changes}
    entries: list[tuple[str, int, int, tuple[str, ...]]] = []
    emails = previous.emails
    index_of = previous.index_of
    for key, fp, raw, names in zip(keys, fps, raws, dropped, strict=True):
        email = sent.get(key)
        if email is None:
            i = index_of(key)
            if i < 0:  # valid but not sent (the mapping guard stopped the run) and not a member: stays out
                continue
            email = emails[i]
        elif email in failed_emails:
            continue
        entries.append((email, fp, raw, names))
    planned_set = set(keys)
    del keys, fps, raws, dropped, sent
    leavers = [entry for key, entry in zip(previous.keys, previous.entries(), strict=True) if key not in planned_set]

    status = "failed" if counts.failed_rows and counts.sent == 0 and manifest["toSend"] > 0 else (
        "partial" if counts.failed_rows or counts.unconfirmed_rows else "succeeded"
    )
    message = ""
    to_untag: list[tuple[str, int]] = []
    if stale:
        message = (
            f"the membership state already describes the newer snapshot {previous.meta.snapshot} (run "
            f"{previous.meta.run_id}): this run of the older snapshot {started['snapshot']} untagged nobody and "
            "left the state as it is"
        )
        leavers = []
    elif leavers and export.on_exit == "untag" and export.tags:
        if _mass_exit_tripped(export, len(leavers), len(previous), options.allow_mass_exit):
            status = "held"
            entries.extend(leavers)
            message = (
                f"{len(leavers)} of {len(previous)} members left the segment, more than maxExitFraction "
                f"{export.max_exit_fraction:g}: the untag step was skipped in case the snapshot is truncated. "
                f"If the segment really shrank, confirm with: python -m shared export {export.name} --allow-mass-exit "
                f'(HTTP: {{"allowMassExit": true}})'
            )
        else:
            to_untag = sorted(leavers)
    chunks = -(-len(to_untag) // UNTAG_CHUNK)
    for i in range(chunks):
        ctx.state_store.write(RUNS, _chunk_name(paths, generation, i),
                              encode_state(to_untag[i * UNTAG_CHUNK:(i + 1) * UNTAG_CHUNK]))
    ctx.state_store.write(RUNS, _entries_name(paths, generation), encode_state(entries))
    summary = {"generation": generation, "status": status, "message": message, "stale": stale,
               "leavers": len(leavers), "chunks": chunks, "preparedAt": _now_iso(ctx.clock)}
    if not ctx.state_store.create(RUNS, paths.finalise_summary, dumps(summary)):
        summary = read_json(ctx.state_store, RUNS, paths.finalise_summary)  # a slow twin prepared it first
    log.info("finalise prepared export=%s runId=%s leavers=%d chunks=%d stale=%s", export.name, run_id,
             summary["leavers"], summary["chunks"], summary["stale"])
    return summary


def untag_chunk(ctx: Context, export: ExportDefinition, run_id: str, i: int, *, give_up: bool) -> dict[str, Any]:
    """Untag the leavers of chunk ``i`` once; returns its marker. A transient failure raises RetryLater unless
    ``give_up``: then the chunk is recorded failed and its leavers stay in the state, so the next run retries them.
    Two workers untagging the same chunk at once are harmless: removing a tag twice leaves it removed."""
    paths = RunPaths(export.name, run_id)
    marker = read_json(ctx.state_store, RUNS, paths.untag_chunk(i))
    if marker is not None:
        return marker
    summary = read_json(ctx.state_store, RUNS, paths.finalise_summary)
    leavers = decode_state(ctx.state_store.read(RUNS, _chunk_name(paths, summary["generation"], i)), "leavers")
    before = ctx.client.thread_requests
    try:
        ctx.client.untag(leavers.emails, list(export.tags))
        marker = {"untagged": len(leavers)}
    except UntagNotSupported:
        marker = {"unsupported": len(leavers)}
    except RetryLater as exc:
        if not give_up:
            raise
        marker = {"failed": len(leavers), "message": str(exc)}
    marker["requests"] = ctx.client.thread_requests - before
    if not ctx.state_store.create(RUNS, paths.untag_chunk(i), dumps(marker)):
        marker = read_json(ctx.state_store, RUNS, paths.untag_chunk(i))
    return marker


def _complete(ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths, manifest: dict[str, Any],
              summary: dict[str, Any], take_over: bool) -> dict[str, Any]:
    _claim(ctx, paths.complete_claims, take_over)
    existing = read_json(ctx.state_store, RUNS, paths.report)
    if existing is not None:
        release_active(ctx, export.name, run_id)
        return existing
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])
    counts = _count_results(ctx, paths)
    generation = summary["generation"]
    entries_state = decode_state(ctx.state_store.read(RUNS, _entries_name(paths, generation)), "entries")
    entries = entries_state.entries()
    del entries_state

    status, message = summary["status"], summary["message"]
    untagged = untag_failed = unsupported = 0
    requests = counts.requests
    for i in range(summary["chunks"]):
        marker = json.loads(ctx.state_store.read(RUNS, paths.untag_chunk(i)))
        requests += marker.get("requests", 0)
        untagged += marker.get("untagged", 0)
        unsupported += marker.get("unsupported", 0)
        if marker.get("failed"):
            untag_failed += marker["failed"]
            kept = decode_state(ctx.state_store.read(RUNS, _chunk_name(paths, generation, i)), "leavers")
            entries.extend(kept.entries())
    if untag_failed:
        status = "partial" if status == "succeeded" else status
        message = f"untagging {untag_failed} of {summary['leavers']} leavers failed; the next run tries again"
    elif unsupported:
        message = (f"API v3 has no untag endpoint: {unsupported} leavers keep the tag(s) {', '.join(export.tags)} "
                   "in Omnisend; they are counted as leavers only")

    if export.tags and export.tags_via == "tagsEndpoint" and not summary["stale"]:
        # Tags applied with POST /contacts/tags, not in the upsert (the probe found upsert tags replacing). Before the
        # state is saved: if this fails (RetryLater), finalise is retried and nothing has advanced; adding a tag
        # twice on a redo leaves it added.
        failed_emails = counts.not_delivered
        changes = _read_changes(ctx.state_store.read(RUNS, paths.plan_file(manifest, "changes.bin")))
        before = ctx.client.thread_requests
        ctx.client.add_tags([e for e, _, _ in changes if e not in failed_emails], list(export.tags))
        requests += ctx.client.thread_requests - before

    state_bytes = 0
    committed = False
    if not summary["stale"]:
        meta = StateMeta(started["snapshot"], run_id, started["startedAtEpoch"])
        newer = load_state_meta(ctx.state_store, export.name)
        if newer.is_newer_than(meta.snapshot, meta.started_at):
            message = (f"the membership state was committed meanwhile by run {newer.run_id} of the newer snapshot "
                       f"{newer.snapshot}: this run left it as it is")
        else:
            state_bytes = save_state(ctx.state_store, export.name, entries, meta)
            committed = True

    if counts.failed_rows:  # a non-succeeded status always says its cause
        message = " ".join(m for m in (message, failure_message(counts.failed_rows, status)) if m)
    if counts.unconfirmed_rows:
        n = len(counts.unconfirmed_rows)
        message = " ".join(m for m in (message, f"{n:,} contact{'' if n == 1 else 's'} unconfirmed: submitted, but "
                                       "Omnisend never confirmed their fate; the next run sends them again.") if m)

    plan_rejected = ctx.state_store.read(RUNS, paths.plan_file(manifest, "plan-rejected.csv")).decode("utf-8")
    failed_csv = rejected_csv([failed_row_for_csv(row) for row in counts.failed_rows]
                              + [{**row, "bucket": "unconfirmed", "reason": row.get("omnisendMessage") or "",
                                  "omnisendMessage": ""} for row in counts.unconfirmed_rows]).decode("utf-8")
    body = plan_rejected + "".join(failed_csv.splitlines(keepends=True)[1:])
    ctx.state_store.write(RUNS, paths.rejected, body.encode("utf-8"))

    now = ctx.clock()
    report = {
        "runId": run_id,
        "export": export.name,
        "snapshot": manifest["snapshot"],
        "status": status,
        "message": message,
        "apiVersion": manifest["apiVersion"],
        "rows": manifest["rows"],
        "valid": manifest["valid"],
        "rejected": manifest["rejected"],
        "duplicates": manifest["duplicates"],
        "unchanged": manifest["unchanged"],
        "sent": counts.sent,
        "failed": len(counts.failed_rows),
        "unconfirmed": len(counts.unconfirmed_rows),
        "leavers": summary["leavers"],
        "untagged": untagged,
        "batches": manifest["batches"],
        "requests": requests,
        "droppedFields": manifest["droppedFields"],
        "stateCommitted": committed,
        "stateMembers": len(entries),
        "stateBytes": state_bytes,
        "startedAt": started["startedAt"],
        "finishedAt": _now_iso(lambda: now),
        "durationSeconds": round(now - started["startedAtEpoch"], 3),
        "trigger": options.trigger,
        "rejectedCsv": ctx.state_store.describe(RUNS, paths.rejected),
    }
    check_accounting(report)
    if not ctx.state_store.create(RUNS, paths.report, dumps(report)):
        report = read_json(ctx.state_store, RUNS, paths.report)
    else:
        events.run_finished(report)  # one structured event per finished run: the alerts read it
    release_active(ctx, export.name, run_id)
    log.info(
        "finalise export=%s runId=%s status=%s rows=%d sent=%d failed=%d rejected=%d duplicates=%d unchanged=%d "
        "leavers=%d untagged=%d requests=%d committed=%s",
        export.name, run_id, status, report["rows"], report["sent"], report["failed"], report["rejected"],
        report["duplicates"], report["unchanged"], report["leavers"], untagged, requests, committed,
    )
    return report


def _finalise_guarded(ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths,
                      manifest: dict[str, Any], started: dict[str, Any]) -> dict[str, Any]:
    """A run the mapping guard stopped at planning: nothing was sent, nobody is untagged, the state is untouched
    (a wrong mapping must not make every member a leaver). Its planned rows are in plan-rejected.csv as failed."""
    guard = manifest["guard"]
    return _finish_without_state(
        ctx, export, run_id, paths, manifest, started, guard["message"],
        ctx.state_store.read(RUNS, paths.plan_file(manifest, "plan-rejected.csv")),
        {"sent": 0, "failed": guard["notSent"], "unconfirmed": 0, "batches": 0, "requests": 0,
         "mappingGuard": guard},
    )


def _finalise_unreadable_plan(ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths,
                              manifest: dict[str, Any], started: dict[str, Any]) -> dict[str, Any]:
    """A run planned by an earlier version (planned-keys format 1, before issue 12) whose batches were all sent by
    this one: its plan cannot be read back into a state, so the run ends "failed" with the state as it was and
    nobody untagged. Nothing is lost: the next run compares with that state, so it sends this run's changes once
    more (the same data) and untags whoever left. Every row is still in one bucket."""
    counts = _count_results(ctx, paths)
    sent, unconfirmed = counts.sent, len(counts.unconfirmed_rows)
    message = (
        f"run {run_id} was planned by an earlier version of the exporter, whose plan this version cannot read back: "
        f"its {sent:,} contacts were sent, but the membership state was left as it was before this run and nobody "
        "was untagged. Nothing to do: the next run sends this run's changes once more (the same data) and untags "
        "whoever left."
    )
    failed_csv = rejected_csv([failed_row_for_csv(row) for row in counts.failed_rows]).decode("utf-8")
    plan_rejected = ctx.state_store.read(RUNS, paths.plan_file(manifest, "plan-rejected.csv")).decode("utf-8")
    return _finish_without_state(
        ctx, export, run_id, paths, manifest, started, message,
        (plan_rejected + "".join(failed_csv.splitlines(keepends=True)[1:])).encode("utf-8"),
        {"sent": sent, "failed": max(len(counts.failed_rows), manifest["toSend"] - sent - unconfirmed),
         "unconfirmed": unconfirmed, "batches": manifest["batches"], "requests": counts.requests,
         "stateCommitted": False},
    )


def _finish_without_state(ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths,
                          manifest: dict[str, Any], started: dict[str, Any], message: str, rejected: bytes,
                          outcome: dict[str, Any]) -> dict[str, Any]:
    """The report of a run that ends "failed" without touching the state or untagging anyone: rejected.csv, then
    the report (created once: a twin finaliser reads the one that won)."""
    ctx.state_store.write(RUNS, paths.rejected, rejected)
    now = ctx.clock()
    report = {
        "runId": run_id, "export": export.name, "snapshot": manifest["snapshot"], "status": "failed",
        "message": message, "apiVersion": manifest.get("apiVersion"), "rows": manifest["rows"],
        "valid": manifest["valid"], "rejected": manifest["rejected"], "duplicates": manifest["duplicates"],
        "unchanged": manifest["unchanged"], "leavers": 0, "untagged": 0,
        "droppedFields": manifest.get("droppedFields", {}), **outcome,
        "startedAt": started["startedAt"], "finishedAt": _now_iso(lambda: now),
        "durationSeconds": round(now - started["startedAtEpoch"], 3),
        "trigger": started["options"].get("trigger", "cli"),
        "rejectedCsv": ctx.state_store.describe(RUNS, paths.rejected),
    }
    check_accounting(report)
    if not ctx.state_store.create(RUNS, paths.report, dumps(report)):
        return read_json(ctx.state_store, RUNS, paths.report)
    events.run_finished(report)
    log.warning("finalise export=%s runId=%s status=failed %s", export.name, run_id, message)
    return report


def record_untag_failure(ctx: Context, export: str, run_id: str, i: int, reason: str) -> None:
    """Chunk ``i`` cannot be untagged (its message went to poison): its leavers stay in the state."""
    paths = RunPaths(export, run_id)
    summary = read_json(ctx.state_store, RUNS, paths.finalise_summary)
    leavers = decode_state(ctx.state_store.read(RUNS, _chunk_name(paths, summary["generation"], i)), "leavers")
    ctx.state_store.create(RUNS, paths.untag_chunk(i), dumps({"failed": len(leavers), "message": reason,
                                                              "requests": 0}))
