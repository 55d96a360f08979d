"""batch_statuses uses the cheap list endpoint; untag removes only the given tags."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from shared.omnisend import MISSING_STATUS, OmnisendClient, Pacer

ITEM = {"identifiers": [{"type": "email", "id": "a@example.com", "sendWelcomeMessage": False}]}


class Key:
    def get(self, refresh: bool = False) -> str:
        return "test-key"


def make_client(sim, version: str = "2026-03-15", **kwargs) -> OmnisendClient:
    return OmnisendClient(base_url=sim.base_url, api_version=version, api_key=Key(), pacer=Pacer(60_000), **kwargs)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_statuses_of_30_batches_cost_one_list_request(simulator):
    client = make_client(simulator)
    ids = [client.create_batch([ITEM]) for _ in range(30)]
    before = dict(simulator.stats()["requests_by_route"])

    statuses = client.batch_statuses(ids)

    after = simulator.stats()["requests_by_route"]
    assert set(statuses) == set(ids)
    assert after.get("GET /api/batches", 0) - before.get("GET /api/batches", 0) == 1
    assert after.get("GET /api/batches/{id}", 0) == 0


def test_an_unknown_batch_is_reported_missing(simulator):
    client = make_client(simulator)
    known = client.create_batch([ITEM])

    statuses = client.batch_statuses([known, "000000000000000000000000"])

    assert statuses["000000000000000000000000"].status == MISSING_STATUS
    assert statuses[known].status in ("pending", "inProgress", "finished")


def test_untag_removes_only_the_given_tags_from_the_given_contacts(simulator):
    for email in ("leaver@example.com", "stayer@example.com"):
        simulator.seed_contact(email, status="subscribed", tags=["ci-vip", "newsletter"], api_version="2026-03-15")
    client = make_client(simulator, tags_pacer=Pacer(60_000))

    client.untag(["leaver@example.com", "unknown@example.com"], ["ci-vip"])

    assert wait_until(lambda: simulator.contact("leaver@example.com")["tags"] == ["newsletter"])
    assert simulator.contact("stayer@example.com")["tags"] == ["ci-vip", "newsletter"]
    assert simulator.stats()["requests_by_route"]["DELETE /api/contacts/tags"] == 1


def test_one_client_shared_by_threads_counts_every_request(simulator):
    client = make_client(simulator)

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda _: client.create_batch([ITEM]), range(40)))

    assert len(set(ids)) == 40
    assert client.requests_made == simulator.stats()["requests_total"] == 40
