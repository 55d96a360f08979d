"""Batch creation limits, the async state machine, per-item results and the list endpoint (reference §3)."""

from __future__ import annotations

import time

from tests.simulator.conftest import contact_2026, contact_v3, wait_until


def _items_2026(n, prefix="c"):
    return [contact_2026(f"{prefix}{i}@example.com") for i in range(n)]


def _items_v3(n):
    return [contact_v3(f"c{i}@example.com") for i in range(n)]


def _over_one_megabyte():
    """100 valid items of ~12 KB each: within the item cap, over the 1,048,576-byte body limit."""
    props = {f"p{j}": "x" * 2000 for j in range(6)}
    return [contact_2026(f"c{i}@example.com", customProperties=props) for i in range(100)]


def test_2026_batch_of_100_items_is_accepted_with_201(api):
    response = api.batch(_items_2026(100))

    assert response.status_code == 201
    assert set(response.json()) == {"batchID", "totalCount"}
    assert response.json()["totalCount"] == 100


def test_2026_batch_of_101_items_is_400_and_applies_nothing(api, sim):
    response = api.batch(_items_2026(101))

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "items"
    assert response.json()["errors"][0]["code"] == "max_items"
    time.sleep(0.1)  # longer than batch_delay: nothing may show up late either
    assert sim.contacts() == {}
    assert sim.stats()["batches_total"] == 0


def test_v3_batch_of_1000_items_is_accepted_with_200(v3):
    response = v3.batch(_items_v3(1000))

    assert response.status_code == 200
    assert response.json()["totalCount"] == 1000


def test_v3_batch_of_1001_items_is_400(v3):
    response = v3.batch(_items_v3(1001))

    assert response.status_code == 400
    assert "items" in response.json()["fields"]


def test_empty_batch_is_400(api):
    response = api.batch([])

    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "min_items"


def test_bad_method_and_endpoint_are_400(api):
    response = api.post("/batches", json={"method": "GET", "endpoint": "orders", "items": _items_2026(1)})

    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"method", "endpoint"}


def test_body_over_one_megabyte_is_413(api):
    big = _over_one_megabyte()

    response = api.batch(big)

    assert response.status_code == 413
    assert response.json()["status"] == 413


def test_body_limit_can_be_switched_off(api, sim):
    sim.configure(enforce_body_limit=False)
    big = _over_one_megabyte()

    response = api.batch(big)

    assert response.status_code == 201


def test_batch_goes_pending_then_in_progress_then_finished(api, sim):
    sim.configure(batch_delay=1.0)  # 0.5 s in each state: far longer than one poll
    batch_id = api.batch(_items_2026(3)).json()["batchID"]
    seen = [api.get(f"/batches/{batch_id}").json()["status"]]

    def record_until_finished():
        status = api.get(f"/batches/{batch_id}").json()["status"]
        if status != seen[-1]:
            seen.append(status)
        return status == "finished"

    wait_until(record_until_finished, "batch to finish")
    assert seen == ["pending", "inProgress", "finished"]


def test_batch_object_has_documented_fields_and_no_items(api):
    batch_id = api.batch(_items_2026(2)).json()["batchID"]

    body = api.wait_batch(batch_id, items=False)

    assert set(body) == {
        "batchID", "method", "endpoint", "status", "createdAt", "startedAt", "endedAt", "totalCount",
        "finishedCount", "errorsCount", "origin",
    }  # fmt: skip
    assert (body["totalCount"], body["finishedCount"], body["errorsCount"]) == (2, 2, 0)


def test_contacts_are_applied_only_when_the_batch_finishes(api, sim):
    sim.configure(batch_delay=0.5)
    api.batch(_items_2026(1))

    assert sim.contacts() == {}
    wait_until(lambda: "c0@example.com" in sim.contacts(), "contact applied")


def test_v3_invalid_item_gets_its_own_error_and_others_apply(v3, sim):
    bad = {"identifiers": [{"type": "email", "id": "bad@example.com"}]}

    body = v3.submit_and_wait([contact_v3("ok@example.com"), bad])

    assert (body["finishedCount"], body["errorsCount"]) == (2, 1)
    [error] = body["errors"]
    assert error["request"] == bad
    assert error["responseCode"] == 400
    assert error["status"] == "finished"
    assert error["response"] == {
        "error": "1 error(s) found. Check 'fields' array for details.",
        "fields": {"0": ["identifiers[0].channels: field required but not found in Json"]},
    }
    [ok] = body["responses"]
    assert ok["responseCode"] == 200
    assert ok["response"] == {"email": "ok@example.com", "contactID": sim.contacts()["ok@example.com"]["id"]}
    assert set(sim.contacts()) == {"ok@example.com"}


def test_2026_invalid_item_gets_a_validation_problem(api):
    body = api.submit_and_wait([contact_2026("not-an-email"), contact_2026("ok@example.com")])

    [error] = body["errors"]
    assert error["responseCode"] == 400
    assert error["response"]["type"] == "https://problems.omnisend.com/validation-failed"
    assert error["response"]["errors"][0]["field"] == "identifiers[0].id"
    assert [r["responseCode"] for r in body["responses"]] == [201]
    assert set(body["responses"][0]) == {"itemID", "request", "responseCode", "response", "status"}


def test_items_are_applied_in_order(api, sim):
    items = [contact_2026("ann@example.com", firstName="First"), contact_2026("ann@example.com", firstName="Last")]

    body = api.submit_and_wait(items)

    assert [r["responseCode"] for r in body["responses"]] == [201, 200]
    assert sim.contacts()["ann@example.com"]["fields"]["firstName"] == "Last"


def test_batch_stops_when_errors_exceed_the_configured_fraction(api, sim):
    sim.configure(stop_error_fraction=0.3)
    items = [contact_2026(f"bad{i}") for i in range(4)] + _items_2026(6)

    body = api.submit_and_wait(items)

    assert body["status"] == "stopped"
    assert body["errorsCount"] == 4
    assert body["finishedCount"] == 4
    assert sim.contacts() == {}


def test_unknown_batch_is_404(api):
    response = api.get("/batches/000000000000000000000000")

    assert response.status_code == 404
    assert response.json()["type"] == "https://problems.omnisend.com/not-found"


def test_batches_of_another_key_are_not_visible(api, sim):
    other = api.__class__(api.root, {"Authorization": "Omnisend-API-Key other-key", "Omnisend-Version": "2026-03-15"})
    batch_id = api.batch(_items_2026(1)).json()["batchID"]

    assert other.get(f"/batches/{batch_id}").status_code == 404


def test_list_is_newest_first_with_offset_paging(api):
    ids = [api.batch(_items_2026(1, prefix=f"b{n}-")).json()["batchID"] for n in range(5)]

    first = api.get("/batches", params={"endpoint": "contacts", "limit": 2}).json()
    second = api.get("/batches", params={"endpoint": "contacts", "limit": 2, "offset": 2}).json()

    assert [b["batchID"] for b in first["batches"]] == [ids[4], ids[3]]
    assert [b["batchID"] for b in second["batches"]] == [ids[2], ids[1]]
    assert first["paging"]["limit"] == 2
    assert first["paging"]["offset"] == 0
    assert first["paging"]["previous"] is None
    assert "offset=2" in first["paging"]["next"]
    assert "offset=0" in second["paging"]["previous"]


def test_list_last_page_has_no_next(api):
    for n in range(3):
        api.batch(_items_2026(1, prefix=f"b{n}-"))

    body = api.get("/batches", params={"endpoint": "contacts", "offset": 2, "limit": 2}).json()

    assert len(body["batches"]) == 1
    assert body["paging"]["next"] is None


def test_list_filters_by_status(api):
    done = api.batch(_items_2026(1, prefix="a")).json()["batchID"]
    api.wait_batch(done)

    body = api.get("/batches", params={"endpoint": "contacts", "status": "finished"}).json()

    assert [b["batchID"] for b in body["batches"]] == [done]


def test_list_rejects_limit_over_250(api):
    response = api.get("/batches", params={"endpoint": "contacts", "limit": 251})

    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "limit"


def test_v3_list_has_offset_paging(v3):
    batch_id = v3.batch(_items_v3(1)).json()["batchID"]

    body = v3.get("/batches", params={"endpoint": "contacts"}).json()

    assert [b["batchID"] for b in body["batches"]] == [batch_id]
    assert body["paging"] == {"limit": 100, "offset": 0, "next": None, "previous": None}
