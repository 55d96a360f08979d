"""Verification settles a batch only by what happened to it: a batch Omnisend forgot (404) is sent again, item
failures it does not name are never counted as sent, a batch never confirmed ends unconfirmed (and the next run
sends it again), and the report counts every request made."""

from __future__ import annotations

import time

from shared import names
from shared.pipeline import RunOptions, finalise, plan, send_batch, start_run, verify
from shared.runs import RunPaths, read_json
from shared.state import load_state
from tests.integration.exporting import (
    assert_accounting,
    export,
    load_export,
    make_context,
    rejected_rows,
    segment_emails,
    write_segment,
)

RUNS = names.RUNS_CONTAINER


def stats(sim) -> dict:
    return sim.state(include_contacts=False)["stats"]


def posts(sim) -> int:
    return stats(sim)["requests_by_route"].get("POST /api/batches", 0)


def planned(tmp_path, sim, rows=1_000):
    write_segment(tmp_path, rows, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    run_id = start_run(ctx, definition, RunOptions()).run_id
    return ctx, definition, run_id, plan(ctx, definition, run_id)


def verify_to_end(ctx, run_id, deadline_seconds=20.0):
    deadline = time.monotonic() + deadline_seconds
    while True:
        outcome = verify(ctx, "vip", run_id)
        if not (outcome.pending or outcome.unsent):
            return
        assert time.monotonic() < deadline, "batches never settled"
        time.sleep(0.02)


def test_a_batch_omnisend_forgot_before_applying_it_is_sent_again_and_every_contact_arrives(tmp_path, sim):
    ctx, definition, run_id, manifest = planned(tmp_path, sim)
    sim.configure(batch_delay=0.5)
    for n in range(1, manifest["batches"] + 1):
        send_batch(ctx, "vip", run_id, n)
    sim.configure(batch_retention_seconds=0)  # Omnisend forgets every batch before running it: 404 from now on

    first = verify(ctx, "vip", run_id)

    assert first.pending == list(range(1, 11)) and sim.contacts() == {}
    sim.configure(batch_retention_seconds=None, batch_delay=0.01)
    verify_to_end(ctx, run_id)
    report = finalise(ctx, definition, run_id)
    assert report["status"] == "succeeded" and report["sent"] == len(sim.contacts()) == 1_000
    assert posts(sim) == 20  # each batch once more, as a second attempt
    assert read_json(ctx.state_store, RUNS, RunPaths("vip", run_id).result(1))["attempts"] == 2


def test_a_404_on_a_batchs_items_sends_its_contacts_again(tmp_path, sim):
    ctx, definition, run_id, _ = planned(tmp_path, sim, rows=100)
    [first_email] = segment_emails(tmp_path, 1)
    sim.configure(item_fail={first_email: 400}, batch_retention_polls=0)  # /items of a batch with errors → 404
    send_batch(ctx, "vip", run_id, 1)
    time.sleep(0.1)

    assert verify(ctx, "vip", run_id).pending == [1]  # re-submitted, not failed

    sim.configure(batch_retention_polls=None)
    verify_to_end(ctx, run_id)
    report = finalise(ctx, definition, run_id)
    assert report["sent"] == 99 and report["failed"] == 1 and report["unconfirmed"] == 0
    assert posts(sim) == 2


def test_item_failures_omnisend_does_not_name_are_never_counted_as_sent(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False)
    failing = segment_emails(tmp_path, 1)[0]
    sim.configure(item_fail={failing: 400}, batch_items_echo="none")
    ctx = make_context(tmp_path, sim.base_url)

    report = export(ctx)

    assert_accounting(report)
    # Batch 1 had one failure nobody can place: none of its 100 rows is reported sent.
    assert report["sent"] == 900 and report["unconfirmed"] == 100 and report["failed"] == 0
    assert report["status"] == "partial"
    [row] = [r for r in rejected_rows(ctx, report) if r["email"] == failing]
    assert row["bucket"] == "unconfirmed" and "named only 0" in row["reason"]
    assert len(load_state(ctx.state_store, "vip")) == 900  # unconfirmed rows stay out: the next run sends them


def test_the_next_run_sends_the_unconfirmed_contacts_again(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False)
    failing = segment_emails(tmp_path, 1)[0]
    sim.configure(item_fail={failing: 400}, batch_items_echo="none")
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    sim.configure(batch_items_echo="request")

    again = export(ctx, force=True)

    assert again["unchanged"] == 900 and again["sent"] == 99 and again["failed"] == 1
    assert again["unconfirmed"] == 0


def test_item_failures_named_only_by_position_are_mapped_to_their_rows(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False)
    failing = segment_emails(tmp_path, 3)[2]
    sim.configure(item_fail={failing: 400}, batch_items_echo="position")
    ctx = make_context(tmp_path, sim.base_url)

    report = export(ctx)

    assert report["sent"] == 999 and report["failed"] == 1 and report["unconfirmed"] == 0
    [row] = [r for r in rejected_rows(ctx, report) if r["bucket"] == "failed"]
    assert row["email"] == failing and row["httpStatus"] == "400"


def test_a_batch_unconfirmed_past_its_own_limit_is_unconfirmed_and_unsent_batches_are_untouched(tmp_path, sim):
    ctx, definition, run_id, manifest = planned(tmp_path, sim)
    sim.configure(batch_delay=30)  # Omnisend sits on batch 1
    send_batch(ctx, "vip", run_id, 1)
    time.sleep(0.3)

    outcome = verify(ctx, "vip", run_id, confirm_within=0.2)  # batch 1 is past its limit; 2..10 never sent

    assert outcome.done == [1] and outcome.unsent == list(range(2, 11))
    sim.configure(batch_delay=0.01)
    for n in range(2, manifest["batches"] + 1):
        send_batch(ctx, "vip", run_id, n)
    verify_to_end(ctx, run_id)
    report = finalise(ctx, definition, run_id)
    assert report["unconfirmed"] == 100 and report["failed"] == 0 and report["sent"] == 900
    assert_accounting(report)


def test_report_requests_equal_the_requests_omnisend_saw_including_retries(tmp_path, sim):
    write_segment(tmp_path, 2_000, messy=False)
    sim.configure(burst_429=7, burst_retry_after=0, item_fail={segment_emails(tmp_path, 1)[0]: 503},
                  item_fail_times=1)
    report = export(make_context(tmp_path, sim.base_url))

    seen = stats(sim)
    assert seen["responses_429"] == 7
    assert report["requests"] == seen["requests_total"]
