"""Even request pacing shared by every thread of a process (ARCHITECTURE §4 rule 3).

Omnisend limits requests per brand over a sliding one-minute window. Spacing requests evenly at 60/rpm seconds
never puts more than rpm requests in any 60 s window and never bursts at a window edge, which a token bucket
would. A 429 moves the next slot for every thread (``defer``), so one thread's signal slows all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    def __init__(
        self,
        requests_per_minute: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be > 0, got {requests_per_minute!r}")
        self.requests_per_minute = requests_per_minute
        self.interval = 60.0 / requests_per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: float | None = None  # earliest time the next slot may be handed out

    def acquire(self) -> None:
        """Block until this caller's slot. Slots are reserved under the lock, slept for outside it."""
        with self._lock:
            now = self._clock()
            slot = now if self._next_slot is None or self._next_slot <= now else self._next_slot
            self._next_slot = slot + self.interval
        wait = slot - now
        if wait > 0:
            self._sleep(wait)

    def defer(self, seconds: float) -> None:
        """After a 429: hand out no slot before now + ``seconds`` (never moves the next slot earlier)."""
        if seconds <= 0:
            return
        with self._lock:
            until = self._clock() + seconds
            if self._next_slot is None or self._next_slot < until:
                self._next_slot = until
