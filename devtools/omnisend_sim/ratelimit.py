"""Rate limiters per API key. Callers hold the simulator lock and pass ``now`` (time.monotonic()).

Refused requests (429) are NOT recorded in either window: a client that keeps hammering during a refusal is not
punished further, and a client that waits ``retryAfter`` is guaranteed to get through.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class FixedDecision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds until the current window ends


class FixedWindow:
    """v3: N requests per window starting at the first request after the previous window ended."""

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}  # key -> [window_start, count]

    def hit(self, key: str, limit: int, window: float, now: float) -> FixedDecision:
        state = self._windows.get(key)
        if state is None or now >= state[0] + window:
            state = self._windows[key] = [now, 0]
        reset = max(0, math.ceil(state[0] + window - now))
        if state[1] >= limit:
            return FixedDecision(False, limit, 0, max(1, reset))
        state[1] += 1
        return FixedDecision(True, limit, int(limit - state[1]), reset)

    def peek(self, key: str, limit: int, window: float, now: float) -> FixedDecision:
        state = self._windows.get(key)
        if state is None or now >= state[0] + window:
            return FixedDecision(True, limit, limit, math.ceil(window))
        return FixedDecision(True, limit, max(0, int(limit - state[1])), max(0, math.ceil(state[0] + window - now)))


class SlidingWindow:
    """2026: at most N accepted requests in any trailing window (timestamps per key, O(N) memory)."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, limit: int, window: float, now: float) -> int | None:
        """Record and allow (returns None), or refuse and return retryAfter in whole seconds (>= 1)."""
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            # The oldest counted request leaves the window at hits[-limit] + window.
            return max(1, math.ceil(hits[-limit] + window - now))
        hits.append(now)
        return None
