"""A refused key is re-read once (rotation), then reported; the key never appears in the error."""

from __future__ import annotations

import pytest

from shared.errors import AuthRejected
from shared.omnisend import OmnisendClient, Pacer

ITEM = {"identifiers": [{"type": "email", "id": "a@example.com", "sendWelcomeMessage": False}]}


class CountingKeys:
    """Returns the first key until asked to refresh, then the next one; counts the refreshes."""

    def __init__(self, *keys: str) -> None:
        self.keys, self.index, self.refreshes = list(keys), 0, 0

    def get(self, refresh: bool = False) -> str:
        if refresh:
            self.refreshes += 1
            self.index = min(self.index + 1, len(self.keys) - 1)
        return self.keys[self.index]


def make_client(sim, keys: CountingKeys, version: str = "2026-03-15") -> OmnisendClient:
    return OmnisendClient(base_url=sim.base_url, api_version=version, api_key=keys, pacer=Pacer(60_000))


REFUSED = {
    401: "Omnisend refused the API key (401)",
    403: "the key was refused or lacks permission for POST /v3/batches",
}


@pytest.mark.parametrize(("version", "auth_status"), [("2026-03-15", 401), ("v3", 401), ("v3", 403)])
def test_a_wrong_key_is_refreshed_once_then_rejected(simulator, version, auth_status):
    simulator.configure(auth_status=auth_status)
    keys = CountingKeys("wrong-key-123")

    with pytest.raises(AuthRejected) as caught:
        make_client(simulator, keys, version).create_batch([ITEM])

    assert keys.refreshes == 1
    assert simulator.stats()["requests_total"] == 2
    assert REFUSED[auth_status] in str(caught.value)
    assert "wrong-key-123" not in str(caught.value)


def test_a_rotated_key_is_used_after_the_refresh(simulator):
    keys = CountingKeys("revoked-key", "test-key")
    client = make_client(simulator, keys)

    assert client.create_batch([ITEM])
    assert client.create_batch([ITEM])  # later requests keep the new key: no further refresh

    assert keys.refreshes == 1
    assert simulator.stats()["responses_by_status"] == {"401": 1, "201": 2}
