"""The concurrent host stand-in follows the host's queue rules across processes: leases that lapse when an instance
dies, poison after maxDequeueCount deaths, retries after an exception, twin deliveries, timer fires.

Driven with tests/azure/probe_app.py, whose messages say what their invocation does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from shared.queues import StageQueues
from tests.azure.concurrent_host import ConcurrentHost, HostConfig, Timing
from tests.azure.scenario_support import wait_for

pytestmark = pytest.mark.azurite
# Outcomes only, no request-rate floor: runs in the parallel part of ./dev test (tests/conftest.py).
SHARES_THE_MACHINE = True

# A lease of 1 s: a dead worker's message is back within about a second; renewed every 0.4 s while it runs.
FAST = Timing(lease_seconds=1, renew_seconds=0.4, retry_visibility_seconds=1)


@pytest.fixture
def probe_host(azurite, queue_prefix, tmp_path) -> Iterator[Callable[..., ConcurrentHost]]:
    hosts: list[ConcurrentHost] = []
    producer = StageQueues.from_connection_string(azurite)
    producer.ensure_queues([queue_prefix + "probe"])

    def make(workers: int = 2, **config) -> ConcurrentHost:
        cfg = HostConfig(app_module="tests.azure.probe_app", queue_prefix=queue_prefix,
                         bootstrap="tests.azure.probe_app:bootstrap",
                         bootstrap_kwargs={"queue_prefix": queue_prefix, "connection_string": azurite},
                         threads=2, timing=FAST, events_dir=str(tmp_path / f"events-{len(hosts)}"), **config)
        host = ConcurrentHost(cfg, workers)
        hosts.append(host)
        host.start()
        return host

    make.send = lambda body: producer.send(queue_prefix + "probe", body)  # type: ignore[attr-defined]
    yield make
    for host in hosts:
        host.stop()


def of(host: ConcurrentHost, kind: str, message_id: str | None = None, fn: str = "probe") -> list[dict]:
    return [e for e in host.events(kind) if e.get("fn") == fn and (message_id is None or e["id"] == message_id)]


def test_a_message_whose_every_delivery_kills_its_worker_is_poisoned_after_max_dequeue_count(probe_host):
    host = probe_host(max_dequeue_count=3)
    probe_host.send({"action": "die"})

    wait_for(lambda: of(host, "done", fn="probe_poison"), "the poison handler")

    invoked = of(host, "invoke")
    assert [e["dq"] for e in invoked] == [1, 2, 3]  # three deliveries, each died with its worker
    assert of(host, "done") == []
    [poisoned] = [e for e in host.events("poisoned") if e["fn"] == "probe"]
    assert poisoned["dq"] == 4 and not poisoned["invoked"]  # past the limit: moved without a fourth invocation
    assert host.restarts >= 3 and len(host.alive()) == 2  # every dead worker was replaced


def test_a_killed_workers_message_comes_back_after_the_lease_and_finishes_in_another_process(probe_host):
    host = probe_host()
    probe_host.send({"action": "hold", "seconds": 30, "untilDequeue": 1})
    [first] = wait_for(lambda: of(host, "invoke"), "the first delivery")

    kill = host.kill(first["w"])
    [done] = wait_for(lambda: of(host, "done"), "the redelivery")

    assert kill["invocations"]["probe"] == 1
    assert done["id"] == first["id"] and done["dq"] == 2 and done["outcome"] == "succeeded"
    assert done["pid"] != first["pid"]
    assert done["started"] - kill["t"] >= FAST.lease_seconds - FAST.renew_seconds - 0.2  # not before the lease ran out


def test_a_failing_delivery_is_retried_after_the_retry_visibility_and_then_succeeds(probe_host):
    host = probe_host()
    probe_host.send({"action": "raise", "untilDequeue": 2})

    wait_for(lambda: [e for e in of(host, "done") if e["outcome"] == "succeeded"], "a successful delivery")

    done = of(host, "done")
    assert [(e["dq"], e["outcome"]) for e in done] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert "asked to fail (delivery 1)" in done[0]["error"]
    gaps = [b["started"] - a["t"] for a, b in itertools.pairwise(done)]
    assert min(gaps) >= FAST.retry_visibility_seconds - 0.2


def test_a_twin_delivery_runs_the_same_message_twice_at_the_same_moment(probe_host):
    host = probe_host(twin_functions=("probe",))
    probe_host.send({"action": "hold", "seconds": 1.5})

    done = wait_for(lambda: len(of(host, "done")) == 2 and of(host, "done"), "both deliveries")

    a, b = done
    assert a["id"] == b["id"]
    assert max(a["started"], b["started"]) < min(a["t"], b["t"])  # the two invocations overlapped
    assert sorted(e["outcome"] for e in done) == ["succeeded", "succeeded-lost-message"]
    wait_for(lambda: host_queue_empty(host), "the message to be gone")


def host_queue_empty(host: ConcurrentHost) -> bool:
    from azure.storage.queue import QueueClient

    from shared.settings import AZURITE_CONNECTION_STRING

    client = QueueClient.from_connection_string(AZURITE_CONNECTION_STRING, host.config.queue_prefix + "probe")
    return not list(client.peek_messages(1))


def test_a_timer_fire_feeds_the_workers(probe_host):
    host = probe_host(workers=1)
    host.timer("probe_timer")

    [done] = wait_for(lambda: of(host, "done"), "the message the timer queued")

    assert done["outcome"] == "succeeded" and done["dq"] == 1
