"""Circuit breaker: tell "Omnisend is unreachable" from a dropped connection or two (ARCHITECTURE §4 rule 10).

A request that gets no HTTP answer at all (connection refused, DNS failure, connect timeout, connection reset
before any answer) is a *connection failure*. One of them is a blip and is retried; a run of them with no answer of
any kind for a while means the base URL is wrong or Omnisend is down, and retrying every batch for minutes (the old
behaviour: 51 retries over 113 s for 3 batches) only hides that. The breaker is shared by every thread of a client,
so four send workers failing together trip it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Open once at least this many requests in a row got no answer ...
BREAKER_MIN_FAILURES = 3
# ... and the first of them started at least this long ago with no answer since. 5 s rides out a restart of a
# load balancer or a flaky Wi-Fi moment; together with BREAKER_PROBE_SECONDS it stops a run within ~6 s of the
# first failure, inside the 15 s the operator was promised.
BREAKER_MIN_SECONDS = 5.0
# While connection failures accumulate, try again this often (no request reaches anyone, so nothing is hammered).
BREAKER_PROBE_SECONDS = 1.0


class CircuitBreaker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._since: float | None = None  # start of the first failed attempt of the current streak

    def answered(self) -> None:
        """Any HTTP answer, even an error status: Omnisend is reachable."""
        with self._lock:
            self._failures = 0
            self._since = None

    def failed(self, attempt_started: float) -> bool:
        """Record a connection failure of an attempt that started at ``attempt_started``; True if now open."""
        with self._lock:
            self._failures += 1
            if self._since is None or attempt_started < self._since:
                self._since = attempt_started
            return self._failures >= BREAKER_MIN_FAILURES and self._clock() - self._since >= BREAKER_MIN_SECONDS

    def describe(self) -> str:
        with self._lock:
            seconds = self._clock() - self._since if self._since is not None else 0.0
            return f"{self._failures} attempts in a row over {seconds:.0f}s got no answer"
