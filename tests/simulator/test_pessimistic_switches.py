"""The pessimistic switches: each makes the simulator behave the way Omnisend's documentation does not rule out
(reference §8.1), so the consent probe and the exporter can be tested against it. Off, the rules in
test_channel_status.py and test_tags.py hold."""

from __future__ import annotations

from tests.simulator.conftest import contact_2026, contact_v3, wait_until

STORED = "2025-01-01T00:00:00Z"
OLD = "1970-01-01T00:00:00Z"


def test_no_channels_resets_status_makes_an_existing_contact_non_subscribed(sim, api):
    sim.configure(no_channels_resets_status=True)
    sim.seed_contact(email="ann@example.com", status="subscribed", status_date=STORED)
    api.post("/contacts", json=contact_2026("ann@example.com", status=None))
    assert sim.contact("ann@example.com")["status"] == "nonSubscribed"


def test_no_channels_new_subscribed_creates_a_subscribed_contact(sim, api):
    sim.configure(no_channels_new_subscribed=True)
    api.post("/contacts", json=contact_2026("new@example.com", status=None))
    assert sim.contact("new@example.com")["status"] == "subscribed"


def test_older_status_date_overrides_on_2026(sim, api):
    sim.configure(older_status_date_overrides=True)
    sim.seed_contact(email="ann@example.com", status="subscribed", status_date=STORED)
    api.post("/contacts", json=contact_2026("ann@example.com", status="unsubscribed", changed_at=OLD))
    assert sim.contact("ann@example.com")["status"] == "unsubscribed"


def test_older_status_date_overrides_on_v3(sim, v3):
    sim.configure(older_status_date_overrides=True)
    sim.seed_contact(email="ann@example.com", status="subscribed", status_date=STORED)
    v3.post("/contacts", json=contact_v3("ann@example.com", status="unsubscribed", status_date=OLD))
    assert sim.contact("ann@example.com")["status"] == "unsubscribed"


def test_upsert_tags_replace_drops_the_contacts_other_tags(sim, api):
    sim.configure(upsert_tags_replace=True)
    sim.seed_contact(email="ann@example.com", tags=["legacy"])
    api.post("/contacts", json={**contact_2026("ann@example.com", status=None), "tags": ["ci-vip"]})
    assert sim.contact("ann@example.com")["tags"] == ["ci-vip"]


def test_untag_removes_all_drops_every_tag(sim, api):
    sim.configure(untag_removes_all=True, batch_delay=0.01)
    sim.seed_contact(email="ann@example.com", tags=["legacy", "ci-vip"])
    assert api.delete("/contacts/tags", json={"tags": ["ci-vip"], "emails": ["ann@example.com"]}).status_code == 202
    wait_until(lambda: sim.contact("ann@example.com")["tags"] == [], "the untag to apply")
