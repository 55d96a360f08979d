"""Two brands on one simulator: with ``separate_brands`` each API key has its own contacts, as two Omnisend stores."""

from __future__ import annotations

import requests

from tests.simulator.conftest import KEY, OTHER_KEY, VERSION, Client, contact_2026


def client(sim, key: str) -> Client:
    return Client(sim.base_url + "/api", {"Authorization": f"Omnisend-API-Key {key}", "Omnisend-Version": VERSION})


def test_by_default_every_key_reaches_the_same_contacts(sim):
    client(sim, KEY).submit_and_wait([contact_2026("ann@example.com")])

    found = client(sim, OTHER_KEY).get("/contacts?email=ann@example.com").json()["contacts"]

    assert [c["identifiers"][0]["id"] for c in found] == ["ann@example.com"]


def test_with_separate_brands_a_contact_sent_with_one_key_is_not_in_the_other_brand(sim):
    sim.configure(separate_brands=True)

    client(sim, KEY).submit_and_wait([contact_2026("ann@example.com")])
    client(sim, OTHER_KEY).submit_and_wait([contact_2026("bob@example.com")])

    assert set(sim.contacts()) == {"ann@example.com"}
    assert set(sim.contacts(brand=OTHER_KEY)) == {"bob@example.com"}
    assert client(sim, OTHER_KEY).get("/contacts?email=ann@example.com").json()["contacts"] == []
    assert sim.contact("bob@example.com") is None and sim.contact("bob@example.com", brand=OTHER_KEY) is not None


def test_with_separate_brands_the_inspection_endpoint_shows_one_brand(sim):
    sim.configure(separate_brands=True)
    client(sim, OTHER_KEY).submit_and_wait([contact_2026("bob@example.com")])

    state = requests.get(sim.base_url + "/_sim/state", params={"brand": OTHER_KEY}, timeout=10).json()

    assert set(state["contacts"]) == {"bob@example.com"}


def test_each_key_has_its_own_rate_limit(sim):
    sim.configure(requests_per_minute=2)
    first, second = client(sim, KEY), client(sim, OTHER_KEY)

    assert [first.get("/contacts?email=a@example.com").status_code for _ in range(3)] == [200, 200, 429]
    assert second.get("/contacts?email=a@example.com").status_code == 200
