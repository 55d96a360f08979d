"""Authentication and API-version rules per version (reference §1, §7)."""

from __future__ import annotations

import requests

from tests.simulator.conftest import KEY, VERSION

PROBLEM_BASE = "https://problems.omnisend.com/"


def test_2026_missing_key_is_401_problem(sim):
    response = requests.get(sim.base_url + "/api/contacts?email=a@example.com", headers={"Omnisend-Version": VERSION})

    assert response.status_code == 401
    body = response.json()
    assert body["type"] == PROBLEM_BASE + "unauthorized"
    assert body["status"] == 401
    assert body["instance"].startswith("urn:omnisend:request:")
    assert {"title", "detail"} <= set(body)


def test_2026_unknown_key_is_401(sim):
    headers = {"Authorization": "Omnisend-API-Key wrong", "Omnisend-Version": VERSION}

    response = requests.get(sim.base_url + "/api/contacts?email=a@example.com", headers=headers)

    assert response.status_code == 401


def test_2026_accepts_bearer_token_equal_to_a_key(sim):
    headers = {"Authorization": f"Bearer {KEY}", "Omnisend-Version": VERSION}

    response = requests.get(sim.base_url + "/api/contacts?email=a@example.com", headers=headers)

    assert response.status_code == 200


def test_2026_missing_version_header_is_410(sim):
    response = requests.get(sim.base_url + "/api/contacts", headers={"Authorization": f"Omnisend-API-Key {KEY}"})

    assert response.status_code == 410
    assert response.json()["type"] == PROBLEM_BASE + "api-version-retired"


def test_2026_unknown_version_is_410(sim):
    headers = {"Authorization": f"Omnisend-API-Key {KEY}", "Omnisend-Version": "2024-01-01"}

    response = requests.get(sim.base_url + "/api/contacts", headers=headers)

    assert response.status_code == 410
    assert response.json()["status"] == 410


def test_v3_missing_key_is_401_with_error_body_and_rate_headers(sim):
    response = requests.get(sim.base_url + "/v3/contacts?email=a@example.com")

    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized - authorization error (invalid basic auth data or API key)"}
    assert {"X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Reset"} <= set(response.headers)


def test_auth_status_switch_answers_403_on_v3(sim):
    sim.configure(auth_status=403)

    response = requests.get(sim.base_url + "/v3/contacts", headers={"X-API-KEY": "wrong"})

    assert response.status_code == 403
    assert response.json() == {"error": "Forbidden"}


def test_auth_status_switch_answers_403_problem_on_2026(sim):
    sim.configure(auth_status=403)
    headers = {"Authorization": "Omnisend-API-Key wrong", "Omnisend-Version": VERSION}

    response = requests.get(sim.base_url + "/api/contacts", headers=headers)

    assert response.status_code == 403
    assert response.json()["type"] == PROBLEM_BASE + "forbidden"


def test_v3_has_no_contacts_tags_endpoint(v3):
    response = v3.post("/contacts/tags", json={"tags": ["a"], "emails": ["a@example.com"]})

    assert response.status_code == 404
    assert "error" in response.json()
