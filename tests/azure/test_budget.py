"""The brand's request budget (shared/budget.py) on a real blob in Azurite: slots evenly spaced, never handed out
twice under concurrent writers, a small blob whatever the schedule, and the side lane for requests made now."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.storage.blob import BlobServiceClient

from shared.budget import SEND_SHARE, SIDE_SHARE, AzureBudgetBlob, BudgetPacer, RequestBudget, SlotMissed
from shared.errors import RetryLater

pytestmark = pytest.mark.azurite

NOW = 1_800_000_000.0


def budget_in(azurite: str, container: str, rpm: float = 300, clock=lambda: NOW) -> RequestBudget:
    return RequestBudget(AzureBudgetBlob(BlobServiceClient.from_connection_string(azurite), container), rpm,
                         clock=clock)


def test_a_reservation_is_evenly_spaced_at_the_send_share_and_the_next_one_continues_after_it(azurite, container):
    budget = budget_in(azurite, container, rpm=300)
    interval = 60 / (300 * SEND_SHARE)

    first = budget.reserve(3)
    second = budget.reserve(2)

    assert first == pytest.approx([NOW, NOW + interval, NOW + 2 * interval])
    assert second == pytest.approx([NOW + 3 * interval, NOW + 4 * interval])


def test_a_retry_reserves_no_earlier_than_its_back_off(azurite, container):
    budget = budget_in(azurite, container)
    [slot] = budget.reserve(1, not_before=NOW + 30)
    assert slot == pytest.approx(NOW + 30)


def test_concurrent_reservations_never_share_a_slot(azurite, container):
    budget = budget_in(azurite, container, rpm=600)
    with ThreadPoolExecutor(8) as pool:
        slots = sorted(itertools.chain.from_iterable(pool.map(lambda _: budget.reserve(5), range(40))))
    assert len(slots) == 200
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) == pytest.approx(60 / (600 * SEND_SHARE), abs=0.002)
    assert budget.conflicts > 0  # the writers did collide, and each collision was re-read and retried


def test_the_blob_stays_small_however_long_the_schedule(azurite, container, blob_service):
    budget = budget_in(azurite, container)
    budget.reserve(10_000)
    blob = blob_service.get_blob_client(container, "_budget/omnisend-requests.json")
    assert blob.get_blob_properties().size < 200


def test_a_request_made_now_uses_the_idle_send_lane_else_the_side_lane(azurite, container):
    budget = budget_in(azurite, container, rpm=300)
    assert budget.take() == pytest.approx(NOW)  # nothing scheduled: the send lane's slot, now
    budget.reserve(100)  # sends booked for the next ~22 s
    side = 60 / (300 * SIDE_SHARE)
    assert [budget.take() for _ in range(3)] == pytest.approx([NOW, NOW + side, NOW + 2 * side])


def test_a_side_slot_too_far_away_is_not_reserved_and_says_when_to_come_back(azurite, container):
    budget = budget_in(azurite, container, rpm=300)
    budget.reserve(1_000)
    side = 60 / (300 * SIDE_SHARE)  # 5 s
    budget.take(max_wait=12)
    budget.take(max_wait=12)
    budget.take(max_wait=12)
    with pytest.raises(RetryLater) as err:
        budget.take(max_wait=12)
    assert err.value.retry_after == pytest.approx(3 * side)
    assert budget.lanes()["side"] == pytest.approx(NOW + 3 * side)  # the refused take reserved nothing


def test_a_429_defers_both_lanes(azurite, container):
    budget = budget_in(azurite, container)
    budget.defer(20)
    assert budget.lanes()["cursor"] == pytest.approx(NOW + 20) and budget.lanes()["side"] == pytest.approx(NOW + 20)
    assert budget.reserve(1) == pytest.approx([NOW + 20])


def test_the_pacer_spends_a_prepaid_slot_once_then_takes_from_the_budget(azurite, container):
    budget = budget_in(azurite, container)
    slept: list[float] = []
    pacer = BudgetPacer(budget, sleep=slept.append)
    budget.reserve(10)  # the send lane is busy
    with pacer.prepaid(NOW + 0.5):
        pacer.acquire()  # the message's own slot: waits for it
        pacer.acquire()  # a second request (a key re-read) in the same invocation: a side-lane slot
    assert slept == pytest.approx([0.5])
    assert budget.lanes()["side"] > NOW


def test_a_prepaid_slot_missed_by_more_than_the_tolerance_refuses_to_send(azurite, container):
    budget = budget_in(azurite, container)
    pacer = BudgetPacer(budget, sleep=lambda s: None)
    with pytest.raises(SlotMissed), pacer.prepaid(NOW - 3, late_tolerance=2):
        pacer.acquire()
    with pacer.prepaid(NOW - 1, late_tolerance=2):
        pacer.acquire()  # late, but within the tolerance: goes now


def test_a_takeovers_prepaid_slots_are_spent_in_order_each_waited_for(azurite, container):
    budget = budget_in(azurite, container)
    slept: list[float] = []
    pacer = BudgetPacer(budget, sleep=slept.append)
    [first, second, third] = budget.reserve(3)  # the three slots its message was released for
    with pacer.prepaid(first, count=3):
        for _ in range(3):
            pacer.acquire()
    assert slept == pytest.approx([second - NOW, third - NOW])  # the first is now; the others are waited for
    assert budget.lanes()["side"] == 0  # nothing was taken at request time


def test_a_prepaid_slot_already_missed_is_skipped_never_used_late(azurite, container):
    clock = [NOW]
    budget = budget_in(azurite, container, clock=lambda: clock[0])
    slept: list[float] = []
    pacer = BudgetPacer(budget, sleep=slept.append)
    slots = budget.reserve(8)
    budget.reserve(100)  # later sends book the send lane
    with pacer.prepaid(slots[0], late_tolerance=0.1, count=8):
        pacer.acquire()  # slot 0, now
        clock[0] = slots[5] + 0.05  # a slow read: slots 1-4 are more than the tolerance past, slot 5 is not
        pacer.acquire()  # slot 5, now
        pacer.acquire()  # slot 6, waited for
        clock[0] = slots[7] + 0.2  # slot 7 missed too: the next request takes a slot of its own (side lane)
        pacer.acquire()
    assert slept == pytest.approx([slots[6] - slots[5] - 0.05])
    assert budget.lanes()["side"] == pytest.approx(clock[0] + 60 / (300 * SIDE_SHARE))


def test_prepaid_slots_all_missed_before_any_was_used_refuse_to_send(azurite, container):
    budget = budget_in(azurite, container)
    pacer = BudgetPacer(budget, sleep=lambda s: None)
    with pytest.raises(SlotMissed), pacer.prepaid(NOW - 10, late_tolerance=2, count=8):
        pacer.acquire()  # its 8 slots span under 2 s: all of them are more than 2 s past
