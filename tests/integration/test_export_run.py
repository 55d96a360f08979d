"""A whole export against the Omnisend simulator: what reaches Omnisend, and what the report says."""

from __future__ import annotations

import pytest

from shared.errors import AuthRejected
from shared.pipeline import RunOptions, plan, send_batch, start_run
from tests.integration.exporting import (
    assert_accounting,
    export,
    load_export,
    make_context,
    rejected_rows,
    segment_emails,
    write_segment,
)


def stats(sim) -> dict:
    return sim.state()["stats"]


def posts_to_batches(sim, version="2026-03-15") -> int:
    path = "POST /api/batches" if version == "2026-03-15" else "POST /v3/batches"
    return stats(sim)["requests_by_route"].get(path, 0)


def test_clean_run_delivers_every_valid_contact(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx)
    contacts = sim.contacts()
    assert report["status"] == "succeeded"
    assert_accounting(report)
    assert report["sent"] == len(contacts) == 288
    assert report["rejected"] == 8 and report["duplicates"] == 4
    assert all(c["tags"] == ["ci-vip"] for c in contacts.values())


def test_the_report_counts_exactly_the_requests_omnisend_received(tmp_path, sim):
    write_segment(tmp_path, 2_000, messy=False)
    report = export(make_context(tmp_path, sim.base_url))
    assert report["requests"] == stats(sim)["requests_total"]


def test_every_row_not_sent_is_in_rejected_csv_with_its_reason(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx)
    rows = rejected_rows(ctx, report)
    buckets = [r["bucket"] for r in rows]
    assert buckets.count("rejected") == report["rejected"]
    assert buckets.count("duplicate") == report["duplicates"]
    invalid = next(r for r in rows if r["email"] == "not-an-email")
    assert invalid["reason"] == "invalid email address"
    assert invalid["file"].endswith("VipCustomers_1.csv") and int(invalid["line"]) == 6


def test_emails_reach_omnisend_trimmed_and_lower_cased(tmp_path, sim):
    write_segment(tmp_path, 300)
    export(make_context(tmp_path, sim.base_url))
    assert all(e == e.strip().lower() for e in sim.contacts())


def test_a_finished_snapshot_is_not_exported_twice(tmp_path, sim):
    write_segment(tmp_path, 150)
    ctx = make_context(tmp_path, sim.base_url)
    first = export(ctx)
    before = stats(sim)["requests_total"]
    second = export(ctx)
    assert second["runId"] == first["runId"] and second["alreadyExported"]
    assert stats(sim)["requests_total"] == before


def test_survives_a_429_storm(tmp_path, sim):
    write_segment(tmp_path, 600, messy=False)
    sim.configure(burst_429=25, burst_retry_after=0)
    report = export(make_context(tmp_path, sim.base_url))
    assert report["status"] == "succeeded"
    assert report["sent"] == len(sim.contacts()) == 600
    assert stats(sim)["responses_429"] >= 25


def test_injected_5xx_and_dropped_connections_lose_nothing(tmp_path, sim):
    write_segment(tmp_path, 1000, messy=False)
    sim.configure(error_5xx_rate=0.05, drop_rate=0.05, seed=3)
    report = export(make_context(tmp_path, sim.base_url))
    assert report["status"] == "succeeded"
    assert_accounting(report)
    assert report["sent"] == len(sim.contacts()) == 1000


def test_a_permanently_refused_item_is_reported_with_omnisends_answer(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    victim = segment_emails(tmp_path, 1)[0]
    sim.configure(item_fail={victim: 400})
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx, load_export())
    failed = [r for r in rejected_rows(ctx, report) if r["bucket"] == "failed"]
    assert [r["email"] for r in failed] == [victim]
    assert victim not in sim.contacts()
    assert report["status"] == "partial" and report["failed"] == 1
    assert failed[0]["httpStatus"] == "400" and failed[0]["omnisendMessage"]
    assert_accounting(report)


def test_a_retryable_item_failure_is_resubmitted_and_delivered(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    emails = segment_emails(tmp_path, 2)
    sim.configure(item_fail={emails[0]: 500, emails[1]: 503}, item_fail_times=1)
    report = export(ctx)
    assert report["status"] == "succeeded" and report["failed"] == 0
    assert set(emails) <= set(sim.contacts())
    assert posts_to_batches(sim) == 2  # the batch, then one re-submission of just the two items


def test_a_rejected_api_key_fails_the_run_at_once(tmp_path, sim):
    write_segment(tmp_path, 100, messy=False)
    ctx = make_context(tmp_path, sim.base_url, key="wrong-key")
    with pytest.raises(AuthRejected, match="refused the API key"):
        export(ctx)
    assert sim.contacts() == {}


def test_a_crashed_run_resumes_without_resending_finished_batches(tmp_path, sim):
    write_segment(tmp_path, 1000, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    started = start_run(ctx, definition, RunOptions())
    manifest = plan(ctx, definition, started.run_id)
    for n in (1, 2, 3):  # the process dies after submitting three batches
        send_batch(ctx, "vip", started.run_id, n)
    report = export(make_context(tmp_path, sim.base_url), definition)
    assert report["runId"] == started.run_id
    assert posts_to_batches(sim) == manifest["batches"] == 10
    assert report["sent"] == len(sim.contacts()) == 1000


def test_v3_run_uses_1000_item_batches(tmp_path, sim):
    write_segment(tmp_path, 1500, messy=False)
    report = export(make_context(tmp_path, sim.base_url, api_version="v3"))
    assert report["status"] == "succeeded" and report["batches"] == 2
    assert posts_to_batches(sim, "v3") == 2
    assert len(sim.contacts()) == 1500



def test_after_a_refused_key_the_same_run_resumes_once_the_key_is_fixed(tmp_path, sim):
    write_segment(tmp_path, 200, messy=False)
    with pytest.raises(AuthRejected):
        export(make_context(tmp_path, sim.base_url, key="wrong-key"))
    report = export(make_context(tmp_path, sim.base_url))
    assert report["status"] == "succeeded" and report["sent"] == len(sim.contacts()) == 200
