"""Shared fixtures: one simulator per test session, reset before every test, plus thin per-version clients."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devtools.omnisend_sim import SimConfig, Simulator

KEY = "test-key"
OTHER_KEY = "other-key"
VERSION = "2026-03-15"
# Generous: a batch with batch_delay 0.05 s is done in well under a second; this only stops a hung test.
POLL_DEADLINE_SECONDS = 10.0
POLL_INTERVAL_SECONDS = 0.02


class Client:
    """One API version, one key: paths are relative to /api or /v3."""

    def __init__(self, root: str, headers: dict[str, str]) -> None:
        self.root = root
        self.session = requests.Session()
        self.session.headers.update(headers)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.root + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.root + path, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.session.delete(self.root + path, timeout=10, **kw)

    def batch(self, items: list[dict[str, Any]], **extra: Any) -> requests.Response:
        return self.post("/batches", json={"method": "POST", "endpoint": "contacts", "items": items, **extra})

    def wait_batch(self, batch_id: str, *, items: bool = True) -> dict[str, Any]:
        """Poll until the batch is finished or stopped; returns the final (items) view."""
        deadline = time.monotonic() + POLL_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            body = self.get(f"/batches/{batch_id}").json()
            if body["status"] in ("finished", "stopped"):
                return self.get(f"/batches/{batch_id}/items").json() if items else body
            time.sleep(POLL_INTERVAL_SECONDS)
        raise AssertionError(f"batch {batch_id} never finished")

    def submit_and_wait(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        created = self.batch(items)
        assert created.status_code in (200, 201), created.text
        return self.wait_batch(created.json()["batchID"])


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL_INTERVAL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


def contact_2026(email: str, status: str | None = "subscribed", changed_at: str | None = None, **fields: Any) -> dict:
    ident: dict[str, Any] = {"type": "email", "id": email}
    if status is not None:
        channel: dict[str, Any] = {"status": status}
        if changed_at:
            channel["statusChangedAt"] = changed_at
        ident["channels"] = {"email": channel}
    for name in ("sendWelcomeMessage",):
        if name in fields:
            ident[name] = fields.pop(name)
    return {"identifiers": [ident], **fields}


def contact_v3(email: str, status: str | None = "subscribed", status_date: str | None = None, **fields: Any) -> dict:
    channel: dict[str, Any] = {}
    if status is not None:
        channel["status"] = status
    if status_date:
        channel["statusDate"] = status_date
    ident: dict[str, Any] = {"type": "email", "id": email, "channels": {"email": channel}}
    if "sendWelcomeMessage" in fields:
        ident["sendWelcomeMessage"] = fields.pop("sendWelcomeMessage")
    return {"identifiers": [ident], **fields}


@pytest.fixture(scope="session")
def _running_sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(api_keys=(KEY, OTHER_KEY), batch_delay=0.05)) as sim:
        yield sim


@pytest.fixture
def sim(_running_sim: Simulator) -> Simulator:
    """The session simulator, reset (state and config) for this test."""
    _running_sim.reset()
    return _running_sim


@pytest.fixture
def api(sim: Simulator) -> Client:
    return Client(sim.base_url + "/api", {"Authorization": f"Omnisend-API-Key {KEY}", "Omnisend-Version": VERSION})


@pytest.fixture
def v3(sim: Simulator) -> Client:
    return Client(sim.base_url + "/v3", {"X-API-KEY": KEY})
