"""Progress output for long work, on stderr: a live line on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# A terminal line is redrawn at most this often; a log (not a TTY) gets a line this often at most.
TTY_REFRESH_SECONDS = 0.2
LOG_REFRESH_SECONDS = 5.0


# Past this many seconds a duration reads better in minutes ("9m45s", not "585s").
MINUTES_FROM_SECONDS = 90


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


_duration = duration_text


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._line_open = False

    def _emit(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < (TTY_REFRESH_SECONDS if self.tty else LOG_REFRESH_SECONDS):
                return
            self._last = now
            if self.tty:
                self.stream.write("\r\x1b[2K" + text)
                self._line_open = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A message on its own line (ends any live line)."""
        if not self.enabled:
            return
        with self._lock:
            if self._line_open:
                self.stream.write("\n")
                self._line_open = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def planning(self, rows: int, bytes_read: int, total_bytes: int = 0, force: bool = False) -> None:
        elapsed = time.monotonic() - self._t0
        rate = rows / elapsed if elapsed > 0 else 0
        pct = f" {100 * bytes_read / total_bytes:5.1f}%" if total_bytes else ""
        self._emit(f"planning{pct}  rows {rows:,}  {rate:,.0f} rows/s", force)

    def sending(self, done: int, submitted: int, total: int, requests: int, started: float, rpm: int,
                force: bool = False) -> None:
        elapsed = time.monotonic() - started
        # A rate over less than a second of sending says nothing yet.
        rate_text = f"{requests / elapsed * 60:,.0f} req/min" if elapsed > 1 else "— req/min"
        remaining = total - submitted
        eta = remaining * 60.0 / rpm
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        self._emit(
            f"[{bar}] batches {done:,}/{total:,} confirmed, {submitted:,} sent  "
            f"{rate_text} (budget {rpm})  ETA {_duration(eta)}",
            force,
        )

    def close(self) -> None:
        if self.enabled and self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False
