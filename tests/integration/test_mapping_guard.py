"""The mapping guard: a run whose rows are (nearly) all rejected sends nothing and fails, saying why."""

from __future__ import annotations

import time

from shared.names import RUNS_CONTAINER
from shared.runs import RunPaths
from tests.integration.exporting import (
    assert_accounting,
    export,
    load_export,
    make_context,
    rejected_rows,
    write_segment,
)

WRONG_EMAIL_COLUMN = {"email": "LifetimeValue", "firstName": "FirstName"}  # a number where the email should be


def test_email_mapped_to_a_numeric_column_sends_nothing_and_fails(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx, load_export(mapping=WRONG_EMAIL_COLUMN))
    assert report["status"] == "failed"
    # Only the preflight read that proved the key before planning; no write of any kind.
    assert sim.stats()["write_requests"] == 0 and sim.stats()["requests_total"] == 1
    assert report["valid"] == 0 and report["rejected"] == 300
    assert_accounting(report)


def test_the_failure_message_names_the_top_reason_with_its_count_and_the_column(tmp_path, sim):
    write_segment(tmp_path, 300)
    report = export(make_context(tmp_path, sim.base_url), load_export(mapping=WRONG_EMAIL_COLUMN))
    assert "mapping guard: 300 of 300 rows rejected (100%), no row is valid" in report["message"]
    assert "invalid email address (300)" in report["message"]
    assert 'column "LifetimeValue"' in report["message"]


def test_a_guarded_run_leaves_the_membership_and_the_tags_alone(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    assert export(ctx)["sent"] == 288
    guarded = export(ctx, load_export(mapping=WRONG_EMAIL_COLUMN), force=True)
    assert guarded["status"] == "failed" and guarded["leavers"] == 0
    ctx.clock = lambda: time.time() + 5  # a forced run's id carries the second it started: a later one
    again = export(ctx, force=True)
    assert sim.stats()["tag_operations"] == {}
    assert again["unchanged"] == 288 and again["leavers"] == 0  # the state still holds all 288 members


def test_more_rejected_than_max_rejected_fraction_fails_with_every_valid_row_counted_as_not_sent(tmp_path, sim):
    write_segment(tmp_path, 300)  # 8 of 300 rows have no valid email: 2.7%
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx, load_export(maxRejectedFraction=0.02))
    assert report["status"] == "failed" and report["sent"] == 0 and report["failed"] == 288
    assert "more than maxRejectedFraction 0.02" in report["message"]
    assert sim.stats()["write_requests"] == 0
    assert_accounting(report)
    not_sent = [r for r in rejected_rows(ctx, report) if r["bucket"] == "failed"]
    assert len(not_sent) == 288
    assert all(r["reason"].startswith("not sent: the mapping guard stopped the run") for r in not_sent)


def test_a_guarded_run_keeps_no_contact_payloads(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx, load_export(maxRejectedFraction=0.02))
    batches = f"{RunPaths(report['export'], report['runId']).root}/batches/"
    assert list(ctx.state_store.list(RUNS_CONTAINER, batches)) == []


def test_at_or_below_max_rejected_fraction_the_run_goes_on(tmp_path, sim):
    write_segment(tmp_path, 300)
    report = export(make_context(tmp_path, sim.base_url), load_export(maxRejectedFraction=0.03))
    assert report["status"] == "succeeded" and report["sent"] == 288


def test_the_dry_run_says_the_guard_would_stop_the_run(tmp_path, sim):
    write_segment(tmp_path, 300)
    report = export(make_context(tmp_path, sim.base_url), load_export(mapping=WRONG_EMAIL_COLUMN), dry_run=True)
    assert report["mappingGuard"].startswith("mapping guard: 300 of 300 rows rejected")
    [top] = report["rejectedReasons"]
    assert top["reason"] == "invalid email address" and top["count"] == 300
    assert len(top["samples"]) == 3 and all("@" not in s["email"] or "***" in s["email"] for s in top["samples"])
