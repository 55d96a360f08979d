"""Reports, dry runs, run statuses and run lists as the CLI prints them: text for a person, whatever state the run
is in. The JSON forms (``--json``) are the dicts themselves; nothing here is needed by the Functions app."""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Any

from shared.progress import duration_text, plural


def with_config(report: dict[str, Any], config: str | None) -> dict[str, Any]:
    """The report with every suggested ``python -m shared export NAME`` command keeping ``--config PATH``."""
    if not config or not report.get("message"):
        return report
    command = f"python -m shared export {report['export']}"
    message = report["message"].replace(command, f"{command} --config {shlex.quote(config)}")
    return {**report, "message": message}


def report_lines(report: dict[str, Any]) -> list[str]:
    """A finished run's report."""
    lines = [
        f"export {report['export']}  run {report['runId']}  snapshot {report['snapshot']}",
        f"status: {report['status'].upper()}",
    ]
    if report.get("message"):
        lines.append(f"  {report['message']}")
    lines += [
        f"  rows        {report['rows']:>10,}",
        f"  sent        {report['sent']:>10,}",
        f"  failed      {report['failed']:>10,}",
        *([f"  unconfirmed {report['unconfirmed']:>10,}  (fate unknown; the next run sends them again)"]
          if report.get("unconfirmed") else []),
        f"  rejected    {report['rejected']:>10,}",
        f"  duplicates  {report['duplicates']:>10,}",
        f"  unchanged   {report['unchanged']:>10,}",
        f"  leavers     {report['leavers']:>10,}  (untagged {report['untagged']:,})",
        f"  requests    {report['requests']:>10,}  in {duration_text(report['durationSeconds'])}",
    ]
    if report.get("droppedFields"):
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(report["droppedFields"].items()))
        lines.append(f"  optional fields dropped as invalid: {dropped}")
    if report.get("rejectedCsv") and (report["failed"] or report.get("unconfirmed") or report["rejected"]
                                      or report["duplicates"]):
        lines.append(f"  every row not sent, and why: {report['rejectedCsv']}")
    return lines


def dry_run_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"DRY RUN of export {report['export']} (snapshot {report['snapshot']}, API {report['apiVersion']}): "
        "nothing was sent or stored",
    ]
    if report.get("mappingGuard"):
        lines.append(f"  THE RUN WOULD STOP HERE: {report['mappingGuard']}")
    lines += [
        f"  rows                   {report['rows']:>10,}",
        f"  would create/update    {report['wouldCreateOrUpdate']:>10,}  in {plural(report['batches'], 'batch')}",
        f"  unchanged              {report['unchanged']:>10,}",
        f"  rejected               {report['rejected']:>10,}",
        f"  duplicates             {report['duplicates']:>10,}",
        f"  leavers                {report['leavers']:>10,}  would untag {report['wouldUntag']:,}"
        + ("  (mass-exit guard would hold the untag)" if report["massExitGuard"] else ""),
        f"  estimated              {plural(report['estimatedRequests'], 'request')}, "
        f"about {duration_text(report['estimatedSeconds'])} at {report['requestsPerMinute']} requests/min",
    ]
    dropped = report.get("droppedFields") or {}
    if dropped:
        lines.append("  optional fields dropped as invalid (the rest of each contact is still sent):")
        width = max(len(k) for k in dropped)
        lines += [f"    {k:<{width}}  {v:>8,}" for k, v in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))]
    reasons = report.get("rejectedReasons") or []
    if reasons:
        lines.append("  top rejection reasons (emails masked):")
        for r in reasons:
            samples = ", ".join(f"{posixpath.basename(s['file'])}:{s['line']} {s['email']}" for s in r["samples"])
            lines.append(f"    {r['count']:>8,}  {r['reason']}  e.g. {samples}")
    if report.get("samplePayloads"):
        lines.append("  sample payloads (emails masked):")
        lines += ["    " + json.dumps(p, ensure_ascii=False) for p in report["samplePayloads"]]
    return lines


def status_lines(status: dict[str, Any]) -> list[str]:
    """A run in any state: finished (its report), stopped, planning, sending, verifying, or any later stage."""
    if "report" in status:
        return report_lines(status["report"])
    export, run_id = status["export"], status["runId"]
    stage = status.get("stage", "unknown")
    head = f"export {export}  run {run_id}" + (f"  snapshot {status['snapshot']}" if status.get("snapshot") else "")
    if stage == "stopped":
        lines = [head, "status: FAILED (stopped; resumable)"]
        if status.get("message"):
            lines.append(f"  {status['message']}")
        lines.append(f"  fix the cause, then resume with: python -m shared export {export}")
        return lines
    since = f" since {status['startedAt']}" if status.get("startedAt") else ""
    lines = [head, f"status: {stage.upper()}{since} (not finished)"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    if "batches" in status:
        lines.append(f"  batches     {status['batchesDone']:>10,} of {status['batches']:,} confirmed, "
                     f"{status['batchesSubmitted']:,} submitted")
    for key, value in (status.get("counts") or {}).items():
        lines.append(f"  {key:<11} {value:>10,}")
    if status.get("etaSeconds") is not None:
        lines.append(f"  ETA         about {duration_text(status['etaSeconds'])} at the configured budget")
    return lines


def runs_lines(export: str, runs: list[dict[str, Any]]) -> list[str]:
    if not runs:
        return [f"no runs of {export!r} yet"]
    lines = [f"{'run':<28} {'started':<20}  {'status':<10} {'snapshot':<30} {'sent':>9} {'failed':>9}"]
    for r in runs:
        sent = f"{r['sent']:>9,}" if r.get("sent") is not None else f"{'-':>9}"
        failed = f"{r['failed']:>9,}" if r.get("failed") is not None else f"{'-':>9}"
        lines.append(f"{r['runId']:<28} {r['startedAt']:<20}  {r['status']:<10} {r['snapshot']:<30} {sent} {failed}")
        if r.get("status") != "succeeded" and r.get("message"):
            lines.append(f"    why: {r['message']}")
    return lines
