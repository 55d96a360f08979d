"""Progress output for long work, on stderr: a live line on a terminal, a line every few seconds otherwise.

What it shows must be true at a glance: the phase (planning, sending, verifying, untagging, finalising) and how long
it has run; the bar follows batches *sent* (which move at the request rate) with *confirmed* and *failed* as counts
beside it (confirmations arrive in groups, when a poll settles up to 250 batches); the request rate over the last
60 s, never shown above the budget (the pacer keeps it there; a shorter window only measures its start-up burst);
and an ETA that includes the verification after the last send. The formatting is in pure functions so tests can
pin it down without a clock.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TextIO

# A terminal line is redrawn at most this often; a log (not a TTY) gets a line this often at most.
TTY_REFRESH_SECONDS = 0.2
LOG_REFRESH_SECONDS = 5.0
# Retry warnings are summed up at most this often when -v is not given (each one is shown with -v).
WARNING_SUMMARY_SECONDS = 5.0
# Past this many seconds a duration reads better in minutes ("9m45s", not "585s").
MINUTES_FROM_SECONDS = 90
# The request rate is measured over this sliding window: Omnisend's own limit is per minute.
RATE_WINDOW_SECONDS = 60.0
# A rate measured over less than this says nothing yet.
MIN_RATE_SPAN_SECONDS = 2.0
# One batch-list request confirms up to 250 batches (shared/omnisend/client.py BATCH_LIST_PAGE_SIZE).
BATCHES_PER_POLL = 250
# Before any batch is confirmed, the verification after the last send is assumed to take this long: Omnisend
# usually finishes a batch within seconds, and the runner polls every second once everything is sent.
DEFAULT_VERIFY_TAIL_SECONDS = 5.0
BAR_WIDTH = 24


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 batch", "3 batches", "1,000 rows". """
    if n == 1:
        return f"{n:,} {word}"
    return f"{n:,} {many or (word + 'es' if word.endswith(('s', 'ch', 'sh', 'x')) else word + 's')}"


def duration_text(seconds: float) -> str:
    """ "0.6s", "42s", "9m45s", "1h05m": seconds below 90 s, minutes past it."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < MINUTES_FROM_SECONDS:
        return f"{round(seconds)}s"
    total = round(seconds)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def shown_rate(rate: float | None, budget: float) -> str:
    """The request rate as shown: '—' until measurable, never above the budget."""
    if rate is None:
        return "—/min"
    return f"{min(rate, budget):,.0f}/min"


def eta_seconds(total: int, sent: int, confirmed_or_failed: int, rpm: float, verify_tail: float) -> float:
    """Time left: the batches not sent yet at the budget (one request each, plus the polls that confirm them),
    then the verification of the last ones (``verify_tail``: how far confirmations trail the sends)."""
    if confirmed_or_failed >= total:
        return 0.0
    to_send = max(0, total - sent)
    polls = -(-(total - confirmed_or_failed) // BATCHES_PER_POLL)
    return (to_send + polls) * 60.0 / rpm + verify_tail


def render_sending(*, sent: int, confirmed: int, failed: int, total: int, rate: float | None, rpm: float,
                   elapsed: float, eta: float) -> str:
    phase = "sending" if sent < total else "verifying"
    filled = int(BAR_WIDTH * sent / total) if total else BAR_WIDTH
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    failed_text = f", {failed:,} failed" if failed else ""
    return (
        f"{phase:<10}[{bar}] {sent:,}/{plural(total, 'batch')} sent, {confirmed:,} confirmed{failed_text}  "
        f"{shown_rate(rate, rpm)} (budget {rpm:,.0f})  {duration_text(elapsed)} elapsed, ETA {duration_text(eta)}"
    )


def render_planning(rows: int, bytes_read: int, total_bytes: int, elapsed: float) -> str:
    pct = f" {100 * bytes_read / total_bytes:5.1f}%" if total_bytes else ""
    rate = rows / elapsed if elapsed > 0 else 0
    return f"planning{pct}  {plural(rows, 'row')}  {rate:,.0f} rows/s  {duration_text(elapsed)} elapsed"


class RateWindow:
    """Requests per minute over the last RATE_WINDOW_SECONDS, from samples of a running request count."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, count: int) -> None:
        self._samples.append((t, count))
        # Keep one sample at or before the window's start, so the span covers the whole window once it can.
        while len(self._samples) > 2 and self._samples[1][0] <= t - self.window:
            self._samples.popleft()

    def per_minute(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span < MIN_RATE_SPAN_SECONDS:
            return None
        return (c1 - c0) * 60.0 / span


class _Unbreakable:
    """stderr that a closed pipe (``2>&1 | head``) cannot break: progress is not worth stopping an export for."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def isatty(self) -> bool:
        return self._stream.isatty()

    def write(self, text: str) -> None:
        if not self.broken:
            try:
                self._stream.write(text)
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self.broken = True

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = _Unbreakable(stream or sys.stderr)
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._clock = clock
        self._last = 0.0
        self._last_text = ""
        self._lock = threading.Lock()
        self._t0 = clock()
        self._phase_t0 = self._t0
        self._line_open = False
        self._rate = RateWindow()
        self._sent_at: list[tuple[int, float]] = []  # (sent count, when first reached): for the verify lag
        self._warnings: Counter = Counter()
        self._warnings_since = clock()

    # ---- output ----

    def _write_line(self, text: str) -> None:
        """A line of its own; on a terminal it replaces the live line, so nothing stale is left behind."""
        if self._line_open:
            self.stream.write("\r\x1b[2K")
            self._line_open = False
        self.stream.write(text + "\n")

    def _emit(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            if not force and now - self._last < (TTY_REFRESH_SECONDS if self.tty else LOG_REFRESH_SECONDS):
                return
            if text == self._last_text:
                return  # a forced final line that says nothing new
            self._last, self._last_text = now, text
            self._flush_warnings(now, force)
            if self.tty:
                self.stream.write("\r\x1b[2K" + text)
                self._line_open = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A message on its own line (replacing any live line)."""
        if not self.enabled:
            return
        with self._lock:
            self._write_line(text)
            self.stream.flush()

    # ---- phases ----

    def phase(self, name: str, detail: str = "") -> None:
        """A new phase begins (elapsed times count from here); short phases get a line of their own."""
        self._phase_t0 = self._clock()
        if detail:
            self.note(f"{name:<10} {detail}")

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def planning(self, rows: int, bytes_read: int, total_bytes: int = 0, force: bool = False) -> None:
        self._emit(render_planning(rows, bytes_read, total_bytes, self._clock() - self._phase_t0), force)

    def planned(self, summary: str) -> None:
        """The planning line's last word: replaces the live line."""
        self.note(f"planned    {summary} in {duration_text(self._clock() - self._phase_t0)}")

    def sending(self, sent: int, confirmed: int, failed: int, total: int, requests: int, rpm: float,
                force: bool = False) -> None:
        now = self._clock()
        self._rate.add(now, requests)
        if not self._sent_at or sent > self._sent_at[-1][0]:
            self._sent_at.append((sent, now))
        rate = self._rate.per_minute()
        # The ETA assumes the budget unless the last minute went slower (429s defer the pacer; Omnisend was slow).
        pace = min(rpm, rate) if rate else rpm
        eta = eta_seconds(total, sent, confirmed + failed, max(pace, 1.0), self._verify_tail(confirmed + failed, now))
        self._emit(render_sending(sent=sent, confirmed=confirmed, failed=failed, total=total, rate=rate, rpm=rpm,
                                  elapsed=now - self._phase_t0, eta=eta),
                   force)

    def _verify_tail(self, settled: int, now: float) -> float:
        """How far confirmations trail the sends: the time since the sent count first reached the settled one."""
        if settled == 0:
            return DEFAULT_VERIFY_TAIL_SECONDS
        for count, at in self._sent_at:
            if count >= settled:
                return max(0.0, now - at)
        return DEFAULT_VERIFY_TAIL_SECONDS

    # ---- warnings (without -v) ----

    def count_warning(self, key: str) -> None:
        with self._lock:
            self._warnings[key] += 1
            self._flush_warnings(self._clock(), False)

    def _flush_warnings(self, now: float, force: bool) -> None:
        """One summary line for the warnings since the last one (caller holds the lock)."""
        if not self._warnings or not self.enabled:
            return
        if not force and now - self._warnings_since < WARNING_SUMMARY_SECONDS:
            return
        total = sum(self._warnings.values())
        kinds = ", ".join(f"{k} ×{n:,}" for k, n in self._warnings.most_common(4))
        self._write_line(f"retrying   {plural(total, 'warning')} in the last "
                         f"{duration_text(now - self._warnings_since)}: {kinds} (-v shows each)")
        self._warnings.clear()
        self._warnings_since = now

    def close(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._flush_warnings(self._clock(), True)
            if self._line_open:
                self.stream.write("\n")
                self._line_open = False
            self.stream.flush()


# "Omnisend POST /api/batches → 429; attempt 1/6, retrying in 0.50 s" → "POST /api/batches → 429"
_ARROW = re.compile(r"(?:Omnisend )?(\S+ \S+ → [^;]+)")
# Other warnings are grouped with their numbers (batch 17, 3 in a row, 30s) made alike; HTTP statuses are kept.
_NUMBER = re.compile(r"\b(?![1-5]\d\d\b)\d+(?:\.\d+)?")
WARNING_KEY_LENGTH = 80


class WarningSummary(logging.Handler):
    """Without -v: warnings are counted by kind and summed up on one line per interval by ``progress``."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.WARNING)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            return  # errors are shown as they come by the ordinary handler
        message = record.getMessage()
        match = _ARROW.search(message)
        self.progress.count_warning(match.group(1) if match else _NUMBER.sub("N", message)[:WARNING_KEY_LENGTH])
