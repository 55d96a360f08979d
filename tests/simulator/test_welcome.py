"""Welcome-message counting: sent when a contact is created or newly subscribed (2026 default true, v3 false)."""

from __future__ import annotations

from tests.simulator.conftest import contact_2026, contact_v3


def _welcomes(sim):
    return sim.stats()["welcome_messages"]


def test_2026_new_contact_without_flag_counts_a_welcome(sim, api):
    api.post("/contacts", json=contact_2026("ann@example.com"))

    assert _welcomes(sim) == 1


def test_2026_send_welcome_false_counts_nothing(sim, api):
    api.post("/contacts", json=contact_2026("ann@example.com", sendWelcomeMessage=False))

    assert _welcomes(sim) == 0


def test_v3_new_contact_without_flag_counts_nothing(sim, v3):
    v3.post("/contacts", json=contact_v3("ann@example.com"))

    assert _welcomes(sim) == 0


def test_v3_send_welcome_true_counts_a_welcome(sim, v3):
    v3.post("/contacts", json=contact_v3("ann@example.com", sendWelcomeMessage=True))

    assert _welcomes(sim) == 1


def test_resubscribing_an_existing_contact_counts_a_welcome(sim, api):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date="2025-01-01T00:00:00Z")

    api.post("/contacts", json=contact_2026("ann@example.com", status="subscribed"))

    assert _welcomes(sim) == 1
    assert sim.contacts()["ann@example.com"]["welcomeMessages"] == 1


def test_updating_an_already_subscribed_contact_counts_nothing(sim, api):
    sim.seed_contact(email="ann@example.com", status="subscribed", status_date="2025-01-01T00:00:00Z")

    api.post("/contacts", json=contact_2026("ann@example.com", status="subscribed"))

    assert _welcomes(sim) == 0


def test_batch_items_count_welcomes_too(sim, api):
    api.submit_and_wait([contact_2026("ann@example.com"), contact_2026("bob@example.com", sendWelcomeMessage=False)])

    assert _welcomes(sim) == 1
