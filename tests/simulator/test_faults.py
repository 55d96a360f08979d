"""Fault injection: 5xx, dropped connections, 429 bursts, per-item failures; seeded and reproducible."""

from __future__ import annotations

import pytest
import requests

from tests.simulator.conftest import contact_2026, contact_v3


def _outcome(client, i):
    try:
        return client.post("/contacts", json=contact_2026(f"c{i}@example.com")).status_code
    except requests.ConnectionError:
        return "dropped"


def test_5xx_answers_apply_nothing(sim, api):
    sim.configure(error_5xx_rate=1.0)

    response = api.post("/contacts", json=contact_2026("ann@example.com"))

    assert response.status_code in (500, 503)
    assert response.json()["status"] == response.status_code
    assert sim.contacts() == {}
    assert sim.stats()["responses_5xx"] == 1


def test_v3_5xx_uses_error_body(sim, v3):
    sim.configure(error_5xx_rate=1.0)

    response = v3.post("/contacts", json=contact_v3("ann@example.com"))

    assert response.status_code in (500, 503)
    assert set(response.json()) == {"error"}


def test_dropped_request_closes_the_connection_without_answer(sim, api):
    sim.configure(drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        api.post("/contacts", json=contact_2026("ann@example.com"))

    assert sim.contacts() == {}
    assert sim.stats()["dropped"] == 1


def test_same_seed_gives_the_same_fault_sequence(sim, api):
    sim.configure(seed=7, error_5xx_rate=0.3, drop_rate=0.2)
    first = [_outcome(api, i) for i in range(30)]
    sim.reset()
    sim.configure(seed=7, error_5xx_rate=0.3, drop_rate=0.2)

    second = [_outcome(api, i) for i in range(30)]

    assert first == second
    assert {"dropped", 201} <= set(first)
    assert {500, 503} & set(first)


def test_burst_429_refuses_the_next_n_requests(sim, api):
    sim.configure(burst_429=2, burst_retry_after=3)

    codes = [api.get("/contacts").status_code for _ in range(3)]
    sim.configure(burst_429=1)
    refused = api.get("/contacts")

    assert codes == [429, 429, 200]
    assert refused.json()["retryAfter"] == 3


def test_item_fail_forces_a_retryable_item_error(sim, api):
    sim.configure(item_fail={"bob@example.com": 500})

    body = api.submit_and_wait([contact_2026("ann@example.com"), contact_2026("bob@example.com")])

    [error] = body["errors"]
    assert error["responseCode"] == 500
    assert error["response"]["status"] == 500
    assert set(sim.contacts()) == {"ann@example.com"}


def test_item_fail_times_lets_the_item_succeed_on_resubmission(sim, api):
    sim.configure(item_fail={"bob@example.com": 503}, item_fail_times=1)

    first = api.submit_and_wait([contact_2026("bob@example.com")])
    second = api.submit_and_wait([contact_2026("bob@example.com")])

    assert first["errorsCount"] == 1
    assert second["errorsCount"] == 0
    assert "bob@example.com" in sim.contacts()


def test_faults_never_touch_inspection_endpoints(sim):
    sim.configure(error_5xx_rate=1.0, drop_rate=1.0, burst_429=5)

    response = requests.get(sim.base_url + "/_sim/state", timeout=10)

    assert response.status_code == 200
    assert response.json()["stats"]["requests_total"] == 0


def test_latency_still_answers(sim, api):
    sim.configure(latency=0.05)

    assert api.post("/contacts", json=contact_2026("ann@example.com")).status_code == 201
