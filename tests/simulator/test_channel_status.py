"""Channel-status rules: v3 last-write-by-statusDate, v3 implicit "subscribed", 2026 no-channel rule."""

from __future__ import annotations

from tests.simulator.conftest import contact_2026, contact_v3

OLD = "2024-06-01T00:00:00Z"
STORED = "2025-01-01T00:00:00Z"
NEWER = "2025-06-01T00:00:00Z"


def _status(sim, email="ann@example.com"):
    contact = sim.contacts()[email]
    return contact["status"], contact["statusDate"]


def test_v3_older_status_date_changes_neither_status_nor_date(sim, v3):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED)

    v3.post("/contacts", json=contact_v3("ann@example.com", status="subscribed", status_date=OLD))

    assert _status(sim) == ("unsubscribed", STORED)


def test_v3_equal_status_date_changes_nothing(sim, v3):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED)

    v3.post("/contacts", json=contact_v3("ann@example.com", status="subscribed", status_date=STORED))

    assert _status(sim) == ("unsubscribed", STORED)


def test_v3_newer_status_date_wins(sim, v3):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED)

    v3.post("/contacts", json=contact_v3("ann@example.com", status="subscribed", status_date=NEWER))

    assert _status(sim) == ("subscribed", NEWER)


def test_v3_missing_status_date_means_now(sim, v3):
    sim.seed_contact(email="ann@example.com", status="subscribed", status_date=STORED)

    v3.post("/contacts", json=contact_v3("ann@example.com", status="unsubscribed"))

    status, date = _status(sim)
    assert status == "unsubscribed"
    assert date > STORED


def test_v3_omitted_status_defaults_to_subscribed_for_a_new_contact(sim, v3):
    v3.post("/contacts", json=contact_v3("ann@example.com", status=None))

    assert sim.contacts()["ann@example.com"]["status"] == "subscribed"


def test_v3_accepts_lowercase_nonsubscribed_alias(sim, v3):
    response = v3.post("/contacts", json=contact_v3("ann@example.com", status="nonsubscribed"))

    assert response.status_code == 200
    assert sim.contacts()["ann@example.com"]["status"] == "nonSubscribed"


def test_2026_new_contact_without_channels_is_non_subscribed(sim, api):
    api.post("/contacts", json=contact_2026("ann@example.com", status=None))

    assert sim.contacts()["ann@example.com"]["status"] == "nonSubscribed"


def test_2026_existing_contact_without_channels_keeps_its_status(sim, api):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED, api_version="2026-03-15")

    api.post("/contacts", json=contact_2026("ann@example.com", status=None, firstName="Ann"))

    assert _status(sim) == ("unsubscribed", STORED)
    assert sim.contacts()["ann@example.com"]["fields"] == {"firstName": "Ann"}


def test_2026_older_status_changed_at_is_ignored(sim, api):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED, api_version="2026-03-15")

    api.post("/contacts", json=contact_2026("ann@example.com", status="subscribed", changed_at=OLD))

    assert _status(sim) == ("unsubscribed", STORED)


def test_2026_newer_status_changed_at_applies(sim, api):
    sim.seed_contact(email="ann@example.com", status="unsubscribed", status_date=STORED, api_version="2026-03-15")

    api.post("/contacts", json=contact_2026("ann@example.com", status="subscribed", changed_at=NEWER))

    assert _status(sim) == ("subscribed", NEWER)


def test_2026_channel_without_status_is_a_validation_error(api):
    item = {"identifiers": [{"type": "email", "id": "ann@example.com", "channels": {"email": {}}}]}

    response = api.post("/contacts", json=item)

    assert response.status_code == 400
    assert response.json()["errors"][0] == {
        "field": "identifiers[0].channels.email.status",
        "code": "required",
        "message": "field required but not found in Json",
    }
