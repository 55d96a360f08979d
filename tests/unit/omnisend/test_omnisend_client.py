"""OmnisendClient against a scripted HTTP server: headers, retries, key rotation, typed errors, evidence."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from omnisend_fakes import KeyRing, Reply

from shared.errors import AuthRejected, RetryLater
from shared.omnisend import (
    MISSING_STATUS,
    BatchRejected,
    BatchStatus,
    ItemFailure,
    OmnisendClient,
    Pacer,
    UnexpectedResponse,
    UntagNotSupported,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "omnisend"
ITEM = {"identifiers": [{"type": "email", "id": "jane@example.com", "sendWelcomeMessage": False}]}
SECRET = "brand1-s3cr3t-key"


def make_client(server, fake_time, version="2026-03-15", keys=(SECRET,), **kwargs) -> OmnisendClient:
    kwargs.setdefault("api_key", KeyRing(*keys))
    return OmnisendClient(
        base_url=server.base_url + "/",
        api_version=version,
        pacer=Pacer(600, clock=fake_time.clock, sleep=fake_time.sleep),
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        rng=random.Random(1),
        **kwargs,
    )


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


# ---- requests as sent --------------------------------------------------------------------------------------------


def test_2026_create_batch_sends_versioned_auth_headers_and_the_batch_body(server, fake_time):
    server.reply(Reply(201, {"batchID": "b-1", "totalCount": 1}))
    client = make_client(server, fake_time)

    assert client.create_batch([ITEM]) == "b-1"

    (req,) = server.seen
    assert (req.method, req.path) == ("POST", "/api/batches")
    assert req.headers["Authorization"] == f"Omnisend-API-Key {SECRET}"
    assert req.headers["Omnisend-Version"] == "2026-03-15"
    assert req.headers["Content-Type"] == "application/json"
    assert req.json() == {"method": "POST", "endpoint": "contacts", "items": [ITEM]}
    assert client.requests_made == 1


def test_v3_create_batch_uses_x_api_key_and_accepts_202(server, fake_time):
    server.reply(Reply(202, {"batchID": "5b0c188b44c306389ab529e5", "totalCount": 1}))
    client = make_client(server, fake_time, version="v3")

    assert client.create_batch([ITEM]) == "5b0c188b44c306389ab529e5"

    (req,) = server.seen
    assert req.path == "/v3/batches"
    assert req.headers["X-API-KEY"] == SECRET
    assert "Authorization" not in req.headers and "Omnisend-Version" not in req.headers


# ---- whole-batch refusals ----------------------------------------------------------------------------------------


def test_a_refused_batch_raises_batch_rejected_with_omnisends_message_and_request_id(server, fake_time):
    server.reply(Reply(400, fixture("v2026_validation_problem.json")))
    client = make_client(server, fake_time)

    with pytest.raises(BatchRejected) as caught:
        client.create_batch([ITEM])

    err = caught.value
    assert err.status == 400
    assert err.request_id == "urn:omnisend:request:6f1c2a9e-4d0b-4a57-9d0e-1b2c3d4e5f60"
    assert "must have at most 100 items" in err.reason
    assert "POST /api/batches → 400" in str(err) and err.request_id in str(err)
    assert SECRET not in str(err) and "jane.doe@" not in str(err)
    assert client.requests_made == 1  # not retried


@pytest.mark.parametrize("status", [413, 422])
def test_too_large_or_unprocessable_batches_are_rejected_too(server, fake_time, status):
    server.reply(Reply(status, {"error": "Request entity too large"}))

    with pytest.raises(BatchRejected) as caught:
        make_client(server, fake_time, version="v3").create_batch([ITEM])

    assert caught.value.status == status and caught.value.reason == "Request entity too large"


# ---- retries -----------------------------------------------------------------------------------------------------


def test_server_errors_are_retried_with_jittered_backoff(server, fake_time):
    server.reply(Reply(503, {"error": "maintenance"}), Reply(500), Reply(201, {"batchID": "b-2"}))
    client = make_client(server, fake_time)

    assert client.create_batch([ITEM]) == "b-2"

    assert client.requests_made == 3
    backoffs = [s for s in fake_time.sleeps if s not in (0.1,)]  # pacer waits are 0.1 s at 600/min
    assert len(backoffs) == 2 and 0 <= backoffs[0] <= 1.0 and 0 <= backoffs[1] <= 2.0


def test_a_dropped_connection_is_retried(server, fake_time):
    server.reply(Reply(drop=True), Reply(201, {"batchID": "b-3"}))
    client = make_client(server, fake_time)

    assert client.create_batch([ITEM]) == "b-3"
    assert client.requests_made == 2


def test_429_retry_after_in_the_body_defers_the_shared_pacer(server, fake_time):
    server.reply(Reply(429, fixture("v2026_rate_limited.json")), Reply(201, {"batchID": "b-4"}))
    client = make_client(server, fake_time)
    start = fake_time.now

    assert client.create_batch([ITEM]) == "b-4"

    assert client.responses_429 == 1
    assert fake_time.now - start == pytest.approx(7.0)  # the pacer held the next slot for retryAfter=7


def test_v3_429_retry_after_header_is_honoured(server, fake_time):
    server.reply(Reply(429, {"error": "rate limit"}, headers={"Retry-After": "3"}), Reply(200, {"batchID": "b-5"}))
    client = make_client(server, fake_time, version="v3")
    start = fake_time.now

    client.create_batch([ITEM])

    assert fake_time.now - start == pytest.approx(3.0)


def test_attempts_used_up_raise_retry_later_with_evidence(server, fake_time):
    server.reply(*[Reply(503, {"title": "Service Unavailable", "instance": "urn:omnisend:request:r-9"})] * 3)
    client = make_client(server, fake_time, max_attempts=3)

    with pytest.raises(RetryLater) as caught:
        client.batch_failures("b-9")

    assert caught.value.status == 503
    assert "GET /api/batches/b-9/items" in str(caught.value) and "urn:omnisend:request:r-9" in str(caught.value)
    assert client.requests_made == 3


def test_max_attempts_1_raises_at_the_first_transient_failure_with_the_hint(server, fake_time):
    server.reply(Reply(429, fixture("v2026_rate_limited.json")))
    client = make_client(server, fake_time, max_attempts=1)

    with pytest.raises(RetryLater) as caught:
        client.create_batch([ITEM])

    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    assert client.requests_made == 1


def test_a_very_long_retry_after_is_handed_to_the_caller_instead_of_slept(server, fake_time):
    server.reply(Reply(429, {"title": "Too Many Requests", "retryAfter": 600}))
    client = make_client(server, fake_time)

    with pytest.raises(RetryLater) as caught:
        client.create_batch([ITEM])

    assert caught.value.retry_after == 600
    assert client.requests_made == 1


# ---- the API key -------------------------------------------------------------------------------------------------


def test_a_refused_key_is_re_read_once_then_auth_rejected(server, fake_time):
    server.reply(Reply(401, fixture("v3_unauthorized.json")), Reply(401, fixture("v3_unauthorized.json")))
    keys = KeyRing(SECRET)
    client = make_client(server, fake_time, version="v3", api_key=keys)

    with pytest.raises(AuthRejected) as caught:
        client.create_batch([ITEM])

    assert keys.refreshes == 1
    assert client.requests_made == 2
    message = str(caught.value)
    assert "Omnisend refused the API key (401)" in message and "OMNISEND_API_KEY" in message
    assert "POST /v3/batches" in message
    assert SECRET not in message


def test_a_rotated_key_is_picked_up_after_a_403(server, fake_time):
    server.reply(Reply(403, {"error": "Forbidden"}), Reply(201, {"batchID": "b-6"}))
    client = make_client(server, fake_time, keys=("old-key", "new-key"))

    assert client.create_batch([ITEM]) == "b-6"
    assert [r.headers["Authorization"] for r in server.seen] == [
        "Omnisend-API-Key old-key",
        "Omnisend-API-Key new-key",
    ]


def test_a_key_refresh_does_not_use_up_the_single_attempt(server, fake_time):
    server.reply(Reply(401), Reply(201, {"batchID": "b-7"}))
    client = make_client(server, fake_time, keys=("old-key", "new-key"), max_attempts=1)

    assert client.create_batch([ITEM]) == "b-7"


# ---- batch statuses ----------------------------------------------------------------------------------------------


def batch(batch_id: str, status: str = "finished", total: int = 3, finished: int = 3, errors: int = 0) -> dict:
    return {
        "batchID": batch_id,
        "status": status,
        "totalCount": total,
        "finishedCount": finished,
        "errorsCount": errors,
    }


def test_statuses_of_listed_batches_cost_one_list_request(server, fake_time):
    listing = [batch("other")] + [batch(f"b-{i}", "inProgress", 100, i, 1) for i in range(40)]
    server.reply(Reply(200, {"batches": listing, "paging": {"limit": 250, "offset": 0, "next": None}}))
    client = make_client(server, fake_time)

    statuses = client.batch_statuses([f"b-{i}" for i in range(40)])

    assert len(statuses) == 40 and statuses["b-7"] == BatchStatus("b-7", "inProgress", 100, 7, 1)
    (req,) = server.seen
    assert req.path == "/api/batches"
    assert req.query == {"endpoint": ["contacts"], "limit": ["250"], "offset": ["0"]}


def test_listing_pages_on_until_every_id_was_seen(server, fake_time):
    page1 = [batch(f"x-{i}") for i in range(250)]
    page2 = [batch("mine-1"), batch("mine-2")]
    server.reply(Reply(200, {"batches": page1, "paging": {"next": "..."}}), Reply(200, {"batches": page2}))
    client = make_client(server, fake_time, version="v3")

    statuses = client.batch_statuses(["mine-1", "mine-2"])

    assert set(statuses) == {"mine-1", "mine-2"}
    assert [r.query["offset"] for r in server.seen] == [["0"], ["250"]]


def test_ids_not_listed_fall_back_to_get_by_id_and_unknown_ones_are_missing(server, fake_time):
    server.reply(
        Reply(200, {"batches": [batch("a")]}),
        Reply(200, {**batch("b", "stopped", 10, 4, 4), "enddedAt": "2026-11-29T05:00:03Z"}),
        Reply(404, {"error": "Batch not found"}),
    )
    client = make_client(server, fake_time, version="v3")

    statuses = client.batch_statuses(["a", "b", "c"])

    assert statuses["a"].status == "finished"
    assert statuses["b"] == BatchStatus("b", "stopped", 10, 4, 4, ended_at="2026-11-29T05:00:03Z")
    assert statuses["c"] == BatchStatus("c", MISSING_STATUS, 0, 0, 0)
    assert [r.path for r in server.seen] == ["/v3/batches", "/v3/batches/b", "/v3/batches/c"]


def test_no_ids_no_requests(server, fake_time):
    assert make_client(server, fake_time).batch_statuses([]) == {}
    assert server.seen == []


# ---- batch failures ----------------------------------------------------------------------------------------------


def test_v3_item_failures_map_to_the_email_identifier(server, fake_time):
    server.reply(Reply(200, fixture("v3_batch_items_with_errors.json")))

    failures = make_client(server, fake_time, version="v3").batch_failures("5b0c188b44c306389ab529e5")

    assert failures == [
        ItemFailure(
            "ann@example.com",
            400,
            "1 error(s) found. Check 'fields' array for details. (identifiers[0].id: '+3706' is not a valid phone)",
            False,
        ),
        ItemFailure("bob@example.com", 503, "Service temporarily unavailable", True),
    ]


def test_2026_item_failures_read_problem_bodies_and_tolerate_missing_parts(server, fake_time):
    server.reply(Reply(200, fixture("v2026_batch_items_with_errors.json")))

    failures = make_client(server, fake_time).batch_failures("b-2026")

    assert failures == [
        ItemFailure("eve@example.com", 409, "Conflict: Contact identifier already exists", False),
        ItemFailure(None, 500, "no message", True),
    ]


# ---- untag -------------------------------------------------------------------------------------------------------


def test_untag_sends_delete_contacts_tags_in_chunks_of_250_emails(server, fake_time):
    server.reply(Reply(202), Reply(202))
    emails = [f"p{i}@example.com" for i in range(300)]
    tags_pacer = Pacer(54, clock=fake_time.clock, sleep=fake_time.sleep)
    client = make_client(server, fake_time, tags_pacer=tags_pacer)

    client.untag(emails, ["ci-vip"])

    assert [(r.method, r.path) for r in server.seen] == [("DELETE", "/api/contacts/tags")] * 2
    assert [r.json() for r in server.seen] == [
        {"tags": ["ci-vip"], "emails": emails[:250]},
        {"tags": ["ci-vip"], "emails": emails[250:]},
    ]
    assert fake_time.sleeps == [pytest.approx(60 / 54)]  # the second request waited for the tags pacer's slot


def test_untag_on_v3_is_not_supported_and_sends_nothing(server, fake_time):
    with pytest.raises(UntagNotSupported, match="2026-03-15"):
        make_client(server, fake_time, version="v3").untag(["a@example.com"], ["ci-vip"])
    assert server.seen == []


def test_a_retired_api_version_fails_the_run_with_a_hint(server, fake_time):
    server.reply(Reply(410, {"title": "Gone", "detail": "API version retired", "instance": "urn:omnisend:request:z"}))

    with pytest.raises(UnexpectedResponse, match="OMNISEND_API_VERSION") as caught:
        make_client(server, fake_time).batch_failures("b-1")
    assert caught.value.status == 410 and caught.value.request_id == "urn:omnisend:request:z"
