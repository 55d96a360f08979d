"""Claims that expire (shared/leases.py): one holder at a time, taken over once the holder's lease ran out."""

from __future__ import annotations

from shared.leases import chain_append, chain_latest, claim, current
from shared.storage import LocalObjectStore

PREFIX = "vip/runs/r-1/finalise/claim."


def test_a_live_claim_keeps_everyone_else_out(tmp_path):
    store = LocalObjectStore(tmp_path)
    assert claim(store, "runs", PREFIX, now=100.0, seconds=60) is not None
    assert claim(store, "runs", PREFIX, now=159.0, seconds=60) is None


def test_an_expired_claim_is_taken_over_by_exactly_one_next_holder(tmp_path):
    store = LocalObjectStore(tmp_path)
    first = claim(store, "runs", PREFIX, now=100.0, seconds=60)
    second = claim(store, "runs", PREFIX, now=161.0, seconds=60)
    assert second is not None and second.generation == first.generation + 1
    assert current(store, "runs", PREFIX) == second
    assert claim(store, "runs", PREFIX, now=162.0, seconds=60) is None


def test_take_over_ignores_a_live_claim_whose_holder_is_known_dead(tmp_path):
    store = LocalObjectStore(tmp_path)
    claim(store, "runs", PREFIX, now=100.0, seconds=60)
    assert claim(store, "runs", PREFIX, now=101.0, seconds=60, take_over=True).generation == 2


def test_a_pointer_chain_has_one_winner_per_generation_and_forgets_old_ones(tmp_path):
    store = LocalObjectStore(tmp_path)
    assert chain_latest(store, "state", "vip/active/") == (0, {})
    for generation in range(20):
        assert chain_append(store, "state", "vip/active/", generation, {"runId": f"r-{generation}"})
    assert not chain_append(store, "state", "vip/active/", 5, {"runId": "late"})
    assert chain_latest(store, "state", "vip/active/") == (20, {"runId": "r-19"})
    assert len(list(store.list("state", "vip/active/"))) <= 13
