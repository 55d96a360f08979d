"""The Functions app end to end on Azurite and the Omnisend simulator, driven by the host stand-in.

Real parts: function_app.py's own functions and bindings, Blob Storage and Storage queues (Azurite), the Omnisend
simulator over HTTP. The stand-in only does what the host does: dequeue, call the function, delete or retry, move
to -poison after maxDequeueCount.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
from shared.orchestrator import HOST_MAX_DEQUEUE_COUNT
from shared.queues import StageMessage, StageQueues
from shared.runs import RunPaths
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
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


@pytest.fixture(scope="module")
def host(azurite):
    # One stand-in per module: FunctionApp.get_functions() refuses to index the same app twice.
    standin = make_host(azurite)
    yield standin
    service = QueueServiceClient.from_connection_string(azurite)
    for queue in list(service.list_queues(name_starts_with=standin.queue_prefix)):
        service.delete_queue(queue.name)


class Flow:
    def __init__(self, tmp_path: Path, sim: Simulator, azurite: str, host: HostStandIn,
                 duplicate: bool = False, key_provider=None) -> None:
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
                            omnisend_base_url=sim.base_url, omnisend_api_key=KEY,
                            omnisend_requests_per_minute=1_000_000)
        queues = PrefixedQueues(StageQueues.from_connection_string(azurite), host.queue_prefix)
        function_app._orchestrator = build_orchestrator(
            settings, queues=DuplicatingQueues(queues) if duplicate else queues,
            key_provider=key_provider or StaticKeyProvider(KEY), verify_delay=0, send_backoff=(0,))

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

    def run_to_end(self, max_seconds: float = 60):
        """Pump the queues like the host would, until they stay empty (or the deadline, which fails the test)."""
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
    # Plan, then corrupt batch 3's file so that every delivery of its send message raises.
    orchestrator = function_app._orchestrator
    orchestrator.on_plan(StageMessage(flow.export, run_id))
    flow.host.queue_client(names.PLAN_QUEUE).clear_messages()
    orchestrator.ctx.state_store.write(names.RUNS_CONTAINER, RunPaths(flow.export, run_id).batch(3), b"{broken")
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
        "export_timer", "start_export_run", "get_export_run", "list_exports",
        "plan_stage", "send_stage", "verify_stage", "plan_poison", "send_poison", "verify_poison",
    }
    queue_names = {b["queueName"] for fn in functions.values() for b in fn if b["type"] == "queueTrigger"}
    assert queue_names == set(ALL_QUEUES)
    assert all(b["connection"] == names.STORAGE_CONNECTION
               for fn in functions.values() for b in fn if b["type"] == "queueTrigger")
    [timer] = functions["export_timer"]
    assert timer["schedule"] == "%EXPORT_SCHEDULE%" and not timer.get("runOnStartup")
    http = [b for fn in ("start_export_run", "get_export_run", "list_exports") for b in functions[fn]
            if b["type"] == "httpTrigger"]
    assert {b["authLevel"] for b in http} == {"FUNCTION"}


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
