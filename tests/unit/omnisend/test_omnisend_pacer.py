"""Pacer: evenly spaced slots, never more than rpm requests in any 60 s window, 429 deferral, thread safety."""

from __future__ import annotations

import threading

import pytest

from shared.omnisend import Pacer


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def grant_times(pacer: Pacer, t: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        pacer.acquire()
        times.append(t.now)
    return times


def test_first_request_is_immediate_and_the_rest_evenly_spaced():
    t = FakeTime()
    pacer = Pacer(120, clock=t.clock, sleep=t.sleep)

    times = grant_times(pacer, t, 5)

    assert times == [1000.0, 1000.5, 1001.0, 1001.5, 1002.0]


def test_never_more_than_rpm_requests_in_any_60_second_window():
    t = FakeTime()
    pacer = Pacer(400, clock=t.clock, sleep=t.sleep)

    times = grant_times(pacer, t, 1200)

    for i, start in enumerate(times):
        in_window = sum(1 for x in times[i:] if x < start + 60.0)
        assert in_window <= 400


def test_idle_time_is_not_banked_into_a_burst():
    t = FakeTime()
    pacer = Pacer(60, clock=t.clock, sleep=t.sleep)
    pacer.acquire()
    t.now += 300  # idle for five minutes

    times = grant_times(pacer, t, 3)

    assert times == [1300.0, 1301.0, 1302.0]


def test_defer_holds_every_slot_until_the_deadline():
    t = FakeTime()
    pacer = Pacer(600, clock=t.clock, sleep=t.sleep)
    pacer.acquire()

    pacer.defer(5.0)
    times = grant_times(pacer, t, 2)

    assert times == [1005.0, 1005.1]


def test_defer_never_moves_the_next_slot_earlier():
    t = FakeTime()
    pacer = Pacer(600, clock=t.clock, sleep=t.sleep)
    pacer.defer(10.0)
    pacer.defer(2.0)

    assert grant_times(pacer, t, 1) == [1010.0]


def test_concurrent_callers_each_get_their_own_evenly_spaced_slot():
    frozen = 50.0
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    pacer = Pacer(60, clock=lambda: frozen, sleep=record)
    threads = [threading.Thread(target=lambda: [pacer.acquire() for _ in range(25)]) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    # 200 slots: the first is immediate (no sleep), then 1 s, 2 s, ... 199 s after the frozen "now".
    assert sorted(waits) == [float(i) for i in range(1, 200)]


@pytest.mark.parametrize("rpm", [0, -5])
def test_a_non_positive_rate_is_refused(rpm):
    with pytest.raises(ValueError):
        Pacer(rpm)
