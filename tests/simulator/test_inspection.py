"""The /_sim/* inspection API and its Python mirror (not part of Omnisend; no auth, no faults)."""

from __future__ import annotations

import requests

from tests.simulator.conftest import contact_2026, contact_v3


def test_state_counts_requests_by_route_template(sim, api, v3):
    batch_id = api.batch([contact_2026("ann@example.com")]).json()["batchID"]
    api.wait_batch(batch_id)
    v3.post("/contacts", json=contact_v3("bob@example.com"))

    stats = requests.get(sim.base_url + "/_sim/state", timeout=10).json()["stats"]

    assert stats["requests_by_route"]["POST /api/batches"] == 1
    assert stats["requests_by_route"]["GET /api/batches/{id}/items"] == 1
    assert stats["requests_by_route"]["POST /v3/contacts"] == 1
    assert stats["requests_total"] == sum(stats["requests_by_route"].values())
    assert stats["write_requests"] == 2
    assert stats["batches_by_status"] == {"pending": 0, "inProgress": 0, "finished": 1, "stopped": 0}


def test_state_contacts_carry_identifiers_status_and_tags(sim, api):
    api.post("/contacts", json=contact_2026("ann@example.com", changed_at="2025-01-01T00:00:00Z", tags=["t"]))

    contact = requests.get(sim.base_url + "/_sim/state", timeout=10).json()["contacts"]["ann@example.com"]

    assert contact["identifiers"] == [{
        "id": "ann@example.com", "type": "email",
        "channels": {"email": {"status": "subscribed", "statusDate": "2025-01-01T00:00:00Z",
                               "statusChangedAt": "2025-01-01T00:00:00Z"}},
    }]  # fmt: skip
    assert contact["tags"] == ["t"]
    assert contact["apiVersion"] == "2026-03-15"


def test_state_can_leave_out_contacts(sim):
    sim.seed_contact(email="ann@example.com")

    body = requests.get(sim.base_url + "/_sim/state?contacts=0", timeout=10).json()

    assert "contacts" not in body
    assert body["stats"]["contacts_total"] == 1


def test_config_endpoint_merges_into_config(sim):
    response = requests.post(sim.base_url + "/_sim/config", json={"latency": 0.01, "burst_429": 2}, timeout=10)

    assert response.status_code == 200
    assert sim.state()["config"]["latency"] == 0.01
    assert sim.state()["config"]["burst_429"] == 2
    assert sim.state()["config"]["batch_delay"] == 0.05


def test_config_endpoint_rejects_unknown_fields(sim):
    response = requests.post(sim.base_url + "/_sim/config", json={"no_such_option": 1}, timeout=10)

    assert response.status_code == 400
    assert "no_such_option" in response.json()["error"]


def test_reset_clears_state_and_restores_config(sim, api):
    api.post("/contacts", json=contact_2026("ann@example.com"))
    sim.configure(error_5xx_rate=0.5)

    response = requests.post(sim.base_url + "/_sim/reset", timeout=10)

    assert response.status_code == 200
    state = sim.state()
    assert state["contacts"] == {}
    assert state["stats"]["requests_total"] == 0
    assert state["config"]["error_5xx_rate"] == 0.0


def test_seed_contacts_over_http(sim, api):
    seed = {"email": "ann@example.com", "status": "unsubscribed", "status_date": "2025-01-01T00:00:00Z",
            "tags": ["legacy"], "api_version": "2026-03-15"}  # fmt: skip

    response = requests.post(sim.base_url + "/_sim/contacts", json={"contacts": [seed]}, timeout=10)
    found = api.get("/contacts", params={"email": "ann@example.com"}).json()["contacts"][0]

    assert response.status_code == 200
    assert found["status"] == "unsubscribed"
    assert found["tags"] == ["legacy"]
    assert found["identifiers"][0]["channels"]["email"]["statusChangedAt"] == "2025-01-01T00:00:00Z"


def test_inspection_requests_are_not_counted(sim):
    requests.get(sim.base_url + "/_sim/state", timeout=10)
    requests.post(sim.base_url + "/_sim/config", json={}, timeout=10)

    assert sim.stats()["requests_total"] == 0


def test_unknown_api_route_is_404_in_version_shape(api, v3):
    assert api.get("/segments").json()["type"] == "https://problems.omnisend.com/not-found"
    assert "error" in v3.get("/segments").json()


def test_seeding_an_existing_contact_keeps_its_status_and_merges_tags(sim):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date="2025-01-01T00:00:00Z", tags=["a"])

    sim.seed_contact(email="ann@example.com", tags=["b"])

    contact = sim.contacts()["ann@example.com"]
    assert (contact["status"], contact["statusDate"]) == ("unsubscribed", "2025-01-01T00:00:00Z")
    assert contact["tags"] == ["a", "b"]
