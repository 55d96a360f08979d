"""Send and verify under the Functions orchestration (Azurite + the host stand-in + the Omnisend simulator): twins
POST once, a batch is settled only by what happened to it, verify rounds never fork, and the report counts every
request Omnisend saw."""

from __future__ import annotations

import json
import threading
import time

import pytest

import function_app
from shared import names
from shared.app import build_orchestrator
from shared.pipeline.send import claim_batch
from shared.queues import StageMessage, StageQueues
from shared.runs import RunPaths
from shared.secrets import StaticKeyProvider
from shared.state import load_state
from tests.azure.concurrent_host import PrefixedQueues
from tests.azure.test_functions_flow import KEY, Flow, shared_host

pytestmark = pytest.mark.azurite


@pytest.fixture(scope="module")
def host(azurite):
    return shared_host(azurite)


@pytest.fixture(scope="module")
def omnisend():
    from devtools.omnisend_sim import SimConfig, Simulator

    with Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.01, requests_per_minute=1_000_000)) as sim:
        yield sim


@pytest.fixture
def make_flow(tmp_path, omnisend, azurite, host):
    def make(**kw) -> Flow:
        omnisend.reset()
        flow = Flow(tmp_path, omnisend, azurite, host, **kw)
        function_app._orchestrator.claim_recheck_delay = 1  # a twin looks again after 1 s, not 30
        return flow
    yield make
    function_app._orchestrator = None


def stats(sim) -> dict:
    return sim.state(include_contacts=False)["stats"]


def report_of(flow: Flow, run_id: str) -> dict:
    status = flow.status(run_id)
    assert status["stage"] == "finished", status
    return status["report"]


def second_instance(flow: Flow, azurite: str):
    """Another instance of the app: its own context, client and connections over the same storage and queues."""
    first = function_app._orchestrator
    queues = PrefixedQueues(StageQueues.from_connection_string(azurite), flow.host.queue_prefix)
    return build_orchestrator(first.ctx.settings, queues=queues,
                              key_provider=StaticKeyProvider(KEY), verify_delay=0, send_backoff=(0,),
                              claim_recheck_delay=1)


def test_every_send_delivered_to_two_instances_at_the_same_moment_posts_each_batch_once(make_flow, azurite):
    flow = make_flow()
    run_id = json.loads(flow.start().get_body())["runId"]
    instances = [function_app._orchestrator, second_instance(flow, azurite)]
    instances[0].on_plan(StageMessage(flow.export, run_id))
    flow.host.queue_client(names.PLAN_QUEUE).clear_messages()

    for n in range(1, 11):  # each send message, delivered to both instances at once (besides the queued one)
        barrier = threading.Barrier(2)

        def deliver(instance, n=n, barrier=barrier):
            barrier.wait()
            instance.on_send(StageMessage(flow.export, run_id, n))

        threads = [threading.Thread(target=deliver, args=(i,)) for i in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    flow.run_to_end()

    report = report_of(flow, run_id)
    assert flow.posts() == report["batches"] == 10
    assert report["status"] == "succeeded" and report["sent"] == len(flow.sim.contacts()) == 1_000
    assert report["requests"] == stats(flow.sim)["requests_total"]


class ScaledClock:
    """Time-scaled wall clock (a fake at the clock boundary): one real second is SCALE seconds to the app."""

    SCALE = 1_000

    def __init__(self) -> None:
        self.t0 = time.time()

    def __call__(self) -> float:
        return self.t0 + (time.time() - self.t0) * self.SCALE


class HeldBackSends:
    """Queues as a busy host sees them: every first send message waits ``hold`` real seconds before it is
    delivered (sends queued behind other work), and verify rounds come no faster than every second."""

    def __init__(self, inner, hold: int) -> None:
        self.inner, self.hold = inner, hold

    def send(self, queue_name, message, delay_seconds: int = 0) -> str:
        if queue_name == names.SEND_QUEUE and message.attempt == 0 and not message.extra:
            delay_seconds = max(delay_seconds, self.hold)
        if queue_name == names.VERIFY_QUEUE:
            delay_seconds = max(delay_seconds, 1)
        return self.inner.send(queue_name, message, delay_seconds)


def test_a_verify_limit_reached_while_batches_are_still_queued_marks_none_failed(make_flow, azurite):
    flow = make_flow()
    orchestrator = function_app._orchestrator
    clock = ScaledClock()
    orchestrator.ctx.clock = clock
    # Only the one-hour limit is under test: keep the 24-hour unsent backstop out of reach of a slow machine.
    orchestrator.unsent_give_up_seconds = 1e9
    # Sends wait 4 real s = 66 scaled minutes in the queue: past the old one-hour limit counted from planning.
    orchestrator.queues = HeldBackSends(orchestrator.queues, hold=4)  # over the host's own (prefixed) queues
    orchestrator.pacer = None  # no budget slots here: only the hold decides when a send runs
    run_id = json.loads(flow.start().get_body())["runId"]

    flow.run_to_end(max_seconds=90)

    report = report_of(flow, run_id)
    assert report["failed"] == 0 and report["unconfirmed"] == 0
    assert report["status"] == "succeeded" and report["sent"] == len(flow.sim.contacts()) == 1_000
    assert report["durationSeconds"] > 3_600  # in the app's (scaled) time, the run took more than an hour


def test_a_verify_group_poisoned_by_crashes_reports_no_delivered_contact_failed(make_flow):
    flow = make_flow()
    orchestrator = function_app._orchestrator
    run_id = json.loads(flow.start().get_body())["runId"]
    orchestrator.on_plan(StageMessage(flow.export, run_id))
    flow.host.queue_client(names.PLAN_QUEUE).clear_messages()
    for n in range(1, 11):
        orchestrator.on_send(StageMessage(flow.export, run_id, n))
    flow.host.queue_client(names.SEND_QUEUE).clear_messages()
    time.sleep(0.1)
    assert len(flow.sim.contacts()) == 1_000  # every contact is in Omnisend
    # From now on every verify invocation crashes (Omnisend answers 410 to everything).
    flow.sim.configure(supported_versions=["1999-01-01"])

    result = flow.run_to_end()

    poisoned = [i for i in result.invocations if i.queue == names.VERIFY_QUEUE + names.POISON_SUFFIX]
    assert len(poisoned) == 3  # checked again twice, then given up
    report = report_of(flow, run_id)
    assert report["failed"] == 0 and report["unconfirmed"] == 1_000 and report["sent"] == 0
    assert report["status"] == "partial"
    assert len(load_state(orchestrator.ctx.state_store, flow.export)) == 0  # the next run sends them again

    flow.sim.configure(supported_versions=["2026-03-15"])
    again = json.loads(flow.start(body={"force": True}).get_body())
    flow.run_to_end()
    assert report_of(flow, again["runId"])["sent"] == 1_000


def test_duplicate_verify_messages_never_fork_the_polling_chain(make_flow):
    flow = make_flow(duplicate=True)
    flow.sim.configure(batch_delay=1.0)  # several rounds before the batches finish
    run_id = json.loads(flow.start().get_body())["runId"]

    flow.run_to_end()

    report = report_of(flow, run_id)
    store = function_app._orchestrator.ctx.state_store
    rounds = [o.name for o in store.list(names.RUNS_CONTAINER, f"{RunPaths(flow.export, run_id).root}/verify/")]
    list_requests = stats(flow.sim)["requests_by_route"].get("GET /api/batches", 0)
    assert report["status"] == "succeeded" and report["sent"] == 1_000
    # At most one poll per (group, round), plus the plan stage's one preflight read of the same list.
    assert len(rounds) >= 2 and list_requests <= len(rounds) + 1


def test_report_requests_count_every_request_including_429s_and_duplicate_deliveries(make_flow):
    flow = make_flow(duplicate=True)
    flow.sim.configure(burst_429=12, burst_retry_after=0)
    run_id = json.loads(flow.start().get_body())["runId"]

    flow.run_to_end()

    report = report_of(flow, run_id)
    seen = stats(flow.sim)
    assert report["status"] == "succeeded" and seen["responses_429"] == 12
    assert report["requests"] == seen["requests_total"]


def test_a_batch_omnisend_forgot_is_sent_again_in_functions_too(make_flow):
    flow = make_flow()
    flow.sim.configure(batch_retention_polls=0)  # any batch read by id is forgotten: its first check is a 404
    orchestrator = function_app._orchestrator
    run_id = json.loads(flow.start().get_body())["runId"]
    orchestrator.on_plan(StageMessage(flow.export, run_id))
    flow.host.queue_client(names.PLAN_QUEUE).clear_messages()
    flow.sim.configure(batch_delay=0.3, batch_retention_seconds=0)
    for n in range(1, 11):
        orchestrator.on_send(StageMessage(flow.export, run_id, n))
    flow.host.queue_client(names.SEND_QUEUE).clear_messages()
    orchestrator.on_verify(StageMessage(flow.export, run_id, 1, extra={"last": 10, "round": 0}))  # all 404
    flow.sim.configure(batch_retention_seconds=None, batch_retention_polls=None, batch_delay=0.01)

    flow.run_to_end()

    report = report_of(flow, run_id)
    assert report["status"] == "succeeded" and report["sent"] == len(flow.sim.contacts()) == 1_000
    assert flow.posts() == 20


class LostSends(HeldBackSends):
    """Queues that lose every send message (a fake at the queue boundary): nothing is ever submitted."""

    def send(self, queue_name, message, delay_seconds: int = 0) -> str:
        if queue_name == names.SEND_QUEUE:
            return "lost"
        return super().send(queue_name, message, delay_seconds)


def test_batches_whose_send_messages_never_ran_end_unconfirmed_not_failed(make_flow, azurite):
    flow = make_flow()
    orchestrator = function_app._orchestrator
    orchestrator.queues = LostSends(orchestrator.queues, hold=0)
    orchestrator.unsent_give_up_seconds = 2  # 24 hours in production
    run_id = json.loads(flow.start().get_body())["runId"]

    flow.run_to_end()

    report = report_of(flow, run_id)
    assert flow.posts() == 0
    assert report["unconfirmed"] == 1_000 and report["failed"] == 0 and report["status"] == "partial"


def test_a_poisoned_send_is_failed_only_if_it_was_never_posted(make_flow):
    flow = make_flow()
    orchestrator = function_app._orchestrator
    store = orchestrator.ctx.state_store
    run_id = json.loads(flow.start().get_body())["runId"]
    orchestrator.on_plan(StageMessage(flow.export, run_id))
    paths = RunPaths(flow.export, run_id)
    claim_batch(orchestrator.ctx, paths, 1)  # batch 1: claimed, then its instance died (it may have POSTed)
    orchestrator.on_send(StageMessage(flow.export, run_id, 2))  # batch 2: submitted
    poison = names.SEND_QUEUE + names.POISON_SUFFIX

    outcomes = [orchestrator.on_poison(poison, json.dumps(StageMessage(flow.export, run_id, n).to_dict()))
                for n in (1, 2, 3)]

    assert outcomes == ["recorded", "left-to-verify", "recorded"]
    one = json.loads(store.read(names.RUNS_CONTAINER, paths.result(1)))
    three = json.loads(store.read(names.RUNS_CONTAINER, paths.result(3)))
    assert len(one["unconfirmed"]) == 100 and one["failed"] == []
    assert len(three["failed"]) == 100 and three["unconfirmed"] == []
    assert not store.exists(names.RUNS_CONTAINER, paths.result(2))
