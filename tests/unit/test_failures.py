"""The reason a failed row gets in rejected.csv says what really happened, and the run message sums it up.

Rows below have the shapes the stages record: a contact Omnisend refused (send/verify: HTTP status + Omnisend's
message) and a batch that never got a verdict (record_batch_failure: no status, the stage's own text)."""

from __future__ import annotations

from shared.failures import failed_row_for_csv, failure_message

REFUSED_ROW = {"file": "p1.csv", "line": 7, "email": "a@example.com", "httpStatus": 400,
               "omnisendMessage": "identifiers[0].id: invalid email"}
UNREACHABLE_ROW = {"file": "p1.csv", "line": 8, "email": "b@example.com", "httpStatus": None,
                   "omnisendMessage": "Omnisend kept failing: Omnisend POST /api/batches failed after 6 attempt(s): "
                                      "ConnectionError"}
UNCONFIRMED_ROW = {"file": "p1.csv", "line": 9, "email": "c@example.com", "httpStatus": 0,
                   "omnisendMessage": "could not confirm: Omnisend GET /api/batches failed after 6 attempt(s): 503"}


def test_a_contact_omnisend_refused_says_so_with_omnisends_message():
    row = failed_row_for_csv(REFUSED_ROW)
    assert row["reason"] == "Omnisend refused the contact: identifiers[0].id: invalid email"
    assert row["httpStatus"] == 400 and row["bucket"] == "failed"


def test_a_batch_that_never_reached_omnisend_says_not_delivered_could_not_reach():
    row = failed_row_for_csv(UNREACHABLE_ROW)
    assert row["reason"].startswith("not delivered: could not reach Omnisend (")
    assert "refused" not in row["reason"] and row["omnisendMessage"] == ""


def test_a_batch_without_a_verdict_is_not_delivered_with_the_stage_reason():
    row = failed_row_for_csv(UNCONFIRMED_ROW)
    assert row["reason"] == "not delivered: could not confirm: Omnisend GET /api/batches failed after 6 attempt(s): 503"


def test_the_run_message_counts_each_reason():
    message = failure_message([REFUSED_ROW, UNREACHABLE_ROW, UNREACHABLE_ROW], "partial")
    assert message.startswith("3 contacts not delivered: not delivered: could not reach Omnisend (2); "
                              "Omnisend refused the contact: identifiers[0].id: invalid email (1).")
    assert "rejected.csv" in message


def test_one_contact_is_singular():
    assert failure_message([REFUSED_ROW], "partial").startswith("1 contact not delivered")
