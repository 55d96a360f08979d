"""The Functions app end to end on Azurite and the Omnisend simulator, driven by the host stand-in.

Real parts: function_app.py's own functions and bindings, Blob Storage and Storage queues (Azurite), the Omnisend
simulator over HTTP. The stand-in only does what the host does: dequeue, call the function, delete or retry, move
to -poison after maxDequeueCount.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

import function_app
from devtools import sample_data
from devtools.omnisend_sim import SimConfig, Simulator
from shared import names
from shared.app import build_orchestrator
from shared.batch_store import locate
from shared.leases import FINALISE_LEASE_SECONDS
from shared.orchestrator import HOST_MAX_DEQUEUE_COUNT
from shared.queues import StageMessage, StageQueues
from shared.runs import RunPaths
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from shared.state import load_state
from tests.azure.azurite_support import unique_name
from tests.azure.concurrent_host import PrefixedQueues
from tests.azure.host_standin import HostStandIn

pytestmark = pytest.mark.azurite

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key"
ALL_QUEUES = [q + suffix for q in names.STAGE_QUEUES for suffix in ("", names.POISON_SUFFIX)]


@pytest.fixture(scope="module")
def omnisend():
    with Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.01, requests_per_minute=1_000_000)) as sim:
        yield sim


class DuplicatingQueues:
    """Delivers every message twice, as at-least-once delivery may (a fake at the queue boundary)."""

    def __init__(self, inner: StageQueues) -> None:
        self.inner = inner

    def send(self, queue_name, message, delay_seconds: int = 0) -> str:
        self.inner.send(queue_name, message, delay_seconds)
        return self.inner.send(queue_name, message, delay_seconds)


def make_host(azurite: str) -> HostStandIn:
    host_json = json.loads((REPO / "host.json").read_text())
    # The real 30 s retry back-off would make a poison test take minutes; everything else is as deployed.
    host_json["extensions"]["queues"]["visibilityTimeout"] = "00:00:00"
    # Queue names with a prefix of this test process's own: parallel test runs on one Azurite stay apart.
    return HostStandIn(function_app.app, host_json=host_json, queue_prefix=unique_name("fq") + "-",
                       app_settings={"AzureWebJobsStorage": azurite, "EXPORT_SCHEDULE": "0 5 * * * *"})


_HOSTS: dict[str, HostStandIn] = {}


def shared_host(azurite: str) -> HostStandIn:
    """One stand-in per process, shared by every test module: FunctionApp.get_functions() refuses to index the
    same app twice."""
    if azurite not in _HOSTS:
        _HOSTS[azurite] = make_host(azurite)
    return _HOSTS[azurite]


@pytest.fixture(scope="module")
def host(azurite):
    return shared_host(azurite)


class Flow:
    def __init__(self, tmp_path: Path, sim: Simulator, azurite: str, host: HostStandIn,
                 duplicate: bool = False, key_provider=None, base_url: str | None = None, clock=None,
                 **orchestrator_options) -> None:
        self.sim = sim
        self.host = host
        self.export = f"vip-{uuid.uuid4().hex[:8]}"
        self.source_container = f"ci{uuid.uuid4().hex[:12]}"
        self.blobs = BlobServiceClient.from_connection_string(azurite)
        self.queue_service = QueueServiceClient.from_connection_string(azurite)
        StageQueues.from_connection_string(azurite).ensure_queues([host.queue_prefix + q for q in names.STAGE_QUEUES])
        for q in ALL_QUEUES:  # one set of queues per module: start each test from empty queues
            host.queue_client(q).clear_messages()
        self.upload_segment(tmp_path, 1_000)
        definition = {"exports": [{
            "name": self.export,
            "source": {"container": self.source_container, "path": sample_data.EXPORT_PATH,
                       "table": sample_data.TABLE},
            "mapping": {"email": "EMail", "firstName": "FirstName"},
            "tags": ["ci-vip"], "dataTransferAcknowledged": True,
        }]}
        config_name = f"{self.export}.json"
        self._ensure(names.CONFIG_CONTAINER)
        self.blobs.get_container_client(names.CONFIG_CONTAINER).upload_blob(
            config_name, json.dumps(definition), overwrite=True)
        settings = Settings(storage_connection_string=azurite,
                            exports_config=f"{names.BLOB_CONFIG_PREFIX}{names.CONFIG_CONTAINER}/{config_name}",
                            omnisend_base_url=base_url or sim.base_url, omnisend_api_key=KEY,
                            omnisend_requests_per_minute=1_000_000)
        queues = PrefixedQueues(StageQueues.from_connection_string(azurite), host.queue_prefix)
        function_app._orchestrator = build_orchestrator(
            settings, queues=DuplicatingQueues(queues) if duplicate else queues,
            key_provider=key_provider or StaticKeyProvider(KEY), verify_delay=0, send_backoff=(0,), clock=clock,
            # One message at a time: a run's later sends are delivered seconds after their budget slot by design
            # of this stand-in, not of the host; the budget itself is tested with the concurrent stand-in.
            **{"late_tolerance": 600, **orchestrator_options})

    def _ensure(self, container: str) -> None:
        client = self.blobs.get_container_client(container)
        if not client.exists():
            client.create_container()

    def upload_segment(self, tmp_path: Path, rows: int, **kw) -> None:
        local = tmp_path / uuid.uuid4().hex
        sample_data.write_export(local, rows, messy=False, **kw)
        self._ensure(self.source_container)
        container = self.blobs.get_container_client(self.source_container)
        base = local / sample_data.CONTAINER
        for path in base.rglob("*"):
            if path.is_file():
                container.upload_blob(path.relative_to(base).as_posix(), path.read_bytes(), overwrite=True)

    def start(self, body=None):
        return self.host.http("POST", f"/api/exports/{self.export}/runs", body=body)

    def run_to_end(self, max_seconds: float = 180):
        """Pump the queues like the host would, until they stay empty (or the deadline, which fails the test).

        The deadline only stops a hung run: a flow drains in 2-15 s on an idle machine, but 60 s was exceeded with
        four parallel workers on a 2-core machine that other test runs were also loading."""
        import time

        deadline = time.monotonic() + max_seconds
        invocations = []
        while time.monotonic() < deadline:
            result = self.host.pump(until_idle=True, max_seconds=max(1.0, deadline - time.monotonic()))
            invocations += result.invocations
            if result.idle and all(self.queue_length(q) == 0 for q in ALL_QUEUES):
                result.invocations = invocations
                return result
        raise AssertionError("the queues did not drain in time")

    def status(self, run_id: str) -> dict:
        return json.loads(self.host.http("GET", f"/api/exports/{self.export}/runs/{run_id}").get_body())

    def posts(self) -> int:
        return self.sim.state()["stats"]["requests_by_route"].get("POST /api/batches", 0)

    def queue_length(self, name: str) -> int:
        return self.host.queue_client(name).get_queue_properties().approximate_message_count


@pytest.fixture
def flow(tmp_path, omnisend, azurite, host):
    omnisend.reset()
    yield Flow(tmp_path, omnisend, azurite, host)
    function_app._orchestrator = None


def test_http_start_runs_every_stage_and_delivers_every_contact(flow):
    started = flow.start()
    body = json.loads(started.get_body())
    assert started.status_code == 202 and body["statusUrl"].endswith(f"/api/exports/{flow.export}/runs/{body['runId']}")
    flow.run_to_end()
    status = flow.status(body["runId"])
    report = status["report"]
    assert status["stage"] == "finished" and report["status"] == "succeeded"
    assert report["sent"] == len(flow.sim.contacts()) == 1_000
    assert report["rows"] == report["sent"] + report["failed"] + report["rejected"] + report["duplicates"] + report[
        "unchanged"]
    assert flow.posts() == report["batches"] == 10


def test_a_second_start_of_a_running_snapshot_returns_the_same_run(flow):
    first = json.loads(flow.start().get_body())
    second = json.loads(flow.start().get_body())
    assert second["runId"] == first["runId"] and second["alreadyRunning"]
    flow.run_to_end()
    finished = json.loads(flow.start().get_body())
    assert finished["alreadyExported"] and finished["runId"] == first["runId"]


def test_unknown_export_is_404_and_a_bad_body_is_400(flow):
    assert flow.host.http("POST", "/api/exports/nope/runs").status_code == 404
    assert flow.start(body=b"{not json").status_code == 400
    assert flow.start(body={"force": "yes"}).status_code == 400


def test_every_message_delivered_twice_still_submits_each_batch_once(tmp_path, omnisend, azurite, host):
    omnisend.reset()
    flow = Flow(tmp_path, omnisend, azurite, host, duplicate=True)
    try:
        run_id = json.loads(flow.start().get_body())["runId"]
        flow.run_to_end()
        report = flow.status(run_id)["report"]
        assert report["status"] == "succeeded" and report["sent"] == 1_000
        assert flow.posts() == report["batches"]
    finally:
        function_app._orchestrator = None


def test_a_batch_that_always_fails_goes_to_poison_and_the_run_ends_partial(flow):
    run_id = json.loads(flow.start().get_body())["runId"]
    # Plan, then corrupt batch 3 so that every delivery of its send message raises.
    orchestrator = function_app._orchestrator
    orchestrator.on_plan(StageMessage(flow.export, run_id))
    flow.host.queue_client(names.PLAN_QUEUE).clear_messages()
    store = orchestrator.ctx.state_store
    where = locate(store, RunPaths(flow.export, run_id), 3)
    segment = bytearray(store.read(names.RUNS_CONTAINER, where.name))
    segment[where.offset : where.offset + where.length] = b"{broken".ljust(where.length)
    store.write(names.RUNS_CONTAINER, where.name, bytes(segment))  # batch 3's bytes in its segment no longer parse
    result = flow.run_to_end()
    report = flow.status(run_id)["report"]
    assert "export-send-poison" in {inv.queue for inv in result.invocations}
    assert report["status"] == "partial" and report["failed"] == 100 and report["sent"] == 900
    assert report["rows"] == report["sent"] + report["failed"] + report["rejected"] + report["duplicates"] + report[
        "unchanged"]
    assert json.loads((REPO / "host.json").read_text())["extensions"]["queues"][
        "maxDequeueCount"] == HOST_MAX_DEQUEUE_COUNT


def test_a_429_storm_reenqueues_instead_of_sleeping_and_delivers_everything(flow):
    flow.sim.configure(burst_429=15, burst_retry_after=0)
    run_id = json.loads(flow.start().get_body())["runId"]
    flow.run_to_end()
    report = flow.status(run_id)["report"]
    assert report["status"] == "succeeded" and report["sent"] == 1_000
    assert flow.sim.state()["stats"]["responses_429"] >= 15


def test_two_timer_fires_in_one_slot_start_one_run(flow):
    flow.host.timer("export_timer")
    flow.host.timer("export_timer")
    assert flow.queue_length(names.PLAN_QUEUE) == 1
    flow.run_to_end()
    listing = json.loads(flow.host.http("GET", "/api/exports").get_body())
    [mine] = [e for e in listing["exports"] if e["name"] == flow.export]
    assert len(mine["lastRuns"]) == 1 and mine["lastRuns"][0]["status"] == "succeeded"


def test_status_shows_progress_before_the_end(flow):
    run_id = json.loads(flow.start().get_body())["runId"]
    assert flow.status(run_id)["stage"] == "planning"
    flow.run_to_end()
    assert flow.status(run_id)["stage"] == "finished"


def test_importing_the_app_with_an_empty_environment_exposes_every_function():
    code = (
        "import json, function_app\n"
        "fns = function_app.app.get_functions()\n"
        "print(json.dumps({f.get_function_name(): json.loads(f.get_function_json())['bindings'] for f in fns}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    functions = json.loads(done.stdout)
    assert set(functions) == {
        "export_timer", "start_export_run", "get_export_run", "list_exports", "health_check",
        "plan_stage", "send_stage", "verify_stage", "finalise_stage",
        "plan_poison", "send_poison", "verify_poison", "finalise_poison",
        "forget_people",
        "manage_export", "list_connections", "manage_connection", "read_audit",
    }
    queue_names = {b["queueName"] for fn in functions.values() for b in fn if b["type"] == "queueTrigger"}
    assert queue_names == set(ALL_QUEUES)
    assert all(b["connection"] == names.STORAGE_CONNECTION
               for fn in functions.values() for b in fn if b["type"] == "queueTrigger")
    [timer] = functions["export_timer"]
    assert timer["schedule"] == "%EXPORT_SCHEDULE%" and not timer.get("runOnStartup")
    http = [b for fn in ("start_export_run", "get_export_run", "list_exports", "health_check", "manage_export",
                         "list_connections", "manage_connection", "read_audit") for b in functions[fn]
            if b["type"] == "httpTrigger"]
    assert {b["authLevel"] for b in http} == {"FUNCTION"}
    [forget] = [b for b in functions["forget_people"] if b["type"] == "httpTrigger"]
    assert forget["authLevel"] == "ADMIN"  # erasure touches every export's data: the host (admin) key only


class SwitchableKey:
    """The key source as an operator sees it: wrong at first, fixed later (a fake of the Key Vault boundary)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def get(self, refresh: bool = False) -> str:
        return self.key


def test_a_refused_key_stops_the_run_and_starting_it_again_resumes_it(tmp_path, omnisend, azurite, host):
    omnisend.reset()
    key = SwitchableKey("wrong-key")
    flow = Flow(tmp_path, omnisend, azurite, host, key_provider=key)
    try:
        run_id = json.loads(flow.start().get_body())["runId"]
        flow.run_to_end()
        stopped = flow.status(run_id)
        assert stopped["stage"] == "stopped" and "refused the API key" in stopped["message"]
        requests_while_stopped = omnisend.state()["stats"]["requests_total"]
        assert requests_while_stopped <= 2 * 4  # a few sends found out, the rest did not knock again
        key.key = KEY
        resumed = json.loads(flow.start().get_body())
        assert resumed["runId"] == run_id and resumed["status"] == "resumed"
        flow.run_to_end()
        report = flow.status(run_id)["report"]
        assert report["status"] == "succeeded" and report["sent"] == len(omnisend.contacts()) == 1_000
    finally:
        function_app._orchestrator = None


def test_a_wrong_mapping_stops_at_planning_sends_nothing_and_fails_with_the_reason(flow):
    # email mapped to a number column: every row is rejected, so the mapping guard stops the run at planning.
    definition = {"exports": [{
        "name": flow.export,
        "source": {"container": flow.source_container, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
        "mapping": {"email": "LifetimeValue"}, "tags": ["ci-vip"], "dataTransferAcknowledged": True,
    }]}
    flow.blobs.get_container_client(names.CONFIG_CONTAINER).upload_blob(
        f"{flow.export}.json", json.dumps(definition), overwrite=True)
    run_id = json.loads(flow.start().get_body())["runId"]
    flow.run_to_end()
    report = flow.status(run_id)["report"]
    assert report["status"] == "failed" and report["message"].startswith("mapping guard: 1,000 of 1,000 rows rejected")
    assert flow.sim.state()["stats"]["write_requests"] == 0


class RevokedAfterFirstRequest:
    """The right key until Omnisend has seen one request (the preflight), then a revoked one: a key rotated away
    while the run's messages are queued (a fake of the key-source boundary)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def get(self, refresh: bool = False) -> str:
        return KEY if self.sim.state()["stats"]["requests_total"] == 0 else "revoked-key"


def test_a_wrong_key_is_found_by_the_preflight_and_no_send_is_queued(tmp_path, omnisend, azurite, host):
    omnisend.reset()
    flow = Flow(tmp_path, omnisend, azurite, host, key_provider=SwitchableKey("wrong-key"))
    try:
        run_id = json.loads(flow.start().get_body())["runId"]
        result = flow.run_to_end()
        assert flow.status(run_id)["stage"] == "stopped"
        assert omnisend.state()["stats"]["requests_total"] == 2  # the preflight, and once more after a re-read
        assert not [i for i in result.invocations if i.queue == names.SEND_QUEUE]
    finally:
        function_app._orchestrator = None


def test_a_key_refused_mid_run_stops_it_after_a_few_requests_whatever_the_number_of_queued_messages(
        tmp_path, omnisend, azurite, host):
    omnisend.reset()
    flow = Flow(tmp_path, omnisend, azurite, host, key_provider=RevokedAfterFirstRequest(omnisend))
    try:
        flow.upload_segment(tmp_path, 5_000)  # 50 send messages
        run_id = json.loads(flow.start().get_body())["runId"]
        result = flow.run_to_end()
        stopped = flow.status(run_id)
        assert stopped["stage"] == "stopped" and "refused the API key" in stopped["message"]
        sends = [i for i in result.invocations if i.queue == names.SEND_QUEUE]
        assert len(sends) >= 50  # every queued message was handled...
        batch_size = host.options.batch_size
        assert omnisend.state()["stats"]["requests_total"] <= 1 + 2 * batch_size  # ...and almost none knocked
    finally:
        function_app._orchestrator = None


def test_an_unreachable_omnisend_stops_the_run_at_the_plan_stage(tmp_path, omnisend, azurite, host):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    flow = Flow(tmp_path, omnisend, azurite, host, base_url=url, preflight_retry_delay=2)
    try:
        run_id = json.loads(flow.start().get_body())["runId"]
        result = flow.run_to_end()
        stopped = flow.status(run_id)
        assert stopped["stage"] == "stopped"
        assert f"cannot reach Omnisend at {url} – check OMNISEND_BASE_URL" in stopped["message"]
        assert not [i for i in result.invocations if i.queue == names.SEND_QUEUE]
    finally:
        function_app._orchestrator = None


# ------------------------------------------------------------------------------------------------ run life cycle

SECOND_SNAPSHOT = "2026/11/29/0205"


class FakeClock:
    """The orchestrator's clock (lease expiries, run start times), moved by the test instead of waited for."""

    def __init__(self, now: float | None = None) -> None:
        # Today's whole second, not a fixed date: tests in parallel share one Azurite, and a timer fire prunes every
        # finished run older than RUN_RETENTION_DAYS by its own clock (shared/retention.py), so runs dated in the
        # past would be pruned by another test's timer while this one still reads them.
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now


class CrashingStore:
    """The app's Blob store, except that the first write or create of a name containing ``at`` fails as if the
    instance died there; by the time the host redelivers the message, the dead holder's claims have expired
    (the clock moves past FINALISE_LEASE_SECONDS)."""

    def __init__(self, inner, at: str, clock: FakeClock, lease_expires: bool = True) -> None:
        self.inner, self.at, self.clock, self.crashed = inner, at, clock, False
        self.lease_expires = lease_expires

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _maybe_crash(self, name: str) -> None:
        if self.at in name and not self.crashed:
            self.crashed = True
            if self.lease_expires:
                self.clock.now += FINALISE_LEASE_SECONDS + 1
            raise RuntimeError(f"instance died writing {name}")

    def write(self, container, name, data):
        self._maybe_crash(name)
        self.inner.write(container, name, data)

    def create(self, container, name, data):
        self._maybe_crash(name)
        return self.inner.create(container, name, data)


@pytest.fixture
def timed_flow(tmp_path, omnisend, azurite, host):
    omnisend.reset()
    clock = FakeClock()
    flow = Flow(tmp_path, omnisend, azurite, host, clock=clock)
    flow.clock = clock
    yield flow
    function_app._orchestrator = None


def tagged(sim) -> set[str]:
    return {email for email, c in sim.contacts().items() if "ci-vip" in c["tags"]}


def runs_of(flow) -> list[dict]:
    listing = json.loads(flow.host.http("GET", "/api/exports").get_body())
    [mine] = [e for e in listing["exports"] if e["name"] == flow.export]
    return mine["lastRuns"]


def state_of(flow):
    return load_state(function_app._orchestrator.ctx.state_store, flow.export)


def test_the_finalise_lease_outlives_the_function_timeout():
    timeout = json.loads((REPO / "host.json").read_text())["functionTimeout"]
    hours, minutes, seconds = (int(part) for part in timeout.split(":"))
    assert hours * 3600 + minutes * 60 + seconds < FINALISE_LEASE_SECONDS


def test_forced_starts_straddling_a_second_are_one_run(timed_flow):
    flow = timed_flow
    second_start = float(int(flow.clock.now))
    flow.clock.now = second_start + 0.9
    first = flow.start(body={"force": True})
    flow.clock.now = second_start + 1.2
    second = flow.start(body={"force": True})
    body = json.loads(second.get_body())
    assert first.status_code == 202 and second.status_code == 409
    assert body["runId"] == json.loads(first.get_body())["runId"]
    assert body["statusUrl"].endswith(f"/runs/{body['runId']}")
    flow.run_to_end()
    assert [r["status"] for r in runs_of(flow)] == ["succeeded"]


def test_a_timer_fire_during_a_forced_run_starts_no_second_run(flow):
    run_id = json.loads(flow.start(body={"force": True, "fullResync": True}).get_body())["runId"]
    flow.host.timer("export_timer")
    assert flow.queue_length(names.PLAN_QUEUE) == 1
    flow.run_to_end()
    assert [r["runId"] for r in runs_of(flow)] == [run_id]
    assert flow.posts() == 10


def test_an_older_full_resync_and_a_newer_snapshot_with_a_timer_fire_never_untag_a_current_member(
        tmp_path, timed_flow):
    flow = timed_flow
    flow.start()
    flow.run_to_end()
    older = json.loads(flow.start(body={"fullResync": True}).get_body())["runId"]
    flow.host.pump(until_idle=False, max_seconds=0.5)  # the full resync is under way...
    flow.clock.now += 3600
    flow.upload_segment(tmp_path, 1_000, run=SECOND_SNAPSHOT, drop_fraction=0.1)  # ...when B lands
    flow.host.timer("export_timer")
    assert len(runs_of(flow)) == 2 and flow.queue_length(names.PLAN_QUEUE) <= 1  # it started nothing beside it
    flow.run_to_end()
    flow.clock.now += 3600
    flow.host.timer("export_timer")  # the next fire starts B's run
    flow.run_to_end()
    runs = runs_of(flow)
    assert [r["status"] for r in runs] == ["succeeded"] * 3 and runs[1]["runId"] == older
    newer = flow.status(runs[0]["runId"])["report"]
    state = state_of(flow)
    assert state.meta.run_id == newer["runId"] and len(state) == 1_000 - newer["leavers"]
    assert newer["untagged"] == newer["leavers"] > 0
    assert tagged(flow.sim) == set(state.emails)  # no current member untagged, every leaver untagged


@pytest.mark.parametrize("at", ["/finalise/claim.", "/finalise/summary.json", "/rejected.csv"],
                         ids=["entering-finalise", "after-the-claim", "after-the-state-commit"])
def test_a_crash_in_finalise_finishes_the_run_on_redelivery(tmp_path, timed_flow, at):
    flow = timed_flow
    flow.start()
    flow.run_to_end()
    flow.upload_segment(tmp_path, 1_000, run=SECOND_SNAPSHOT, drop_fraction=0.15)
    flow.clock.now += 3600
    orchestrator = function_app._orchestrator
    orchestrator.ctx.state_store = CrashingStore(orchestrator.ctx.state_store, at, flow.clock)
    run_id = json.loads(flow.start().get_body())["runId"]
    result = flow.run_to_end()
    assert orchestrator.ctx.state_store.crashed and "failed" in result.outcomes()
    report = flow.status(run_id)["report"]
    state = state_of(flow)
    assert report["status"] == "succeeded" and report["stateCommitted"]
    assert report["untagged"] == report["leavers"] > 100 and state.meta.run_id == run_id
    assert tagged(flow.sim) == set(state.emails) and len(state) == 1_000 - report["leavers"]
    assert report["rows"] == report["sent"] + report["failed"] + report["rejected"] + report["duplicates"] + report[
        "unchanged"]


def test_a_forced_start_while_a_run_is_active_is_409_and_supersede_replaces_it(tmp_path, flow):
    older = json.loads(flow.start().get_body())["runId"]
    flow.host.pump(until_idle=False, max_seconds=0.5)
    flow.upload_segment(tmp_path, 800, run=SECOND_SNAPSHOT)
    busy = flow.start()
    assert busy.status_code == 409 and json.loads(busy.get_body())["runId"] == older
    newer = flow.start(body={"supersede": True})
    newer_id = json.loads(newer.get_body())["runId"]
    assert newer.status_code == 202 and newer_id != older
    flow.run_to_end()
    statuses = {r["runId"]: r["status"] for r in runs_of(flow)}
    assert statuses == {older: "superseded", newer_id: "succeeded"}
    state = state_of(flow)
    assert state.meta.run_id == newer_id and len(state) == 800


def test_a_finalisation_whose_holder_died_is_finished_by_the_next_timer_fire(tmp_path, timed_flow):
    flow = timed_flow
    orchestrator = function_app._orchestrator
    orchestrator.ctx.state_store = CrashingStore(orchestrator.ctx.state_store, "/finalise/summary.json", flow.clock,
                                                 lease_expires=False)
    run_id = json.loads(flow.start().get_body())["runId"]
    # The redelivered message finds the dead holder's claim live: a re-check is queued for when it expires.
    flow.host.pump(until_idle=True, max_seconds=30)
    assert orchestrator.ctx.state_store.crashed and flow.status(run_id)["stage"] != "finished"
    assert flow.queue_length(names.FINALISE_QUEUE) == 1
    flow.clock.now += FINALISE_LEASE_SECONDS + 1
    flow.host.timer("export_timer")  # the next fire sees every result, no report and no live claim
    flow.host.pump(until_idle=True, max_seconds=30)
    report = flow.status(run_id)["report"]
    assert report["status"] == "succeeded" and report["sent"] == len(flow.sim.contacts()) == 1_000
    flow.host.queue_client(names.FINALISE_QUEUE).clear_messages()  # the delayed re-check


def test_untagging_runs_in_queued_chunks_each_done_once(tmp_path, timed_flow):
    flow = timed_flow
    flow.upload_segment(tmp_path, 2_000, run=SECOND_SNAPSHOT)
    flow.start()
    flow.run_to_end()
    flow.upload_segment(tmp_path, 2_000, run="2026/11/30/0205", drop_fraction=0.15)
    flow.clock.now += 3600
    run_id = json.loads(flow.start().get_body())["runId"]
    deletes_before = flow.sim.state()["stats"]["requests_by_route"].get("DELETE /api/contacts/tags", 0)
    result = flow.run_to_end()
    report = flow.status(run_id)["report"]
    chunks = -(-report["leavers"] // 250)
    deletes = flow.sim.state()["stats"]["requests_by_route"].get("DELETE /api/contacts/tags", 0) - deletes_before
    assert chunks >= 2 and report["untagged"] == report["leavers"]
    assert deletes == chunks
    assert len([i for i in result.invocations if i.queue == names.FINALISE_QUEUE]) == chunks
    assert tagged(flow.sim) == set(state_of(flow).emails)
