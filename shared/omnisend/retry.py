"""What is worth retrying, and how long to wait (ARCHITECTURE §4 rules 3 and 5)."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

# Transient by Omnisend's own docs: 408 timeout, 429 rate limit, 500/502/503/504 server or gateway trouble,
# 524 Cloudflare timeout (omnisend-api.md §4). Everything else 4xx is the request's fault and would fail again.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 524})

# Attempts per request (the first try included). With the backoff below, five waits average ~15 s in total:
# long enough to ride out a short Omnisend hiccup, short enough to stay well inside an Azure Functions
# invocation. The Functions orchestrator passes max_attempts=1 and re-enqueues with a delay instead.
DEFAULT_MAX_ATTEMPTS = 6
# Full-jitter exponential backoff (wait = uniform(0, min(cap, base * 2**(n-1)))): jitter spreads the retries of
# many threads so they do not come back in lockstep; the cap keeps one wait under half the 60 s rate window.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
# A server hint longer than this is not slept through inside a request: RetryLater is raised at once with the hint,
# so the orchestrator can park the work (a queue message delay) instead of holding a worker for minutes.
MAX_INLINE_WAIT_SECONDS = 60.0


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """Wait before attempt ``attempt + 1`` after ``attempt`` failed tries (attempt >= 1)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return rng.uniform(0.0, ceiling)


def parse_retry_after_header(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds)


# v3 answers 403 both for "access not allowed" and for "blocked due to many errors in a particular time"
# (omnisend-api.md §1, §4.1). Neither the block's body nor its length is documented; a 403 whose message speaks
# of a block or of too many errors is treated as that temporary block and retried after this wait (every thread
# waits: it defers the pacer like a 429), any other 403 as a refused key.
V3_BLOCK_WAIT_SECONDS = 60.0
V3_BLOCK_WORDS = ("block", "too many")
# X-Rate-Limit-Reset is "seconds left in the current period" (observed value 60). A value this large can only be
# an epoch time; it is read as one rather than slept through for 50 years.
EPOCH_THRESHOLD = 1_000_000_000


def looks_like_temporary_block(message: str) -> bool:
    text = message.lower()
    return any(word in text for word in V3_BLOCK_WORDS)


def parse_rate_limit_reset(value: str | None, now: float | None = None) -> float | None:
    """v3 ``X-Rate-Limit-Reset``: seconds until the rate window resets. None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds >= EPOCH_THRESHOLD:
        seconds -= time.time() if now is None else now
    return max(0.0, seconds)
