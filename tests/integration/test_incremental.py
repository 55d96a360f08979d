"""Keeping Omnisend in step with each snapshot: only changes are sent, leavers are untagged, dry runs only read."""

from __future__ import annotations

import time

from shared.names import STATE_CONTAINER
from shared.pipeline import RunOptions, plan, send_batch, start_run
from shared.state import load_state, state_name
from tests.integration.exporting import (
    assert_accounting,
    export,
    load_export,
    make_context,
    segment_emails,
    write_segment,
)

FIRST_RUN = "2026/11/27/0205"
SECOND_RUN = "2026/11/28/0205"
THIRD_RUN = "2026/11/29/0205"




def exported_then_new_snapshot(tmp_path, sim, rows: int, api_version: str = "2026-03-15",
                               second_rows: int | None = None, **changes):
    """``rows`` contacts exported from a first snapshot, then a second snapshot written with ``changes``."""
    write_segment(tmp_path, rows, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url, api_version=api_version)
    first = export(ctx)
    write_segment(tmp_path, rows if second_rows is None else second_rows, messy=False, run=SECOND_RUN, **changes)
    return ctx, first


def requests_made(sim) -> int:
    return sim.state()["stats"]["requests_total"]


def writes(sim) -> int:
    return sim.state()["stats"]["write_requests"]


def wait_for(condition, seconds: float = 5.0) -> None:
    """Untagging is asynchronous at Omnisend (202 Accepted); give the simulator its batch delay."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_second_run_sends_only_the_changed_contacts(tmp_path, sim):
    ctx, first = exported_then_new_snapshot(tmp_path, sim, 10_000, changed_fraction=0.01)
    before = requests_made(sim)
    second = export(ctx)
    changed = [c for c in sim.contacts().values() if c["customProperties"].get("loyalty_tier") == "diamond"]
    assert first["sent"] == 10_000
    assert second["sent"] == len(changed) and 50 < len(changed) < 150
    assert second["unchanged"] == 10_000 - len(changed)
    assert_accounting(second)
    assert requests_made(sim) - before <= second["batches"] + 5  # a POST per batch, a few status polls


def test_a_run_with_nothing_changed_sends_nothing(tmp_path, sim):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 2_000)
    before = requests_made(sim)
    report = export(ctx)
    assert report["sent"] == 0 and report["unchanged"] == 2_000
    assert requests_made(sim) - before <= 3


def test_full_resync_sends_everything_again(tmp_path, sim):
    write_segment(tmp_path, 500, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    report = export(ctx, full_resync=True)
    assert report["sent"] == 500 and report["unchanged"] == 0


def test_leavers_are_untagged_and_keep_their_other_tags(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    for email in list(sim.contacts())[:50]:
        sim.seed_contact(email=email, tags=["newsletter"], api_version="2026-03-15")
    write_segment(tmp_path, 1_000, messy=False, run=SECOND_RUN, drop_fraction=0.1)
    report = export(ctx)
    leavers = report["leavers"]
    assert 50 < leavers < 150 and report["untagged"] == leavers
    wait_for(lambda: sum("ci-vip" in c["tags"] for c in sim.contacts().values()) == 1_000 - leavers)
    contacts = sim.contacts()
    assert all("newsletter" in contacts[e]["tags"] for e in list(contacts)[:50])


def test_a_much_smaller_snapshot_holds_the_untag_step(tmp_path, sim):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 1_000, drop_fraction=0.5)
    report = export(ctx)
    assert report["status"] == "held" and report["untagged"] == 0
    assert "--allow-mass-exit" in report["message"]
    assert sum("ci-vip" in c["tags"] for c in sim.contacts().values()) == 1_000


def test_allow_mass_exit_untags_after_the_guard_held(tmp_path, sim):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 1_000, drop_fraction=0.5)
    held = export(ctx)
    confirmed = export(ctx, allow_mass_exit=True)
    assert confirmed["status"] == "succeeded" and confirmed["untagged"] == held["leavers"]
    assert confirmed["sent"] == 0
    wait_for(lambda: sum("ci-vip" in c["tags"] for c in sim.contacts().values()) == 1_000 - held["leavers"])


def test_dry_run_makes_no_write_request_and_changes_no_state(tmp_path, sim):
    write_segment(tmp_path, 1_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    state_before = ctx.state_store.read(STATE_CONTAINER, state_name("vip"))
    write_segment(tmp_path, 1_000, messy=False, run=SECOND_RUN, changed_fraction=0.05, drop_fraction=0.05)
    writes_before = writes(sim)
    report = export(ctx, dry_run=True)
    assert writes(sim) == writes_before
    assert ctx.state_store.read(STATE_CONTAINER, state_name("vip")) == state_before
    assert report["dryRun"] and report["wouldCreateOrUpdate"] > 0 and report["wouldUntag"] == report["leavers"] > 0
    assert len(report["samplePayloads"]) == 5
    assert all("***" in p["identifiers"][0]["id"] for p in report["samplePayloads"])
    assert report["estimatedSeconds"] > 0


def test_a_crash_does_not_advance_the_state_and_the_next_run_completes_it(tmp_path, sim):
    write_segment(tmp_path, 2_000, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    state_before = ctx.state_store.read(STATE_CONTAINER, state_name("vip"))
    write_segment(tmp_path, 2_000, messy=False, run=SECOND_RUN, changed_fraction=0.2)
    definition = load_export()
    started = start_run(ctx, definition, RunOptions())
    manifest = plan(ctx, definition, started.run_id)
    send_batch(ctx, "vip", started.run_id, 1)  # ...and the process dies here
    assert ctx.state_store.read(STATE_CONTAINER, state_name("vip")) == state_before
    report = export(make_context(tmp_path, sim.base_url), definition)
    assert report["runId"] == started.run_id and report["sent"] == manifest["toSend"]
    state = load_state(ctx.state_store, "vip")
    assert len(state) == 2_000


def test_failed_contacts_are_left_out_of_the_state_and_retried_next_time(tmp_path, sim):
    write_segment(tmp_path, 300, messy=False, run=FIRST_RUN)
    ctx = make_context(tmp_path, sim.base_url)
    victim = sorted(segment_emails(tmp_path))[0]
    sim.configure(item_fail={victim: 400})
    first = export(ctx)
    sim.configure(item_fail={})
    write_segment(tmp_path, 300, messy=False, run=SECOND_RUN)
    second = export(ctx)
    assert first["failed"] == 1 and second["sent"] == 1 and victim in sim.contacts()


def test_v3_counts_leavers_without_untagging(tmp_path, sim):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 500, api_version="v3", drop_fraction=0.1)
    report = export(ctx)
    assert report["leavers"] > 0 and report["untagged"] == 0
    assert "v3 has no untag endpoint" in report["message"]


def test_state_stays_under_32_bytes_per_contact(tmp_path, sim):
    write_segment(tmp_path, 10_000, messy=False, run=FIRST_RUN)
    report = export(make_context(tmp_path, sim.base_url))
    assert report["stateBytes"] / report["stateMembers"] <= 32



def test_an_empty_snapshot_untags_nobody(tmp_path, sim):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 200, second_rows=0)
    report = export(ctx)
    assert report["rows"] == 0 and report["leavers"] == 200
    assert report["status"] == "held" and report["untagged"] == 0
    assert sum("ci-vip" in c["tags"] for c in sim.contacts().values()) == 200
