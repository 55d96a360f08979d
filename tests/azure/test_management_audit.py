"""The management API's audit log: one record per change, newest first, paged."""

from __future__ import annotations

import pytest

from shared.management.access import OPERATOR, READER
from tests.azure import management_support
from tests.azure.management_support import (
    answer,
    brands_api,
    connection_body,
    export_body,
)

pytestmark = pytest.mark.azurite
make_api = management_support.make_api  # the fixture, registered for this module


# ------------------------------------------------------------------------------------------------ audit


def test_the_audit_log_records_every_change_newest_first(make_api):
    api = brands_api(make_api)
    etag = api.call("GET", f"exports/{api.eu}").headers["ETag"]
    api.call(
        "PUT",
        f"exports/{api.eu}",
        role=OPERATOR,
        headers={"If-Match": etag},
        body=export_body(api.eu, api.source_container, connection="eu-store", tags=["changed"]),
    )
    api.call("PUT", "connections/third", body=connection_body("third"))
    third = api.call("GET", "connections/third").headers["ETag"]
    api.call("DELETE", "connections/third", headers={"If-Match": third})
    api.call("PUT", f"exports/{api.eu}", role=OPERATOR, body=export_body(api.eu, "x"))  # 428: not a change

    records = answer(api.call("GET", "audit", role=READER))["records"]

    assert [(r["action"], r["kind"], r["name"]) for r in records] == [
        ("delete", "connection", "third"),
        ("put", "connection", "third"),
        ("put", "export", api.eu),
    ]
    change = records[2]
    assert change["who"]["name"] == f"{OPERATOR}@example.com" and change["who"]["roles"] == [OPERATOR]
    assert change["before"]["tags"] == ["ci-vip"] and change["after"]["tags"] == ["changed"]
    assert records[1]["before"] is None and records[1]["after"]["apiKeySecret"] == "omnisend-third-key"
    assert records[0]["after"] is None and records[0]["at"]


def test_the_audit_log_pages(make_api):
    api = brands_api(make_api)
    for i in range(5):
        api.call("PUT", f"connections/spare-{i}", body=connection_body(f"spare-{i}"))

    first = answer(api.call("GET", "audit", params={"limit": "2"}))
    second = answer(api.call("GET", "audit", params={"limit": "2", "after": first["next"]}))
    last = answer(api.call("GET", "audit", params={"limit": "2", "after": second["next"]}))

    names_seen = [r["name"] for page in (first, second, last) for r in page["records"]]
    assert names_seen == [f"spare-{i}" for i in (4, 3, 2, 1, 0)]
    assert last["next"] is None


def test_a_bad_audit_limit_is_400(make_api):
    api = brands_api(make_api)

    assert api.call("GET", "audit", params={"limit": "0"}).status_code == 400
    assert api.call("GET", "audit", params={"after": "../x"}).status_code == 400
