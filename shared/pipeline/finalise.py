"""Finalising: untag leavers, commit the new state, write the report and rejected.csv, exactly once."""

from __future__ import annotations

import json
import zlib
from array import array
from typing import Any

from shared.contacts import email_key
from shared.errors import RetryLater
from shared.exports import ExportDefinition
from shared.omnisend.errors import UntagNotSupported
from shared.pipeline.context import RUNS, Context, RunOptions, _now_iso, log
from shared.pipeline.plan import _mass_exit_tripped, _read_changes
from shared.pipeline.start import read_started
from shared.runs import (
    RunPaths,
    check_accounting,
    dumps,
    read_json,
    rejected_csv,
)
from shared.state import load_state, save_state

# ---------------------------------------------------------------------------------------------------- finalise


def finalise(ctx: Context, export: ExportDefinition, run_id: str) -> dict[str, Any] | None:
    """When every batch has a result: claim finalisation once, untag leavers, commit the new state and write
    report.json + rejected.csv. Returns the report, or None while batches are still open."""
    paths = RunPaths(export.name, run_id)
    existing = read_json(ctx.state_store, RUNS, paths.report)
    if existing is not None:
        return existing
    manifest = read_json(ctx.state_store, RUNS, paths.manifest)
    if manifest is None:
        return None
    results_list = list(ctx.state_store.list(RUNS, paths.results_prefix))
    if len(results_list) < manifest["batches"]:
        return None
    if not ctx.state_store.create(RUNS, paths.final, dumps({"claimedAt": _now_iso(ctx.clock)})):
        return None  # another worker is finalising
    try:
        return _finalise_claimed(ctx, export, run_id, paths, manifest, results_list)
    except BaseException:
        # Give the claim back so a later call (the next verify message, a re-run) can finalise the run.
        ctx.state_store.delete(RUNS, paths.final)
        raise


def _finalise_claimed(
    ctx: Context, export: ExportDefinition, run_id: str, paths: RunPaths, manifest: dict[str, Any], results_list: list
) -> dict[str, Any]:
    started = read_started(ctx, export.name, run_id)
    options = RunOptions(**started["options"])

    sent = 0
    requests = 0
    failed_rows: list[dict[str, Any]] = []
    unconfirmed_rows: list[dict[str, Any]] = []
    for obj in results_list:
        result = json.loads(ctx.state_store.read(RUNS, obj.name))
        sent += result["sent"]
        requests += result.get("requests", 0)
        failed_rows.extend(result["failed"])
        unconfirmed_rows.extend(result.get("unconfirmed") or [])
    # Requests not in a result: polls, twins' and failed invocations (shared/pipeline/send.py RequestTally).
    for obj in ctx.state_store.list(RUNS, f"{paths.root}/requests/"):
        requests += json.loads(ctx.state_store.read(RUNS, obj.name)).get("requests", 0)

    # New membership state: unchanged contacts keep their fingerprint; sent ones get the new one; failed ones
    # are left out so the next run retries them; leavers leave (unless their untag is held or failed).
    # Even after --full-resync the previous state still tells who left the segment.
    full_previous = load_state(ctx.state_store, export.name)
    planned = array("Q")
    planned.frombytes(zlib.decompress(ctx.state_store.read(RUNS, paths.planned_keys)))
    planned_set = set(planned)
    del planned
    changes = _read_changes(ctx.state_store.read(RUNS, paths.changes))
    # Unconfirmed contacts stay out of the state too: the next run sends them again.
    failed_emails = {row["email"] for row in failed_rows} | {row["email"] for row in unconfirmed_rows}
    changed_emails = {email for email, _, _ in changes}
    entries: list[tuple[str, int]] = [(e, fp) for e, fp, _ in changes if e not in failed_emails]
    leaver_emails: list[str] = []
    for email, fp in zip(full_previous.emails, full_previous.fingerprints, strict=True):
        key = email_key(email)
        if key in planned_set:
            if email not in changed_emails:
                entries.append((email, fp))
        else:
            leaver_emails.append(email)

    status = "failed" if failed_rows and sent == 0 and manifest["toSend"] > 0 else (
        "partial" if failed_rows or unconfirmed_rows else "succeeded"
    )
    message = ""
    untagged = 0
    keep_leavers = False
    if leaver_emails and export.on_exit == "untag" and export.tags:
        if _mass_exit_tripped(export, len(leaver_emails), len(full_previous), options.allow_mass_exit):
            status = "held"
            keep_leavers = True
            message = (
                f"{len(leaver_emails)} of {len(full_previous)} members left the segment, more than maxExitFraction "
                f"{export.max_exit_fraction:g}: the untag step was skipped in case the snapshot is truncated. "
                f"If the segment really shrank, confirm with: python -m shared export {export.name} --allow-mass-exit "
                f'(HTTP: {{"allowMassExit": true}})'
            )
        else:
            before = ctx.client.thread_requests
            try:
                ctx.client.untag(leaver_emails, list(export.tags))
                untagged = len(leaver_emails)
            except UntagNotSupported:
                message = (
                    f"API v3 has no untag endpoint: {len(leaver_emails)} leavers keep the tag(s) "
                    f"{', '.join(export.tags)} in Omnisend; they are counted as leavers only"
                )
            except RetryLater as exc:
                keep_leavers = True
                status = "partial"
                message = f"untagging {len(leaver_emails)} leavers failed ({exc}); the next run tries again"
            requests += ctx.client.thread_requests - before
    if keep_leavers:
        leaver_set = set(leaver_emails)
        entries.extend((e, fp) for e, fp in zip(full_previous.emails, full_previous.fingerprints, strict=True)
                       if e in leaver_set)
    state_bytes = save_state(ctx.state_store, export.name, entries)

    plan_rejected = ctx.state_store.read(RUNS, paths.plan_rejected).decode("utf-8")
    failed_csv = rejected_csv([{**row, "bucket": "failed", "reason": "Omnisend refused the contact"}
                               for row in failed_rows]
                              + [{**row, "bucket": "unconfirmed", "reason": row.get("omnisendMessage") or "",
                                  "omnisendMessage": ""} for row in unconfirmed_rows]).decode("utf-8")
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
        "sent": sent,
        "failed": len(failed_rows),
        "unconfirmed": len(unconfirmed_rows),
        "leavers": len(leaver_emails),
        "untagged": untagged,
        "batches": manifest["batches"],
        "requests": requests,
        "droppedFields": manifest["droppedFields"],
        "stateMembers": len(entries),
        "stateBytes": state_bytes,
        "startedAt": started["startedAt"],
        "finishedAt": _now_iso(lambda: now),
        "durationSeconds": round(now - started["startedAtEpoch"], 3),
        "trigger": options.trigger,
        "rejectedCsv": ctx.state_store.describe(RUNS, paths.rejected),
    }
    check_accounting(report)
    ctx.state_store.write(RUNS, paths.report, dumps(report))
    log.info(
        "finalise export=%s runId=%s status=%s rows=%d sent=%d failed=%d rejected=%d duplicates=%d unchanged=%d "
        "leavers=%d untagged=%d requests=%d",
        export.name, run_id, status, report["rows"], sent, len(failed_rows), report["rejected"],
        report["duplicates"], report["unchanged"], len(leaver_emails), untagged, requests,
    )
    return report
