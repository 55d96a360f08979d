"""Switches for what Omnisend's docs leave open about batches: a batch it no longer knows (404 after its retention),
and /items entries without the ``request`` echo (docs/simulator.md)."""

from __future__ import annotations

import time

import pytest

from tests.simulator.conftest import contact_2026, wait_until


def _items(n, prefix="c"):
    return [contact_2026(f"{prefix}{i}@example.com") for i in range(n)]


def test_a_batch_past_its_retention_seconds_is_404_and_gone_from_the_list(api, sim):
    batch_id = api.batch(_items(3)).json()["batchID"]
    api.wait_batch(batch_id)
    sim.configure(batch_retention_seconds=0)

    assert api.get(f"/batches/{batch_id}").status_code == 404
    assert api.get(f"/batches/{batch_id}/items").status_code == 404
    assert api.get("/batches", params={"endpoint": "contacts"}).json()["batches"] == []
    assert sim.stats()["batches_forgotten"] == 1


def test_a_batch_read_its_retention_polls_times_is_404_afterwards(api, sim):
    sim.configure(batch_retention_polls=2)
    batch_id = api.batch(_items(1)).json()["batchID"]
    wait_until(lambda: sim.stats()["batches_by_status"]["finished"] == 1, "the batch to finish")

    answers = [api.get(f"/batches/{batch_id}").status_code for _ in range(3)]

    assert answers == [200, 200, 404]


def test_a_batch_forgotten_before_it_ran_applies_nothing(api, sim):
    sim.configure(batch_delay=0.5)
    batch_id = api.batch(_items(2)).json()["batchID"]
    sim.configure(batch_retention_seconds=0)
    assert api.get(f"/batches/{batch_id}").status_code == 404

    time.sleep(0.7)  # past the batch's delay: it would have been applied by now
    assert sim.contacts() == {}


def test_items_carry_the_request_echo_by_default(api, sim):
    sim.configure(item_fail={"c1@example.com": 400})
    body = api.submit_and_wait(_items(2))

    assert body["errors"][0]["request"]["identifiers"][0]["id"] == "c1@example.com"
    assert body["responses"][0]["request"]["identifiers"][0]["id"] == "c0@example.com"


def test_items_echo_position_replaces_the_request_with_the_items_index(api, sim):
    sim.configure(item_fail={"c1@example.com": 400}, batch_items_echo="position")
    body = api.submit_and_wait(_items(3))

    assert [e["position"] for e in body["errors"]] == [1]
    assert [r["position"] for r in body["responses"]] == [0, 2]
    assert all("request" not in e for e in body["errors"] + body["responses"])


def test_items_echo_none_leaves_only_the_item_id(api, sim):
    sim.configure(item_fail={"c1@example.com": 400}, batch_items_echo="none")
    body = api.submit_and_wait(_items(2))

    [error] = body["errors"]
    assert error["itemID"] and "request" not in error and "position" not in error
    assert body["errorsCount"] == 1


def test_an_unknown_echo_mode_is_refused(sim):
    with pytest.raises(ValueError, match="batch_items_echo"):
        sim.configure(batch_items_echo="sometimes")
