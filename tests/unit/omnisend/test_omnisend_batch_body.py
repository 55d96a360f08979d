"""The POST /batches body: envelope, compact UTF-8 JSON, and the size limits per API version."""

from __future__ import annotations

import json

import pytest

from shared.contacts import Contact
from shared.exports import ExportDefinition, Source
from shared.omnisend import API_LIMITS, OmnisendClient, Pacer, build_contact_payload, encode_batch_body


def test_body_is_the_contacts_envelope_in_compact_utf8_json():
    body = encode_batch_body([{"firstName": "Žydrūnė"}])

    assert body == '{"method":"POST","endpoint":"contacts","items":[{"firstName":"Žydrūnė"}]}'.encode()


def test_limits_per_api_version():
    assert API_LIMITS["2026-03-15"].base_path == "/api"
    assert API_LIMITS["2026-03-15"].max_batch_items == 100
    assert API_LIMITS["v3"].base_path == "/v3"
    assert API_LIMITS["v3"].max_batch_items == 1000
    for limits in API_LIMITS.values():
        assert 990_000 <= limits.max_body_bytes < 1_000_000


@pytest.mark.parametrize("version", ["2026-03-15", "v3"])
def test_a_full_batch_of_rich_contacts_fits_the_body_limit(version):
    export = ExportDefinition(name="vip", source=Source(container="c"), mapping={"email": "E"}, tags=("ci-vip",))
    contact = Contact(
        email="a.rather.long.address.for.testing@example-company.com",
        fields={f: "x" * 40 for f in ("firstName", "lastName", "address", "city", "state", "postalCode", "country")},
        phone="+370600123456",
        custom_properties={f"prop_{i}": "v" * 30 for i in range(5)},
    )
    limits = API_LIMITS[version]

    body = encode_batch_body([build_contact_payload(contact, export, version)] * limits.max_batch_items)

    assert len(body) < limits.max_body_bytes
    assert len(json.loads(body)["items"]) == limits.max_batch_items


class _NoKey:
    def get(self, refresh: bool = False) -> str:
        raise AssertionError("no request may be made")


@pytest.mark.parametrize(
    ("items", "message"),
    [([], "at least one"), ([{"a": 1}] * 101, "101 items"), ([{"a": "x" * 1_000_000}], "bytes exceeds")],
)
def test_create_batch_refuses_a_batch_the_planner_should_have_cut(items, message):
    client = OmnisendClient(
        base_url="http://127.0.0.1:9", api_version="2026-03-15", api_key=_NoKey(), pacer=Pacer(6000)
    )

    with pytest.raises(ValueError, match=message):
        client.create_batch(items)
    assert client.requests_made == 0
