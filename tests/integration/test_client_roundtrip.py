"""Create a batch, follow its status, read its failures: the whole round trip per API version, at the simulator."""

from __future__ import annotations

import time

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from shared.contacts import Contact
from shared.exports import ExportDefinition, Source
from shared.omnisend import ItemFailure, OmnisendClient, Pacer, build_contact_payload

VERSIONS = ["2026-03-15", "v3"]


class Key:
    def get(self, refresh: bool = False) -> str:
        return "test-key"


def client_for(sim: Simulator, version: str) -> OmnisendClient:
    return OmnisendClient(base_url=sim.base_url, api_version=version, api_key=Key(), pacer=Pacer(60_000))


def export(**overrides) -> ExportDefinition:
    base = {"name": "vip", "source": Source(container="c"), "mapping": {"email": "EMail"}, "tags": ("ci-vip",)}
    return ExportDefinition(**(base | overrides))


def wait_finished(client: OmnisendClient, batch_ids: list[str], timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        statuses = client.batch_statuses(batch_ids)
        if all(s.status in ("finished", "stopped") for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_reports_the_failed_item_by_email(simulator, version):
    simulator.configure(item_fail={"bad@example.com": 400})
    client = client_for(simulator, version)
    people = [Contact(email=f"p{i}@example.com", fields={"firstName": f"P{i}"}) for i in range(4)]
    people.append(Contact(email="bad@example.com"))

    batch_id = client.create_batch([build_contact_payload(c, export(), version) for c in people])
    status = wait_finished(client, [batch_id])[batch_id]
    failures = client.batch_failures(batch_id)

    assert (status.status, status.total, status.finished, status.errors) == ("finished", 5, 5, 1)
    assert [(f.email, f.response_code, f.retryable) for f in failures] == [("bad@example.com", 400, False)]
    stored = simulator.contacts()
    assert stored["p2@example.com"]["tags"] == ["ci-vip"]
    assert stored["p2@example.com"]["status"] == "nonSubscribed"
    assert "bad@example.com" not in stored
    assert simulator.stats()["welcome_messages"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_retryable_item_failures_are_marked_retryable(simulator, version):
    simulator.configure(item_fail={"flaky@example.com": 503})
    client = client_for(simulator, version)

    batch_id = client.create_batch([build_contact_payload(Contact(email="flaky@example.com"), export(), version)])
    wait_finished(client, [batch_id])

    assert client.batch_failures(batch_id) == [
        ItemFailure("flaky@example.com", 503, client.batch_failures(batch_id)[0].message, True)
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_an_existing_contacts_status_survives_an_export_that_subscribes_new_contacts(simulator, version):
    simulator.seed_contact("old@example.com", status="unsubscribed", status_date="2026-06-01T00:00:00Z")
    client = client_for(simulator, version)
    items = [
        build_contact_payload(Contact(email=e), export(new_contact_status="subscribed"), version)
        for e in ("old@example.com", "new@example.com")
    ]

    wait_finished(client, [client.create_batch(items)])

    stored = simulator.contacts()
    assert stored["old@example.com"]["status"] == "unsubscribed"
    assert stored["new@example.com"]["status"] == "subscribed"


def test_the_2026_default_export_leaves_an_existing_status_alone(simulator):
    simulator.seed_contact("old@example.com", status="subscribed", status_date="2026-06-01T00:00:00Z")
    client = client_for(simulator, "2026-03-15")

    batch_id = client.create_batch([build_contact_payload(Contact(email="old@example.com"), export(), "2026-03-15")])
    wait_finished(client, [batch_id])

    assert simulator.contacts()["old@example.com"]["status"] == "subscribed"


def test_a_full_v3_batch_of_1000_goes_through_in_one_request():
    with Simulator(SimConfig(api_keys=("test-key",), batch_delay=0.05)) as sim:
        client = client_for(sim, "v3")
        items = [build_contact_payload(Contact(email=f"u{i}@example.com"), export(), "v3") for i in range(1000)]

        batch_id = client.create_batch(items)
        status = wait_finished(client, [batch_id])[batch_id]

        assert (status.status, status.total, status.errors) == ("finished", 1000, 0)
        assert client.requests_made >= 2 and sim.stats()["requests_by_route"]["POST /v3/batches"] == 1
