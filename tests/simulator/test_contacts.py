"""Single-contact upsert, lookup and field validation (reference §2)."""

from __future__ import annotations

from tests.simulator.conftest import contact_2026, contact_v3


def test_2026_post_creates_with_201_then_updates_with_200(api):
    first = api.post("/contacts", json=contact_2026("ann@example.com"))
    second = api.post("/contacts", json=contact_2026("ann@example.com", firstName="Ann"))

    assert first.status_code == 201
    assert second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["firstName"] == "Ann"


def test_v3_post_returns_200_with_email_and_contact_id(v3):
    response = v3.post("/contacts", json=contact_v3("ann@example.com"))

    assert response.status_code == 200
    assert set(response.json()) == {"email", "contactID"}
    assert response.json()["email"] == "ann@example.com"


def test_upsert_is_keyed_on_exact_case_email(api, sim):
    api.post("/contacts", json=contact_2026("Ann@example.com"))
    api.post("/contacts", json=contact_2026("ann@example.com"))

    assert set(sim.contacts()) == {"Ann@example.com", "ann@example.com"}


def test_tags_are_merged_into_existing_tags(api, sim):
    api.post("/contacts", json=contact_2026("ann@example.com", tags=["vip", "2025"]))
    api.post("/contacts", json=contact_2026("ann@example.com", tags=["2025", "segment-q3"]))

    assert sim.contacts()["ann@example.com"]["tags"] == ["vip", "2025", "segment-q3"]


def test_custom_properties_are_merged_and_other_fields_kept(api, sim):
    api.post("/contacts", json=contact_2026("ann@example.com", firstName="Ann", customProperties={"a": 1}))
    api.post("/contacts", json=contact_2026("ann@example.com", lastName="Lee", customProperties={"b": "x"}))

    stored = sim.contacts()["ann@example.com"]
    assert stored["fields"] == {"firstName": "Ann", "lastName": "Lee"}
    assert stored["customProperties"] == {"a": 1, "b": "x"}


def test_2026_get_by_email_returns_contacts_and_cursor_paging(api):
    api.post("/contacts", json=contact_2026("ann@example.com"))

    body = api.get("/contacts", params={"email": "ann@example.com"}).json()

    assert [c["email"] for c in body["contacts"]] == ["ann@example.com"]
    assert body["paging"] == {"limit": 100, "hasMore": False, "cursors": {"after": None, "before": None}}


def test_get_by_unknown_email_returns_empty_list(api):
    body = api.get("/contacts", params={"email": "nobody@example.com"}).json()

    assert body["contacts"] == []


def test_v3_get_by_email_returns_v3_contact_shape(v3):
    v3.post("/contacts", json=contact_v3("ann@example.com", status="unsubscribed", status_date="2025-01-01T00:00:00Z"))

    body = v3.get("/contacts", params={"email": "ann@example.com"}).json()

    contact = body["contacts"][0]
    assert contact["contactID"]
    assert contact["identifiers"][0]["channels"]["email"] == {
        "status": "unsubscribed",
        "statusDate": "2025-01-01T00:00:00Z",
    }
    assert body["paging"] == {"previous": None, "next": None, "offset": 0, "limit": 100}


def test_2026_invalid_contact_returns_all_field_errors_at_once(api, sim):
    bad = contact_2026("not-an-email", countryCode="LTU", gender="x", birthdate="1990-13-01")

    response = api.post("/contacts", json=bad)

    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "https://problems.omnisend.com/validation-failed"
    assert {e["field"] for e in body["errors"]} == {"identifiers[0].id", "countryCode", "gender", "birthdate"}
    assert all({"field", "code", "message"} == set(e) for e in body["errors"])
    assert sim.contacts() == {}


def test_v3_invalid_contact_uses_error_and_fields(v3):
    response = v3.post("/contacts", json={"identifiers": [{"type": "email", "id": "ann@example.com"}]})

    assert response.status_code == 400
    assert response.json() == {
        "error": "1 error(s) found. Check 'fields' array for details.",
        "fields": {"0": ["identifiers[0].channels: field required but not found in Json"]},
    }


def test_phone_identifier_must_be_e164(api):
    item = contact_2026("ann@example.com")
    item["identifiers"].append({"type": "phone", "id": "0037060000000", "channels": {"sms": {"status": "subscribed"}}})

    response = api.post("/contacts", json=item)

    assert [e["field"] for e in response.json()["errors"]] == ["identifiers[1].id"]


def test_phone_owned_by_another_contact_is_silently_dropped(api, sim):
    phone = {"type": "phone", "id": "+37060000000", "channels": {"sms": {"status": "subscribed"}}}
    first, second = contact_2026("ann@example.com"), contact_2026("bob@example.com")
    first["identifiers"].append(phone)
    second["identifiers"].append(phone)

    api.post("/contacts", json=first)
    response = api.post("/contacts", json=second)

    assert response.status_code == 201
    assert sim.contacts()["ann@example.com"]["phone"] == "+37060000000"
    assert sim.contacts()["bob@example.com"]["phone"] is None


def test_custom_property_rules_are_enforced(api):
    props = {"bad-name": 1, "long": "x" * 2049, "nested": {"a": 1}, "ok_list": ["a", "b"]}

    response = api.post("/contacts", json=contact_2026("ann@example.com", customProperties=props))

    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"customProperties.bad-name", "customProperties.long", "customProperties.nested"}


def test_more_than_100_tags_is_rejected(api):
    response = api.post("/contacts", json=contact_2026("ann@example.com", tags=[f"t{i}" for i in range(101)]))

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "tags"


def test_2026_created_at_is_stored_as_external_created(api, sim):
    api.post("/contacts", json=contact_2026("ann@example.com", createdAt="2020-05-01T10:00:00Z"))

    assert sim.contacts()["ann@example.com"]["customProperties"] == {"externalCreated": "2020-05-01T10:00:00Z"}
