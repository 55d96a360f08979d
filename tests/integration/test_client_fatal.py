"""What the client does with answers that mean "stop" or "wait", against the simulator (omnisend-api.md §1, §4, §8.1).

403 is undocumented in its details: on v3 it is either a temporary block ("blocked due to many errors") or a refusal;
on 2026 it means a missing permission. The simulator can answer each way (block_403, auth_status=403,
forbidden_routes) and each is tested here.
"""

from __future__ import annotations

import socket

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from shared.errors import AuthRejected, RetryLater
from shared.omnisend import OmnisendClient, Pacer
from shared.omnisend.breaker import BREAKER_MIN_FAILURES, BREAKER_MIN_SECONDS
from shared.omnisend.errors import BaseUrlNotFound, OmnisendUnreachable
from shared.omnisend.retry import V3_BLOCK_WAIT_SECONDS
from shared.stopping import Stopped, StopSignal
from tests.integration.test_client_resilience import ITEM_2026, ITEM_V3


class RecordedWaits:
    """A pacer's sleep that records the waits instead of sleeping them (the waiting itself is the pacer's unit test)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(base_url: str, version: str = "2026-03-15", key: str = "test-key", **kwargs) -> OmnisendClient:
    class _Key:
        def get(self, refresh: bool = False) -> str:
            return key

    kwargs.setdefault("pacer", Pacer(60_000))
    return OmnisendClient(base_url=base_url, api_version=version, api_key=_Key(), **kwargs)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def v3():
    with Simulator(SimConfig(api_keys=("test-key",), batch_delay=0.02)) as sim:
        yield sim


# ---- 403 ----------------------------------------------------------------------------------------------------


def test_a_v3_temporary_block_is_waited_out_for_every_thread_then_the_batch_goes_through(v3):
    v3.configure(block_403=1)
    waits = RecordedWaits()
    client = client_for(v3.base_url, "v3", pacer=Pacer(60_000, sleep=waits))

    assert client.create_batch([ITEM_V3])

    assert v3.stats()["responses_by_status"] == {"403": 1, "200": 1}
    assert max(waits.waits) == pytest.approx(V3_BLOCK_WAIT_SECONDS, abs=1.0)


def test_a_v3_temporary_block_in_functions_hands_the_wait_to_the_queue(v3):
    v3.configure(block_403=1)
    client = client_for(v3.base_url, "v3", max_attempts=1)

    with pytest.raises(RetryLater) as caught:
        client.create_batch([ITEM_V3])

    assert caught.value.status == 403 and caught.value.retry_after == V3_BLOCK_WAIT_SECONDS


def test_a_v3_plain_forbidden_is_a_refused_key_not_a_block(v3):
    v3.configure(auth_status=403)

    with pytest.raises(AuthRejected, match="the key was refused or lacks permission for POST /v3/batches"):
        client_for(v3.base_url, "v3", key="wrong-key").create_batch([ITEM_V3])

    assert v3.stats()["requests_total"] == 2  # the first try and one after re-reading the key


def test_a_2026_403_names_the_permission_the_key_lacks(simulator):
    simulator.configure(forbidden_routes=["POST /batches"])
    client = client_for(simulator.base_url)

    client.preflight()  # reading is allowed
    with pytest.raises(AuthRejected) as caught:
        client.create_batch([ITEM_2026])

    assert "the key was refused or lacks permission for POST /api/batches" in str(caught.value)
    assert "→ 403" in str(caught.value)


# ---- 429 on v3 ----------------------------------------------------------------------------------------------


def test_a_v3_429_waits_for_x_rate_limit_reset(v3):
    v3.configure(burst_429=1, burst_retry_after=7)
    waits = RecordedWaits()
    client = client_for(v3.base_url, "v3", pacer=Pacer(60_000, sleep=waits))

    assert client.create_batch([ITEM_V3])

    assert max(waits.waits) == pytest.approx(7, abs=0.5)


def test_a_v3_429_hands_x_rate_limit_reset_to_the_caller(v3):
    v3.configure(burst_429=1, burst_retry_after=9)

    with pytest.raises(RetryLater) as caught:
        client_for(v3.base_url, "v3", max_attempts=1).create_batch([ITEM_V3])

    assert (caught.value.status, caught.value.retry_after) == (429, 9)


# ---- 404 on /batches: the base URL -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/api", "/v3"])
def test_a_404_on_post_batches_hints_at_the_base_url(simulator, suffix):
    client = client_for(simulator.base_url + suffix, "v3" if suffix == "/v3" else "2026-03-15")
    item = ITEM_V3 if suffix == "/v3" else ITEM_2026

    with pytest.raises(BaseUrlNotFound) as caught:
        client.create_batch([item])

    assert "should not end in /api or /v3" in str(caught.value)
    assert caught.value.exit_code == 2


def test_the_preflight_proves_the_key_with_one_read_and_writes_nothing(simulator):
    client = client_for(simulator.base_url)

    client.preflight()
    client.preflight()  # proven moments ago: not asked again

    assert simulator.stats()["requests_by_route"] == {"GET /api/batches": 1}
    assert simulator.stats()["write_requests"] == 0


# ---- no answer at all: the circuit breaker -------------------------------------------------------------------


def test_no_answer_at_all_opens_the_breaker_with_the_url_in_the_message():
    url = closed_port_url()
    client = client_for(url)

    with pytest.raises(OmnisendUnreachable) as caught:
        client.preflight()

    assert str(caught.value).startswith(f"cannot reach Omnisend at {url} – check OMNISEND_BASE_URL")
    assert client.requests_made >= BREAKER_MIN_FAILURES


def test_in_functions_each_invocation_fails_fast_until_the_breaker_opens_across_them():
    clock = FakeClock()
    client = client_for(closed_port_url(), max_attempts=1, clock=clock)

    outcomes = []
    for _ in range(BREAKER_MIN_FAILURES):
        try:
            client.preflight()
        except RetryLater:
            outcomes.append("retry later")
        clock.now += BREAKER_MIN_SECONDS / BREAKER_MIN_FAILURES + 0.01  # the message comes back later
    with pytest.raises(OmnisendUnreachable):
        client.preflight()

    assert outcomes == ["retry later"] * BREAKER_MIN_FAILURES


def test_an_answer_between_failures_keeps_the_breaker_closed(simulator):
    simulator.configure(drop_rate=0.5, seed=4)
    client = client_for(simulator.base_url, max_attempts=20)

    ids = [client.create_batch([ITEM_2026]) for _ in range(5)]

    assert len(set(ids)) == 5 and simulator.stats()["dropped"] > 0


# ---- the run's stop flag --------------------------------------------------------------------------------------


def test_a_refused_key_stops_every_later_request_of_the_run(simulator):
    stop = StopSignal()
    client = client_for(simulator.base_url, key="wrong-key", stop=stop)
    with pytest.raises(AuthRejected):
        client.create_batch([ITEM_2026])
    before = simulator.stats()["requests_total"]

    with pytest.raises(Stopped):
        client.batch_statuses(["b-1"])

    assert stop.is_set() and isinstance(stop.reason, AuthRejected)
    assert simulator.stats()["requests_total"] == before


def test_without_a_stop_flag_a_refused_key_does_not_stop_the_next_request(simulator):
    """Functions: one client serves every run of an instance; a stopped run is a blob, not client state."""
    client = client_for(simulator.base_url, key="wrong-key")
    with pytest.raises(AuthRejected):
        client.create_batch([ITEM_2026])

    with pytest.raises(AuthRejected):
        client.create_batch([ITEM_2026])

    assert simulator.stats()["requests_total"] == 4


def test_a_stop_ends_a_long_wait_at_once():
    import threading
    import time

    stop = StopSignal()
    threading.Timer(0.2, stop.stop, args=(RuntimeError("operator"),)).start()
    t0 = time.monotonic()

    stop.sleep(30)

    assert time.monotonic() - t0 < 5
