"""Retry classification and backoff."""

from __future__ import annotations

import random

import pytest

from shared.omnisend.retry import (
    BACKOFF_CAP_SECONDS,
    backoff_seconds,
    is_retryable_status,
    parse_retry_after_header,
)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 524])
def test_transient_statuses_are_retried(status):
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 413, 422, 501])
def test_request_faults_are_not_retried(status):
    assert not is_retryable_status(status)


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (20, BACKOFF_CAP_SECONDS)]:
        waits = [backoff_seconds(attempt, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling * 0.8  # really spread over the range, not a constant


def test_backoff_is_deterministic_for_a_seeded_source():
    assert [backoff_seconds(3, random.Random(1)) for _ in range(2)] == [backoff_seconds(3, random.Random(1))] * 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), (" 2.5 ", 2.5), ("Sun, 29 Nov 2026 05:00:30 GMT", 30.0), ("-4", 0.0), ("soon", None), (None, None)],
)
def test_retry_after_header(header, seconds):
    now = 1795928400.0  # 2026-11-29T05:00:00Z
    assert parse_retry_after_header(header, now=now) == seconds
