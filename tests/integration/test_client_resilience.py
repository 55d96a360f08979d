"""Rate limits, server errors and dropped connections at the simulator: honoured, retried, recovered."""

from __future__ import annotations

import random
import time

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from shared.errors import RetryLater
from shared.omnisend import OmnisendClient, Pacer

ITEM_2026 = {"identifiers": [{"type": "email", "id": "a@example.com", "sendWelcomeMessage": False}]}
ITEM_V3 = {
    "identifiers": [
        {
            "type": "email",
            "id": "a@example.com",
            "sendWelcomeMessage": False,
            "channels": {"email": {"status": "nonSubscribed", "statusDate": "1970-01-01T00:00:00Z"}},
        }
    ]
}


class Key:
    def get(self, refresh: bool = False) -> str:
        return "test-key"


def short_sleep(seconds: float) -> None:
    """Backoff waits shrunk a hundredfold: the retry logic runs for real, the test stays fast."""
    time.sleep(seconds / 100)


def make_client(sim: Simulator, version: str = "2026-03-15", rpm: float = 60_000, **kwargs) -> OmnisendClient:
    kwargs.setdefault("rng", random.Random(3))
    return OmnisendClient(base_url=sim.base_url, api_version=version, api_key=Key(), pacer=Pacer(rpm), **kwargs)


def test_a_429_burst_is_waited_out_using_retry_after(simulator):
    simulator.configure(burst_429=2, burst_retry_after=1)
    client = make_client(simulator)
    started = time.monotonic()

    batch_id = client.create_batch([ITEM_2026])

    assert batch_id
    assert client.responses_429 == 2 and client.requests_made == 3
    assert simulator.stats()["responses_429"] == 2
    assert time.monotonic() - started >= 2.0  # each 429 said retryAfter=1 and the client waited it out


def test_v3_429_without_a_hint_backs_off_and_recovers():
    with Simulator(SimConfig(api_keys=("test-key",), batch_delay=0.05)) as sim:
        sim.configure(burst_429=2)
        client = make_client(sim, "v3", sleep=short_sleep)

        assert client.create_batch([ITEM_V3])
        assert client.responses_429 == 2


def test_a_client_faster_than_the_rate_limit_is_slowed_down_and_loses_nothing():
    # The simulator allows 5 requests per 1 s window; the client's own pacer would send 20 a second.
    config = SimConfig(api_keys=("test-key",), batch_delay=0.05, requests_per_minute=5, rate_window_seconds=1.0)
    with Simulator(config) as sim:
        client = make_client(sim, rpm=1200)

        ids = [client.create_batch([ITEM_2026]) for _ in range(12)]

        assert len(set(ids)) == 12
        assert client.responses_429 > 0
        assert sim.stats()["batches_total"] == 12


def test_server_errors_and_dropped_connections_are_retried_to_success(simulator):
    simulator.configure(error_5xx_rate=0.3, drop_rate=0.2, seed=1)
    client = make_client(simulator, sleep=short_sleep, max_attempts=10)

    ids = [client.create_batch([ITEM_2026]) for _ in range(10)]
    statuses = client.batch_statuses(ids)

    stats = simulator.stats()
    assert stats["responses_5xx"] > 0 and stats["dropped"] > 0
    assert client.requests_made > 11
    assert set(statuses) == set(ids) and all(s.status != "missing" for s in statuses.values())


def test_max_attempts_1_raises_retry_later_at_the_first_transient_failure(simulator):
    simulator.configure(error_5xx_rate=1.0)
    client = make_client(simulator, max_attempts=1)

    with pytest.raises(RetryLater) as caught:
        client.create_batch([ITEM_2026])

    assert caught.value.status in (500, 503)
    assert "POST /api/batches" in str(caught.value)
    assert simulator.stats()["requests_total"] == 1


def test_max_attempts_1_hands_the_retry_after_hint_to_the_caller(simulator):
    simulator.configure(burst_429=1, burst_retry_after=5)
    client = make_client(simulator, max_attempts=1)

    with pytest.raises(RetryLater) as caught:
        client.create_batch([ITEM_2026])

    assert (caught.value.status, caught.value.retry_after) == (429, 5)
