"""2026 POST/DELETE /contacts/tags: 202, async, unknown emails ignored, own rate limit (reference §5)."""

from __future__ import annotations

from tests.simulator.conftest import contact_2026, wait_until


def _tags(sim, email="ann@example.com"):
    return sim.contacts()[email]["tags"]


def test_add_tags_answers_202_with_empty_body(api, sim):
    sim.seed_contact(email="ann@example.com", tags=["old"])

    response = api.post("/contacts/tags", json={"tags": ["new"], "emails": ["ann@example.com"]})

    assert response.status_code == 202
    assert response.content == b""


def test_added_tags_are_merged_after_the_delay(api, sim):
    sim.configure(batch_delay=0.3)
    sim.seed_contact(email="ann@example.com", tags=["old"])

    api.post("/contacts/tags", json={"tags": ["new", "old"], "emails": ["ann@example.com"]})

    assert _tags(sim) == ["old"]
    wait_until(lambda: _tags(sim) == ["old", "new"], "tags applied")


def test_delete_removes_only_the_named_tags(api, sim):
    sim.seed_contact(email="ann@example.com", tags=["keep", "drop"])

    api.delete("/contacts/tags", json={"tags": ["drop", "never-there"], "emails": ["ann@example.com"]})

    wait_until(lambda: _tags(sim) == ["keep"], "tag removed")


def test_tags_select_by_contact_id_and_phone(api, sim):
    ann = api.post("/contacts", json=contact_2026("ann@example.com")).json()
    bob = contact_2026("bob@example.com")
    bob["identifiers"].append({"type": "phone", "id": "+37060000001", "channels": {"sms": {"status": "subscribed"}}})
    api.post("/contacts", json=bob)

    api.post("/contacts/tags", json={"tags": ["x"], "contactIDs": [ann["id"]], "phones": ["+37060000001"]})

    wait_until(lambda: _tags(sim) == ["x"] and _tags(sim, "bob@example.com") == ["x"], "tags applied")


def test_unknown_emails_are_silently_ignored(api, sim):
    sim.seed_contact(email="ann@example.com")

    response = api.post("/contacts/tags", json={"tags": ["x"], "emails": ["ann@example.com", "ghost@example.com"]})

    assert response.status_code == 202
    wait_until(lambda: sim.stats()["tag_operations"].get("added") == 1, "tag operation applied")
    assert set(sim.contacts()) == {"ann@example.com"}
    assert _tags(sim) == ["x"]


def test_tag_request_without_selector_is_400(api):
    response = api.post("/contacts/tags", json={"tags": ["x"]})

    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "required"


def test_tag_request_with_251_emails_is_400(api):
    emails = [f"c{i}@example.com" for i in range(251)]

    response = api.post("/contacts/tags", json={"tags": ["x"], "emails": emails})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "emails"


def test_tag_request_with_101_tags_is_400(api):
    response = api.post("/contacts/tags", json={"tags": [f"t{i}" for i in range(101)], "emails": ["a@example.com"]})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "tags"
