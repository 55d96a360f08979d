"""Reading Omnisend's error bodies, both shapes, into one evidence record.

v3:         {"error": "...", "fields": {"0": ["msg", ...]}}
2026-03-15: RFC 9457 {"type", "title", "status", "detail", "instance", "errors": [{"field","code","message"}],
            "retryAfter"} (retryAfter on 429 only)

Omnisend's messages can quote what was sent (an email in a validation message), so every text taken from a body
goes through ``mask_emails`` before it reaches an exception, a log or a report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Long enough for a validation message listing a few fields; short enough for a log line and a CSV cell.
MAX_MESSAGE_CHARS = 500
# Masking reads at most this much of any text (an error body can be megabytes; nothing past the first message
# lines is evidence anyone reads). The cut is moved back to a separator so that no half address survives unmasked.
MAX_SCAN_CHARS = 16_384
# Field errors kept from one body: a few name the problem; thousands would only fill the message.
MAX_FIELD_ERRORS = 50

# A "word": a run of characters that can belong to an address. Loose on purpose: the addresses Omnisend quotes back
# are often the invalid ones ("jane@example", no TLD). Scanned word by word, so masking is linear in the text's
# length (a backtracking email pattern was quadratic: a 40 KB body without separators took 22 s).
_WORD_RE = re.compile(r"""[^\s'"<>()\[\],;]+""")
_SEPARATORS = frozenset(" \t\r\n\v\f'\"<>()[],;")


def mask_emails(text: str) -> str:
    """john.doe@example.com -> j***@example.com (and jane@example -> j***@example) wherever it appears.

    Linear time; texts longer than MAX_SCAN_CHARS are cut there (at a separator) and end with "…".
    """
    if len(text) > MAX_SCAN_CHARS:
        cut = MAX_SCAN_CHARS
        while cut > 0 and text[cut - 1] not in _SEPARATORS:
            cut -= 1
        text = text[:cut] + "…"
    return _WORD_RE.sub(_mask_word, text)


def _mask_word(match: re.Match[str]) -> str:
    """Every ``local@domain`` in one word; the local part stops at ``:`` or ``@`` (``to:jane@x`` -> ``to:j***@x``)."""
    word = match.group()
    if "@" not in word:
        return word
    out: list[str] = []
    i = 0
    while True:
        at = word.find("@", i)
        if at < 0:
            out.append(word[i:])
            return "".join(out)
        start = max(word.rfind(":", i, at) + 1, i)
        if start == at:  # nothing before this @: not an address
            out.append(word[i : at + 1])
            i = at + 1
            continue
        end = word.find("@", at + 1)
        end = len(word) if end < 0 else end
        out.append(word[i:start] + word[start] + "***@" + word[at + 1 : end])
        i = end


@dataclass(frozen=True)
class Problem:
    status: int | None
    title: str  # v3 "error", or the Problem title
    detail: str = ""
    request_id: str | None = None  # Problem "instance", e.g. urn:omnisend:request:<uuid>
    field_errors: tuple[str, ...] = ()
    retry_after: float | None = None  # 2026 429 body "retryAfter", seconds

    @property
    def message(self) -> str:
        """One line for rejected.csv and exception texts: title, detail and field errors, emails masked."""
        parts = [p for p in (self.title, self.detail) if p]
        if self.detail and self.title and self.detail.startswith(self.title):
            parts = [self.detail]
        text = ": ".join(parts)
        if self.field_errors:
            text = f"{text} ({'; '.join(self.field_errors)})" if text else "; ".join(self.field_errors)
        text = mask_emails(text or "no message")
        return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def parse_problem(body: Any, status: int | None = None) -> Problem:
    """Any JSON value (or None when the body was not JSON) -> Problem. Never raises."""
    if not isinstance(body, dict):
        return Problem(status=status, title="")
    body_status = body.get("status")
    if isinstance(body_status, int) and status is None:
        status = body_status
    title = _text(body.get("title")) or _text(body.get("error")) or _text(body.get("message"))
    request_id = _text(body.get("instance")) or None
    return Problem(
        status=status,
        title=title,
        detail=_text(body.get("detail")),
        request_id=request_id,
        field_errors=_field_errors(body),
        retry_after=_seconds(body.get("retryAfter")),
    )


def _field_errors(body: dict) -> tuple[str, ...]:
    found: list[str] = []
    errors = body.get("errors")  # 2026 ValidationProblem
    if isinstance(errors, list):
        for err in errors[:MAX_FIELD_ERRORS]:
            if isinstance(err, dict):
                field_name, msg = _text(err.get("field")), _text(err.get("message")) or _text(err.get("code"))
                found.append(f"{field_name}: {msg}" if field_name else msg)
            elif isinstance(err, str):
                found.append(err)
    fields = body.get("fields")  # v3 {"0": ["identifiers[0].channels: field required ..."]}
    if isinstance(fields, dict):
        for msgs in fields.values():
            if isinstance(msgs, list):
                found.extend(_text(m) for m in msgs[:MAX_FIELD_ERRORS])
            else:
                found.append(_text(msgs))
            if len(found) >= MAX_FIELD_ERRORS:
                break
    return tuple(f for f in found[:MAX_FIELD_ERRORS] if f)


def _text(value: Any) -> str:
    """A body value as text, at most MAX_SCAN_CHARS of it (str() of a huge nested value is cut, too)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else repr(value) if isinstance(value, int | float | bool) else "(object)"
    return text[: MAX_SCAN_CHARS + 1]


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if seconds >= 0 else None
    return None
