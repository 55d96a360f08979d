"""A send claims its batch before POSTing: twins POST once, an expired claim is taken over, and a dead holder's
batch is found in Omnisend and adopted instead of being POSTed again (shared/pipeline/send.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from shared import names
from shared.batch_store import read_batch
from shared.errors import RetryLater
from shared.pipeline import RunOptions, finalise, plan, send_batch, start_run, verify
from shared.pipeline.send import SEND_CLAIM_SECONDS, TakeoverNeedsSlots, claim_path
from shared.runs import RunPaths, dumps, read_json
from tests.integration.exporting import export, load_export, make_context, write_segment

RUNS = names.RUNS_CONTAINER


def posts(sim) -> int:
    return sim.state(include_contacts=False)["stats"]["requests_by_route"].get("POST /api/batches", 0)


def requests_total(sim) -> int:
    return sim.state(include_contacts=False)["stats"]["requests_total"]


def planned(tmp_path, sim, rows=1_000):
    write_segment(tmp_path, rows, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    definition = load_export()
    run_id = start_run(ctx, definition, RunOptions()).run_id
    manifest = plan(ctx, definition, run_id)
    return ctx, definition, run_id, manifest


def verify_to_end(ctx, run_id, deadline_seconds=20.0):
    deadline = time.monotonic() + deadline_seconds
    while verify(ctx, "vip", run_id).pending or verify(ctx, "vip", run_id).unsent:
        assert time.monotonic() < deadline, "batches never settled"
        time.sleep(0.02)


def dead_holder_claim(ctx, run_id, n, *, age_seconds=SEND_CLAIM_SECONDS + 1):
    """What an instance that died holding batch n's claim leaves behind: a claim past its expiry."""
    claimed = ctx.clock() - age_seconds
    body = {"claimedAt": claimed, "expiresAt": claimed + SEND_CLAIM_SECONDS, "holder": "dead"}
    ctx.state_store.write(RUNS, claim_path(RunPaths("vip", run_id), n, 0), dumps(body))


def test_every_send_delivered_twice_at_the_same_moment_posts_each_batch_once(tmp_path, sim):
    ctx, definition, run_id, manifest = planned(tmp_path, sim)
    # Two "instances": separate contexts (clients, connections) over the same run state, started together.
    twins = [make_context(tmp_path, sim.base_url), make_context(tmp_path, sim.base_url)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def deliver(twin, n, barrier):
        barrier.wait()
        outcome = send_batch(twin, "vip", run_id, n)
        with lock:
            outcomes.append(outcome)

    for n in range(1, manifest["batches"] + 1):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=deliver, args=(twin, n, barrier)) for twin in twins]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert posts(sim) == manifest["batches"] == 10
    assert outcomes.count("submitted") == 10
    assert set(outcomes) - {"submitted"} <= {"already-sent", "claimed-elsewhere"}
    verify_to_end(ctx, run_id)
    report = finalise(ctx, definition, run_id)
    assert report["sent"] == len(sim.contacts()) == 1_000


def test_a_live_claim_makes_the_twin_step_back_without_a_request(tmp_path, sim):
    ctx, _, run_id, _ = planned(tmp_path, sim, rows=100)
    dead_holder_claim(ctx, run_id, 1, age_seconds=1)  # claimed a second ago: its holder is still working

    assert send_batch(ctx, "vip", run_id, 1) == "claimed-elsewhere"
    assert requests_total(sim) == 0


def test_an_expired_claim_whose_holder_posted_is_adopted_not_posted_again(tmp_path, sim):
    ctx, definition, run_id, _ = planned(tmp_path, sim, rows=100)
    dead_holder_claim(ctx, run_id, 1, age_seconds=SEND_CLAIM_SECONDS + 1)
    # The holder POSTed the batch, then died before writing its marker.
    batch = read_batch(ctx.state_store, RunPaths("vip", run_id), 1)
    holders_batch = ctx.client.create_batch(batch["items"])
    time.sleep(0.1)  # the batch finishes, so its items show whose contacts it holds

    assert send_batch(ctx, "vip", run_id, 1) == "submitted"

    assert posts(sim) == 1
    marker = read_json(ctx.state_store, RUNS, RunPaths("vip", run_id).sent(1, 0))
    assert marker["batchId"] == holders_batch and marker["adopted"]
    verify_to_end(ctx, run_id)
    assert finalise(ctx, definition, run_id)["sent"] == 100


def test_an_expired_claim_whose_holder_never_posted_is_posted_once(tmp_path, sim):
    ctx, _, run_id, _ = planned(tmp_path, sim, rows=100)
    dead_holder_claim(ctx, run_id, 1)

    assert send_batch(ctx, "vip", run_id, 1) == "submitted"

    assert posts(sim) == 1
    assert not read_json(ctx.state_store, RUNS, RunPaths("vip", run_id).sent(1, 0)).get("adopted")


def test_a_takeover_paid_for_one_request_gives_the_claim_back_before_any_request(tmp_path, sim):
    """In Functions a send message is released for one budget slot; a takeover needs TAKEOVER_SLOTS (its adoption
    reads and the POST), so it asks for them instead of starving on the budget; the next delivery takes over."""
    ctx, _, run_id, _ = planned(tmp_path, sim, rows=100)
    dead_holder_claim(ctx, run_id, 1)
    before = requests_total(sim)

    with pytest.raises(TakeoverNeedsSlots):
        send_batch(ctx, "vip", run_id, 1, takeover_paid=False)

    assert requests_total(sim) == before
    assert send_batch(ctx, "vip", run_id, 1, takeover_paid=True) == "submitted"  # the claim was given back
    assert posts(sim) == 1


def test_an_other_batch_of_the_same_size_is_not_adopted(tmp_path, sim):
    ctx, _, run_id, _ = planned(tmp_path, sim, rows=1_000)
    dead_holder_claim(ctx, run_id, 2)
    batch1 = read_batch(ctx.state_store, RunPaths("vip", run_id), 1)
    other = ctx.client.create_batch(batch1["items"])  # 100 items too, but batch 1's contacts
    time.sleep(0.1)

    assert send_batch(ctx, "vip", run_id, 2) == "submitted"

    assert posts(sim) == 2
    assert read_json(ctx.state_store, RUNS, RunPaths("vip", run_id).sent(2, 0))["batchId"] != other


def test_a_holders_batch_still_pending_cannot_be_told_apart_and_is_posted_again(tmp_path, sim):
    """The bound the README states: when detection cannot be certain, one more upsert of the same contacts."""
    ctx, definition, run_id, _ = planned(tmp_path, sim, rows=100)
    sim.configure(batch_delay=1.0)
    dead_holder_claim(ctx, run_id, 1)
    batch = read_batch(ctx.state_store, RunPaths("vip", run_id), 1)
    ctx.client.create_batch(batch["items"])  # still pending: its items are not there to compare

    assert send_batch(ctx, "vip", run_id, 1) == "submitted"

    assert posts(sim) == 2
    verify_to_end(ctx, run_id)
    report = finalise(ctx, definition, run_id)
    assert report["sent"] == len(sim.contacts()) == 100


def test_a_send_that_failed_gives_its_claim_back_so_the_retry_goes_at_once(tmp_path, sim):
    _, _, run_id, _ = planned(tmp_path, sim, rows=100)
    ctx = make_context(tmp_path, sim.base_url, max_attempts=1)  # as in Functions: no inline retry
    sim.configure(error_5xx_rate=1.0)
    with pytest.raises(RetryLater):
        send_batch(ctx, "vip", run_id, 1)
    sim.configure(error_5xx_rate=0.0)

    assert send_batch(ctx, "vip", run_id, 1) == "submitted"


def _twin_process(root: str, base_url: str, run_id: str, batches: int, barrier, outcomes) -> None:
    ctx = make_context(Path(root), base_url)
    for n in range(1, batches + 1):
        barrier.wait()
        outcomes.put(send_batch(ctx, "vip", run_id, n))


def test_two_processes_sending_every_batch_at_the_same_moment_post_each_once(tmp_path, sim):
    ctx, definition, run_id, manifest = planned(tmp_path, sim)
    mp = multiprocessing.get_context("spawn")
    barrier, outcomes = mp.Barrier(2), mp.Queue()
    procs = [mp.Process(target=_twin_process,
                        args=(str(tmp_path), sim.base_url, run_id, manifest["batches"], barrier, outcomes))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    seen = [outcomes.get(timeout=5) for _ in range(2 * manifest["batches"])]

    assert all(p.exitcode == 0 for p in procs)
    assert posts(sim) == manifest["batches"] == 10
    assert seen.count("submitted") == 10
    verify_to_end(ctx, run_id)
    assert finalise(ctx, definition, run_id)["sent"] == len(sim.contacts()) == 1_000


def test_the_cli_resuming_after_a_crash_adopts_the_batch_its_dead_process_posted(tmp_path, sim):
    ctx, definition, run_id, _ = planned(tmp_path, sim)
    dead_holder_claim(ctx, run_id, 1, age_seconds=1)  # claimed a second ago by the process that crashed
    batch = read_batch(ctx.state_store, RunPaths("vip", run_id), 1)
    ctx.client.create_batch(batch["items"])  # its POST went through; its marker was never written
    time.sleep(0.1)

    report = export(make_context(tmp_path, sim.base_url), definition)  # the same command again: resumes

    assert report["runId"] == run_id and report["sent"] == len(sim.contacts()) == 1_000
    assert posts(sim) == 10  # batch 1 adopted, not POSTed again
