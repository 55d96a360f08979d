"""Rate limiting per key: 2026 sliding window with retryAfter, v3 fixed window with X-Rate-Limit-* headers."""

from __future__ import annotations

import time

from tests.simulator.conftest import OTHER_KEY, Client


def _small_window(sim, requests_per_window=20, seconds=2.0, **extra):
    sim.configure(requests_per_minute=requests_per_window, rate_window_seconds=seconds, **extra)


def _spend(client, n):
    return [client.get("/contacts", params={"email": "a@example.com"}).status_code for _ in range(n)]


def test_2026_request_over_the_window_budget_gets_429_with_integer_retry_after(sim, api):
    _small_window(sim)

    codes = _spend(api, 21)

    assert codes == [200] * 20 + [429]
    response = api.get("/contacts", params={"email": "a@example.com"})
    body = response.json()
    assert body["type"] == "https://problems.omnisend.com/rate-limit-exceeded"
    assert isinstance(body["retryAfter"], int)
    assert 1 <= body["retryAfter"] <= 2


def test_2026_sends_no_rate_headers_and_no_retry_after_header_by_default(sim, api):
    _small_window(sim, requests_per_window=1)
    ok = api.get("/contacts")
    refused = api.get("/contacts")

    assert refused.status_code == 429
    for response in (ok, refused):
        assert not any(h.lower().startswith("x-rate-limit") for h in response.headers)
    assert "Retry-After" not in refused.headers


def test_2026_retry_after_header_switch(sim, api):
    _small_window(sim, requests_per_window=1, retry_after_header=True)
    api.get("/contacts")

    refused = api.get("/contacts")

    assert refused.headers["Retry-After"] == str(refused.json()["retryAfter"])


def test_2026_refused_requests_do_not_extend_the_window(sim, api):
    _small_window(sim, requests_per_window=2, seconds=1.0)
    _spend(api, 2)
    refused = [api.get("/contacts") for _ in range(5)]

    time.sleep(refused[0].json()["retryAfter"])

    assert api.get("/contacts").status_code == 200


def test_rate_budget_is_per_api_key(sim, api):
    _small_window(sim, requests_per_window=3)
    _spend(api, 3)
    other = Client(api.root, {"Authorization": f"Omnisend-API-Key {OTHER_KEY}", "Omnisend-Version": "2026-03-15"})

    assert api.get("/contacts").status_code == 429
    assert other.get("/contacts").status_code == 200


def test_contacts_tags_has_its_own_budget(sim, api):
    sim.configure(tags_requests_per_minute=2, requests_per_minute=100, rate_window_seconds=2.0)
    body = {"tags": ["x"], "emails": ["ann@example.com"]}

    codes = [api.post("/contacts/tags", json=body).status_code for _ in range(3)]

    assert codes == [202, 202, 429]
    assert api.get("/contacts").status_code == 200


def test_v3_headers_count_down_the_fixed_window(sim, v3):
    _small_window(sim, requests_per_window=5)

    responses = [v3.get("/contacts", params={"email": "a@example.com"}) for _ in range(3)]

    assert [r.headers["X-Rate-Limit-Remaining"] for r in responses] == ["4", "3", "2"]
    assert {r.headers["X-Rate-Limit-Limit"] for r in responses} == {"5"}
    assert all(0 <= int(r.headers["X-Rate-Limit-Reset"]) <= 2 for r in responses)


def test_v3_request_over_the_budget_gets_429_error_body(sim, v3):
    _small_window(sim, requests_per_window=2)

    codes = _spend(v3, 3)
    refused = v3.get("/contacts")

    assert codes == [200, 200, 429]
    assert set(refused.json()) == {"error"}
    assert refused.headers["X-Rate-Limit-Remaining"] == "0"


def test_429s_are_counted_in_stats(sim, api):
    _small_window(sim, requests_per_window=1)

    _spend(api, 3)

    assert sim.stats()["responses_429"] == 2
