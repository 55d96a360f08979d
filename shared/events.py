"""Operational events: one structured log record when something an operator must know about happens.

Two events, each a single log record on the logger ``exporter.events`` whose message is the event name, a space
and a JSON object (``RunFinished {"export": "vip", "runId": ..., "status": "held", ...}``):

- ``RunFinished``: every finished run (its report was written), or a run that stopped (``status`` "failed").
- ``TimerFired``: every timer fire, with the exports the timer considers enabled (the staleness alert's list).

Why the JSON is in the message: the Functions Python worker forwards a log record to Application Insights as a
``traces`` row with only the host's own customDimensions (Category, InvocationId, LogLevel, ...); it drops
``extra=`` (azure-functions-python-worker issues #1327 and #1681). The same fields are also passed as ``extra=`` so
that an app which adds the OpenTelemetry distro gets them as customDimensions too, but the alert queries in
infra/main.bicep read the message, which arrives either way:
``traces | where message startswith "RunFinished " | extend e = parse_json(substring(message, 12))``.
tests/infra/test_alerts.py checks that those queries name exactly these events and fields.

Events carry names, ids, statuses and counts only: never a contact, an email or a key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from shared.omnisend.problems import mask_emails

LOGGER_NAME = "exporter.events"
log = logging.getLogger(LOGGER_NAME)

RUN_FINISHED = "RunFinished"
# Report fields copied into the event (the alert reads status, sent, failed; the rest tell the operator what ran).
RUN_FINISHED_FIELDS = (
    "export",
    "runId",
    "status",
    "rows",
    "sent",
    "failed",
    "rejected",
    "duplicates",
    "unchanged",
    "leavers",
    "untagged",
    "requests",
    "durationSeconds",
    "message",
)
# Statuses a finished run can have (the report's contract); the alert queries may only name these.
RUN_STATUSES = ("succeeded", "partial", "held", "failed")

TIMER_FIRED = "TimerFired"
TIMER_FIRED_FIELDS = ("enabledExports", "started")

# Longest message text carried in an event: a run's message is one or two sentences; a stack of them is a bug.
MAX_MESSAGE_CHARS = 500


def format_event(name: str, fields: Mapping[str, Any]) -> str:
    """``<name> <compact JSON>``: the message the alert queries parse."""
    return f"{name} {json.dumps(dict(fields), ensure_ascii=False, separators=(',', ':'), sort_keys=False)}"


def parse_event(message: str) -> tuple[str, dict[str, Any]]:
    """The inverse of ``format_event`` (what the KQL does with ``substring`` + ``parse_json``)."""
    name, _, body = message.partition(" ")
    return name, json.loads(body)


def _emit(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    log.info(format_event(name, fields), extra={"event": name, **{f"event_{k}": v for k, v in fields.items()}})
    return fields


def run_finished(report: Mapping[str, Any]) -> dict[str, Any]:
    """Emit ``RunFinished`` for a run's report (or the failure record of a stopped run). Returns the fields."""
    fields = {key: report.get(key) for key in RUN_FINISHED_FIELDS}
    if isinstance(fields["message"], str):  # a failure's message may quote Omnisend, which may quote an address
        fields["message"] = mask_emails(fields["message"])[:MAX_MESSAGE_CHARS]
    # INFO whatever the status: the host forwards INFO from functions, and the CLI (WARNING and up on stderr) keeps
    # its own report output instead of a JSON line.
    return _emit(RUN_FINISHED, fields)


def timer_fired(enabled_exports: Iterable[str], started: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Emit ``TimerFired``: which exports the timer looked after, and which runs it started."""
    fields = {
        "enabledExports": sorted(enabled_exports),
        "started": [str(run.get("runId")) for run in started],
    }
    return _emit(TIMER_FIRED, fields)
