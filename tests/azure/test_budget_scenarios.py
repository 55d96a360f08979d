"""One request budget per brand, whatever the scale: the real Functions app in 2 and 4 worker processes
(tests/azure/concurrent_host.py) against the Omnisend simulator whose rate limit IS the app's budget.

Time scale: Omnisend's 60 s sliding window is ``WINDOW_SECONDS`` here, and the app's budget of
``BUDGET_PER_MINUTE`` allows ``BUDGET_PER_WINDOW`` requests in any such window (the simulator enforces exactly
that). Each scenario checks, from the requests the workers made and what the simulator saw:
- no window holds more than the budget, and the simulator refused nothing (0 429s);
- every window while sends were going holds at least 90 % of the budget;
- every contact of the snapshot is in the simulator with the export's tag, the report's identity holds.
The measured numbers are printed (run with ``-s``) and quoted in docs/azure-local.md.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import time

import pytest

from devtools.omnisend_sim import SimConfig, Simulator
from shared import names
from shared.queues import StageQueues
from tests.azure.concurrent_host import ConcurrentHost, KillPoint
from tests.azure.scenario_support import (
    BUDGET_PER_MINUTE,
    BUDGET_PER_WINDOW,
    KEY,
    WINDOW_SECONDS,
    Scenario,
    posts_to_batches,
)

pytestmark = pytest.mark.azurite

ROWS = 13_000  # 130 batches of 100: about 28 s of sending at 92 % of 300/min


@pytest.fixture(scope="module")
def omnisend():
    config = SimConfig(api_keys=(KEY,), batch_delay=0.2, requests_per_minute=BUDGET_PER_WINDOW,
                       rate_window_seconds=WINDOW_SECONDS)
    with Simulator(config) as sim:
        yield sim


def window_counts(times: list[float], starts: list[float]) -> list[int]:
    return [bisect.bisect_left(times, a + WINDOW_SECONDS) - bisect.bisect_left(times, a) for a in starts]


def budget_numbers(host: ConcurrentHost, sim: Simulator) -> dict[str, object]:
    requests = host.http_requests()
    times = sorted(e["t"] for e in requests)
    posts = sorted(e["t"] for e in requests if e["method"] == "POST" and e["path"].endswith("/batches"))
    first, last = posts[0], posts[-1]
    busiest = max(window_counts(times, times))
    starts = [first + 0.25 * k for k in range(int((last - first - WINDOW_SECONDS) / 0.25) + 1)]
    while_sending = window_counts(times, starts)
    stats = sim.state(include_contacts=False)["stats"]
    return {
        "workers": len(host.alive()), "window_s": WINDOW_SECONDS, "budget_per_window": BUDGET_PER_WINDOW,
        "max_requests_in_a_window": busiest, "min_requests_in_a_window_while_sending": min(while_sending),
        "min_percent_of_budget_while_sending": round(100 * min(while_sending) / BUDGET_PER_WINDOW, 1),
        "max_percent_of_budget": round(100 * busiest / BUDGET_PER_WINDOW, 1),
        "requests": len(times), "posts": len(posts), "responses_429": stats["responses_429"],
        "sending_seconds": round(last - first, 1),
        "rescheduled_sends": sum(1 for e in host.events("done") if e["fn"] == "send_stage") - len(posts),
        "lost_leases": len(host.events("lease-lost")),
        "omnisend_errors": sorted({f"{e['method']} {e['status']} {e.get('error') or ''}" for e in requests
                                   if e["status"] is None or e["status"] >= 300}),
    }


@pytest.fixture
def scenario(tmp_path, azurite, omnisend, container, queue_prefix):
    omnisend.reset()

    def make(exports: list[tuple[int, int]]) -> Scenario:
        return Scenario(tmp_path, azurite, omnisend, container, queue_prefix, exports)

    return make


def assert_within_budget(numbers: dict[str, object]) -> None:
    print(json.dumps(numbers))
    assert numbers["responses_429"] == 0, numbers
    assert numbers["max_requests_in_a_window"] <= BUDGET_PER_WINDOW, numbers
    assert numbers["min_requests_in_a_window_while_sending"] >= 0.9 * BUDGET_PER_WINDOW, numbers


@pytest.mark.parametrize("workers", [2, 4])
def test_any_number_of_workers_together_use_the_budget_and_never_more(scenario, workers):
    s = scenario([(ROWS, 7)])
    with s.host(workers) as host:
        t0 = time.monotonic()
        reports = s.run(host)
        numbers = budget_numbers(host, s.sim)
    numbers["seconds"] = round(time.monotonic() - t0, 1)
    s.check_delivered(reports)
    assert numbers["posts"] == reports[s.exports[0].name]["batches"], numbers  # no kill, no twin: POSTed once
    assert_within_budget(numbers)


def test_two_exports_at_once_share_one_budget(scenario):
    s = scenario([(ROWS // 2, 7), (ROWS // 2, 11)])
    with s.host(2) as host:
        t0 = time.monotonic()
        reports = s.run(host)
        numbers = budget_numbers(host, s.sim)
    numbers["seconds"] = round(time.monotonic() - t0, 1)
    s.check_delivered(reports)
    assert_within_budget(numbers)


# ------------------------------------------------------------------------------------------------ crashes


def test_random_sigkills_of_busy_workers_through_a_run_lose_nothing(scenario):
    """Every 3 s while batches are being POSTed, SIGKILL a random worker that has a send in flight; dead workers
    are replaced. Each killed send comes back after its lease: at most the sends in flight at a kill POST twice."""
    s = scenario([(8_000, 7)])
    batches = 80
    rng = random.Random(8)
    with s.host(3) as host:
        t0 = time.monotonic()
        next_kill = [t0 + 4.0]

        def killer() -> None:
            if time.monotonic() >= next_kill[0] and posts_to_batches(s.sim) < batches:
                host.kill_busy(rng, function="send_stage")
                next_kill[0] = time.monotonic() + 3.0

        reports = s.run(host, during=killer)
        numbers = budget_numbers(host, s.sim)
        kills = list(host.kills)
        restarts = host.restarts
    in_flight = sum(k["invocations"].get("send_stage", 0) for k in kills)
    numbers.update(seconds=round(time.monotonic() - t0, 1), kills=len(kills), restarts=restarts,
                   sends_in_flight_at_kills=in_flight, duplicate_posts=numbers["posts"] - batches)
    print(json.dumps(numbers))
    s.check_delivered(reports)
    assert len(kills) >= 3 and restarts >= len(kills)
    assert 0 <= numbers["duplicate_posts"] <= in_flight
    assert numbers["responses_429"] == 0


def test_a_sigkill_right_after_a_post_duplicates_at_most_what_that_worker_had_in_flight(scenario):
    s = scenario([(5_000, 7)])
    with s.host(2, kill_points=(KillPoint("after-post", r"^POST .*/batches$", nth=5),)) as host:
        reports = s.run(host)
        [death] = host.events("self-kill")
        in_flight = host.in_flight(death["w"], death["gen"])["invocations"].get("send_stage", 0)
        posts = posts_to_batches(s.sim)
    s.check_delivered(reports)
    print(json.dumps({"posts": posts, "batches": 50, "sends_in_flight_at_kill": in_flight}))
    assert in_flight >= 1 and 50 <= posts <= 50 + in_flight


def test_every_send_delivered_twice_at_the_same_moment_posts_each_batch_once(scenario):
    s = scenario([(5_000, 7)])
    with s.host(2, twin_functions=("send_stage",)) as host:
        reports = s.run(host)
        twins = len(host.events("twin"))
    s.check_delivered(reports)
    assert twins >= 50
    assert posts_to_batches(s.sim) == reports[s.exports[0].name]["batches"]


def test_a_sigkill_right_after_claiming_finalisation_still_finishes_the_run(scenario):
    s = scenario([(2_000, 7)])
    with s.host(2, kill_points=(KillPoint("after-blob-write", r"/finalise/claim\.\d+\.json$"),)) as host:
        reports = s.run(host, timeout=25)
        assert len(host.events("self-kill")) == 1
    s.check_delivered(reports)


# ------------------------------------------------------------------------------------------------ one stage at a time


def orchestrator_of(s: Scenario):
    """The app's orchestrator as the workers build it, in this process (no worker started)."""
    import function_app

    s.host(1)  # bootstrap_here() wires function_app in this process
    return function_app.orchestrator()


def planned_run(s: Scenario):
    from shared.pipeline import RunOptions
    from shared.queues import StageMessage

    orchestrator = orchestrator_of(s)
    export = s.exports[0].name
    status, body = orchestrator.start(export, RunOptions(trigger="http"))
    assert status == 202
    return orchestrator, StageMessage(export, body["runId"])


def send_messages(s: Scenario, wait: float) -> list[dict]:
    time.sleep(wait)
    client = StageQueues.from_connection_string(s.azurite).client(s.queue_prefix + names.SEND_QUEUE)
    return [json.loads(m.content) for m in client.receive_messages(max_messages=32, visibility_timeout=60)]


def test_plan_gives_every_send_its_own_slot_evenly_spaced_at_the_send_share(scenario):
    from shared.budget import SEND_SHARE

    s = scenario([(2_000, 7)])
    orchestrator, run = planned_run(s)
    orchestrator.on_plan(run)

    messages = send_messages(s, wait=3.0)
    slots = sorted(m["slot"] for m in messages)
    assert sorted(m["batch"] for m in messages) == list(range(1, 21))
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) == pytest.approx(max(gaps), abs=0.002) == pytest.approx(60 / (BUDGET_PER_MINUTE * SEND_SHARE),
                                                                            abs=0.002)


def test_a_send_delivered_past_its_slot_takes_a_new_slot_instead_of_posting_now(scenario):
    from shared.queues import StageMessage

    s = scenario([(2_000, 7)])
    orchestrator, run = planned_run(s)
    orchestrator.on_plan(run)
    send_messages(s, wait=3.0)  # take the planned sends out of the way
    t0 = time.time()
    late = StageMessage(run.export, run.run_id, 1, extra={"slot": t0 - 10})

    assert orchestrator.on_send(late) == "rescheduled"

    assert posts_to_batches(s.sim) == 0
    [again] = send_messages(s, wait=1.5)
    assert again["batch"] == 1 and again["slot"] >= t0 and again["attempt"] == 0  # a new slot; not a failure


def test_a_429_retry_takes_a_slot_no_earlier_than_omnisends_retry_after(scenario):
    from shared.queues import StageMessage

    s = scenario([(2_000, 7)])
    orchestrator, run = planned_run(s)
    orchestrator.on_plan(run)
    send_messages(s, wait=3.0)
    s.sim.configure(burst_429=1, burst_retry_after=30)
    t0 = time.time()

    assert orchestrator.on_send(StageMessage(run.export, run.run_id, 1, extra={"slot": t0})) == "requeued"

    lanes = orchestrator.pacer.budget.lanes()
    assert lanes["cursor"] >= t0 + 30  # the retry's slot, and every slot after it, is past retryAfter
    assert send_messages(s, wait=0) == []  # the retried message is hidden until then


def test_a_takeover_while_both_lanes_are_busy_adopts_the_dead_holders_post_on_slots_of_its_own(scenario):
    """Issue 8's starvation, deterministically. A send POSTed its batch and died before its marker; its redelivery
    must take the claim over and read Omnisend's batches to find that POST, while other sends book the send lane and
    other verify polls book the side lane far beyond an invocation's wait. It is released once more for
    TAKEOVER_SLOTS send-lane slots and adopts the batch on them: no second POST, no slot taken at request time."""
    from shared.pipeline.send import TAKEOVER_SLOTS, claim_path
    from shared.queues import StageMessage
    from shared.runs import RunPaths, dumps, read_json

    s = scenario([(2_000, 7)])
    orchestrator, run = planned_run(s)
    orchestrator.on_plan(run)
    StageQueues.from_connection_string(s.azurite).client(s.queue_prefix + names.SEND_QUEUE).clear_messages()
    budget, store = orchestrator.pacer.budget, orchestrator.ctx.state_store
    paths = RunPaths(run.export, run.run_id)
    deadline = time.monotonic() + 60
    while budget.lanes()["cursor"] > time.time() and time.monotonic() < deadline:
        time.sleep(0.2)  # the planned sends' slots are past (they were cleared): the send lane is idle
    # The holder: POSTs batch 1 on its slot, then dies before writing its marker (its claim runs out).
    holder_slot = budget.reserve(1)[0]
    assert orchestrator.on_send(StageMessage(run.export, run.run_id, 1, extra={"slot": holder_slot})) == "submitted"
    store.delete(names.RUNS_CONTAINER, paths.sent(1, 0))
    claim = claim_path(paths, 1, 0)
    store.write(names.RUNS_CONTAINER, claim, dumps({**read_json(store, names.RUNS_CONTAINER, claim),
                                                    "expiresAt": time.time() - 1}))
    time.sleep(1.0)  # Omnisend finishes the dead holder's batch (the simulator takes 0.2 s)
    before = s.sim.state(include_contacts=False)["stats"]["requests_by_route"]
    for _ in range(30):  # verify polls of other runs book the side lane for the next ~150 s
        budget.take(max_wait=float("inf"))
    side = budget.lanes()["side"]
    budget.reserve(5)  # and other sends book the send lane for the next second

    # The redelivery, past its slot; then whatever it put back on the queue, as the host would deliver it.
    outcomes = [orchestrator.on_send(StageMessage(run.export, run.run_id, 1, attempt=0, extra={"slot": holder_slot}))]
    released_for = []
    while not store.exists(names.RUNS_CONTAINER, paths.sent(1, 0)) and time.monotonic() < deadline:
        if budget.lanes()["cursor"] < time.time() + 1:
            budget.reserve(5)  # other sends keep the send lane busy: a slot taken now would be a side-lane slot
        for body in send_messages(s, wait=0.2):
            released_for.append(body.get("slots", 1))
            outcomes.append(orchestrator.on_send(StageMessage.parse(body)))

    marker = read_json(store, names.RUNS_CONTAINER, paths.sent(1, 0))
    assert marker is not None and marker.get("adopted") is True, outcomes
    assert outcomes[-1] == "submitted" and set(released_for) == {TAKEOVER_SLOTS}, (outcomes, released_for)
    after = s.sim.state(include_contacts=False)["stats"]["requests_by_route"]
    made = {route: after[route] - before.get(route, 0) for route in after if after[route] != before.get(route, 0)}
    print(json.dumps({"outcomes": outcomes, "released_for": released_for, "requests": made}))
    assert posts_to_batches(s.sim) == 1  # the holder's POST only: adopted, not sent again
    assert sum(made.values()) <= TAKEOVER_SLOTS  # the list and item reads, each on a slot of the reservation
    assert budget.lanes()["side"] == side  # nothing taken at request time


def test_a_takeover_that_never_gets_its_slots_ends_unconfirmed_instead_of_coming_back_for_ever(scenario):
    """A send put back for lack of budget is not an Omnisend attempt, but it is bounded: a takeover (its dead holder
    may have POSTed) that is put back more than SEND_MAX_BUDGET_REQUEUES times records its batch unconfirmed, and the
    run can finish; nothing is POSTed."""
    from shared.orchestrator import SEND_MAX_BUDGET_REQUEUES
    from shared.pipeline.send import claim_path
    from shared.queues import StageMessage
    from shared.runs import RunPaths, dumps, read_json

    s = scenario([(2_000, 7)])
    orchestrator, run = planned_run(s)
    orchestrator.on_plan(run)
    store = orchestrator.ctx.state_store
    paths = RunPaths(run.export, run.run_id)
    now = time.time()
    store.create(names.RUNS_CONTAINER, claim_path(paths, 1, 0),
                 dumps({"claimedAt": now - 60, "expiresAt": now - 1, "holder": "an instance that died"}))
    # Released for one slot, on time, after its last allowed trip back to the budget.
    last = StageMessage(run.export, run.run_id, 1, extra={"slot": now, "budgetRequeues": SEND_MAX_BUDGET_REQUEUES})

    assert orchestrator.on_send(last) == "unconfirmed"

    result = read_json(store, names.RUNS_CONTAINER, paths.result(1))
    assert result["sent"] == 0 and result["failed"] == [] and len(result["unconfirmed"]) == 100
    assert "no request slot of the budget" in result["unconfirmed"][0]["omnisendMessage"]
    assert posts_to_batches(s.sim) == 0
