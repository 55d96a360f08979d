"""What a failed row's reason says in rejected.csv, and the run message that sums the failures up.

A row is "failed" for two different reasons an operator must tell apart: Omnisend saw the contact and refused it
(an HTTP status and Omnisend's own message: fix the data), or the contact never got a verdict from Omnisend (it could
not be reached, kept failing, or the batch could not be confirmed: run again). The stages record the evidence (HTTP
status, message); this module words it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

# Exception names in a stage's failure text that mean the request never got an answer from Omnisend.
_UNREACHABLE_MARKERS = ("ConnectionError", "Timeout", "ChunkedEncodingError", "could not reach")
# How many distinct reasons a run message quotes.
MESSAGE_REASONS = 3
REFUSED = "Omnisend refused the contact"
UNREACHABLE = "not delivered: could not reach Omnisend"


def failed_row_for_csv(row: dict[str, Any]) -> dict[str, Any]:
    """A failed row as rejected.csv shows it: the reason says what really happened; ``omnisendMessage`` holds
    only what Omnisend said."""
    message = row.get("omnisendMessage") or ""
    if row.get("httpStatus"):
        return {**row, "bucket": "failed", "reason": f"{REFUSED}: {message}" if message else REFUSED}
    reason = row.get("reason") or ""
    if not reason:
        if any(marker in message for marker in _UNREACHABLE_MARKERS):
            reason = f"{UNREACHABLE} ({message})"
        else:
            reason = f"not delivered: {message}" if message else "not delivered"
    return {**row, "bucket": "failed", "reason": reason, "omnisendMessage": ""}


def short_reason(reason: str) -> str:
    """The reason without its evidence, for grouping: 'Omnisend refused the contact: 400 ...' stays as it is
    (Omnisend's message is the point), 'not delivered: could not reach Omnisend (…)' loses the parenthesis."""
    if reason.startswith(UNREACHABLE):
        return UNREACHABLE
    return reason


def failure_message(rows: Iterable[dict[str, Any]], status: str) -> str:
    """'288 contacts not delivered: not delivered: could not reach Omnisend (288). ...' for a partial or failed
    run whose stages left no message of their own."""
    counts = Counter(short_reason(failed_row_for_csv(r)["reason"]) for r in rows)
    total = sum(counts.values())
    if not total:
        return ""
    top = "; ".join(f"{reason} ({n:,})" for reason, n in counts.most_common(MESSAGE_REASONS))
    more = f"; and {len(counts) - MESSAGE_REASONS} other reasons" if len(counts) > MESSAGE_REASONS else ""
    noun = "contact" if total == 1 else "contacts"
    again = " The next run tries them again." if status in ("partial", "failed") else ""
    return f"{total:,} {noun} not delivered: {top}{more}. Each is in rejected.csv.{again}"
