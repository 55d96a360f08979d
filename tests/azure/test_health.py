"""GET /api/health and `python -m shared health`: every check on real dependencies — Azurite (blobs, queues), the
Omnisend simulator and the Key Vault stand-in read through the real SecretClient. All pass, then one dependency
at a time fails, and its check (and only what depends on it) says why, without a secret."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueServiceClient

from devtools.keyvault_fake import KeyVaultFake
from devtools.omnisend_sim import SimConfig, Simulator
from shared import events, health, names
from shared.app import load_export_definitions
from shared.queues import StageQueues
from shared.secrets import KeyVaultKeyProvider
from shared.settings import Settings
from shared.storage_blob import BlobObjectStore
from tests.azure.azurite_support import unique_name

pytestmark = pytest.mark.azurite

REPO = Path(__file__).resolve().parents[2]
KEY = "health-test-key-0123456789"
WRONG_KEY = "revoked-key-9876543210"
SECRET = "omnisend-api-key"
EXPORTS = {"exports": [{
    "name": "vip", "source": {"container": "ciexports", "path": "CustomerInsights_1/OmnisendFeed", "table": "Vip"},
    "mapping": {"email": "EMail"}, "tags": ["ci-vip"], "dataTransferAcknowledged": True, "enabled": True,
}]}


class StaticToken:
    """A TokenCredential that never talks to Entra ID: the Key Vault stand-in accepts any bearer token."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


@pytest.fixture
def sim():
    # One simulator per test: the Omnisend answer is cached per base URL and key, so tests never see another's.
    with Simulator(SimConfig(api_keys=(KEY,), batch_delay=0.01)) as simulator:
        yield simulator


@pytest.fixture
def vault():
    with KeyVaultFake() as fake:
        fake.set_secret(SECRET, KEY)
        yield fake


class Deployment:
    """A deployment's dependencies under unique names: its config blob, queues and timer record are its own."""

    def __init__(self, azurite: str, sim: Simulator, vault: KeyVaultFake) -> None:
        self.azurite, self.sim, self.vault = azurite, sim, vault
        self.omnisend_url = sim.base_url  # kept: a test may stop the simulator
        self.id = unique_name("h")
        self.store = BlobObjectStore.from_connection_string(azurite)
        self.config_blob = f"{self.id}.json"
        self.store.write(names.CONFIG_CONTAINER, self.config_blob, json.dumps(EXPORTS).encode())
        self.queue_names = [f"{self.id}-{queue}" for queue in health.ALL_QUEUES]
        self.queue_service = QueueServiceClient.from_connection_string(azurite)
        for queue in self.queue_names:
            self.queue_service.create_queue(queue)
        self.timer_blob = f"_app/{self.id}/timer.json"
        self.now = time.time()
        self.api_version = "2026-03-15"

    def settings(self) -> Settings:
        return Settings(storage_connection_string=self.azurite, omnisend_base_url=self.omnisend_url,
                        exports_config=f"blob:{names.CONFIG_CONTAINER}/{self.config_blob}",
                        key_vault_url=self.vault.url, omnisend_api_key_secret_name=SECRET,
                        omnisend_api_version=self.api_version)

    def check(self, store: BlobObjectStore | None = None) -> health.HealthReport:
        settings = self.settings()
        store = store or self.store
        return health.run_checks(
            settings, store=store,
            load_exports=lambda: load_export_definitions(settings, store),
            make_key_provider=lambda: KeyVaultKeyProvider(self.vault.url, SECRET, credential=StaticToken(),
                                                          client_kwargs=self.vault.client_kwargs()),
            queue_exists=health.queue_checker(StageQueues.from_connection_string(self.azurite)),
            queue_names=self.queue_names, clock=lambda: self.now, timer_blob=self.timer_blob)

    def timer_fired_hours_ago(self, hours: float) -> None:
        exports = load_export_definitions(self.settings(), self.store)
        health.timer_fired(self.store, exports, [], clock=lambda: self.now - hours * 3600, blob=self.timer_blob)

    def remove(self) -> None:
        self.store.delete(names.CONFIG_CONTAINER, self.config_blob)
        self.store.delete(health.TIMER_CONTAINER, self.timer_blob)
        for queue in self.queue_names:
            with contextlib.suppress(ResourceNotFoundError):  # a test may have deleted it
                self.queue_service.delete_queue(queue)


@pytest.fixture
def deployment(azurite, sim, vault):
    d = Deployment(azurite, sim, vault)
    yield d
    d.remove()


def statuses(report: health.HealthReport) -> dict[str, str]:
    return {c.name: "ok" if c.ok else "error" for c in report.checks}


def assert_no_secret(report: health.HealthReport) -> None:
    text = json.dumps(report.to_dict())
    assert KEY not in text and WRONG_KEY not in text and "AccountKey" not in text


# --- all pass -----------------------------------------------------------------------------------------------------


def test_a_working_deployment_passes_every_check(deployment):
    deployment.timer_fired_hours_ago(0.5)
    report = deployment.check()
    assert statuses(report) == dict.fromkeys(["storage", "queues", "exports", "keyVault", "omnisend", "timer"], "ok")
    assert report.http_status == 200 and report.to_dict()["status"] == "ok"
    assert report.check("exports").reason == "1 export(s), 1 enabled and acknowledged: vip"
    assert "30 min ago" in report.check("timer").reason
    assert_no_secret(report)


def test_the_probe_blob_is_gone_afterwards(deployment):
    deployment.check()
    assert not list(deployment.store.list(health.PROBE_CONTAINER, health.PROBE_PREFIX))


def test_omnisend_is_asked_once_within_the_cache_time(deployment):
    for _ in range(3):
        assert deployment.check().check("omnisend").ok
    assert deployment.sim.state()["stats"]["requests_by_route"] == {"GET /api/batches": 1}


def test_omnisend_v3_is_asked_the_same_read_only_question(deployment):
    deployment.api_version = "v3"
    omnisend = deployment.check().check("omnisend")
    assert omnisend.ok and omnisend.reason.endswith("API v3 accepts the key")
    assert deployment.sim.state()["stats"]["requests_by_route"] == {"GET /v3/batches": 1}


def test_a_timer_that_never_fired_is_not_an_error(deployment):
    check = deployment.check().check("timer")
    assert check.ok and "has not fired" in check.reason


# --- one dependency at a time --------------------------------------------------------------------------------------


def test_storage_that_refuses_us_fails_the_storage_check(deployment, azurite):
    wrong = azurite.replace("AccountKey=", "AccountKey=AAAA")
    report = deployment.check(store=BlobObjectStore.from_connection_string(wrong))
    storage = report.check("storage")
    assert not storage.ok and storage.reason.startswith("write of a probe blob in ")
    assert report.check("queues").ok and report.check("keyVault").ok and report.check("omnisend").ok
    assert report.http_status == 503
    assert_no_secret(report)


def test_a_missing_queue_is_named(deployment):
    missing = deployment.queue_names[-1]
    deployment.queue_service.delete_queue(missing)
    report = deployment.check()
    queues = report.check("queues")
    assert missing.endswith(names.FINALISE_QUEUE + names.POISON_SUFFIX)
    assert not queues.ok and queues.reason == f"missing: {missing} (infra/main.bicep creates them)"
    assert statuses(report) == {**dict.fromkeys(["storage", "exports", "keyVault", "omnisend", "timer"], "ok"),
                                "queues": "error"}


def test_missing_export_definitions_fail_the_exports_check(deployment):
    deployment.store.delete(names.CONFIG_CONTAINER, deployment.config_blob)
    report = deployment.check()
    exports = report.check("exports")
    assert not exports.ok and "no export definitions at" in exports.reason and deployment.config_blob in exports.reason
    assert statuses(report)["omnisend"] == "ok" and report.http_status == 503


def test_invalid_export_definitions_say_what_is_wrong(deployment):
    bad = {"exports": [{**EXPORTS["exports"][0], "mapping": {"email": "EMail", "shoeSize": "Shoe"}}]}
    deployment.store.write(names.CONFIG_CONTAINER, deployment.config_blob, json.dumps(bad).encode())
    exports = deployment.check().check("exports")
    assert not exports.ok and "shoeSize" in exports.reason


def test_an_unreadable_secret_fails_the_key_vault_check_and_skips_omnisend(deployment):
    deployment.vault.delete_secret(SECRET)
    report = deployment.check()
    key_vault, omnisend = report.check("keyVault"), report.check("omnisend")
    assert not key_vault.ok and "does not exist" in key_vault.reason and SECRET in key_vault.reason
    assert not omnisend.ok and omnisend.reason == "not checked: no API key could be read (see keyVault)"
    assert deployment.sim.state()["stats"]["requests_by_route"] == {}
    assert statuses(report)["storage"] == "ok"


def test_a_key_omnisend_refuses_fails_the_omnisend_check(deployment):
    deployment.vault.set_secret(SECRET, WRONG_KEY)
    report = deployment.check()
    omnisend = report.check("omnisend")
    assert report.check("keyVault").ok
    assert not omnisend.ok and "refused the key" in omnisend.reason and "401" in omnisend.reason
    assert report.http_status == 503
    assert_no_secret(report)


def test_omnisend_unreachable_fails_the_omnisend_check(deployment):
    deployment.sim.stop()
    omnisend = deployment.check().check("omnisend")
    assert not omnisend.ok and "did not answer usefully" in omnisend.reason


def test_a_timer_silent_for_more_than_a_day_fails_the_timer_check(deployment):
    deployment.timer_fired_hours_ago(30)
    timer = deployment.check().check("timer")
    assert not timer.ok and "30.0 h ago" in timer.reason and "not running" in timer.reason


# --- the timer's record -----------------------------------------------------------------------------------------


def test_the_timer_records_its_fire_and_emits_the_enabled_exports(deployment, caplog):
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)
    exports = load_export_definitions(deployment.settings(), deployment.store)
    record = health.timer_fired(deployment.store, exports, [{"export": "vip", "runId": "r-1"}],
                                clock=lambda: deployment.now, blob=deployment.timer_blob)
    assert record["enabledExports"] == ["vip"] and record["started"] == 1
    (message,) = [r.getMessage() for r in caplog.records if r.name == events.LOGGER_NAME]
    assert events.parse_event(message) == (events.TIMER_FIRED, {"enabledExports": ["vip"], "started": ["r-1"]})


# --- the HTTP route and the CLI, configured from the environment ----------------------------------------------------


def app_environment(azurite: str, sim: Simulator, key: str, config: Path) -> dict[str, str]:
    return {"AzureWebJobsStorage": azurite, "EXPORTS_CONFIG": str(config), "OMNISEND_API_KEY": key,
            "OMNISEND_BASE_URL": sim.base_url}


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "exports.json"
    path.write_text(json.dumps(EXPORTS))
    return path


@pytest.fixture
def app_queues(azurite):
    StageQueues.from_connection_string(azurite).ensure_queues()  # the real names, as the template creates them
    # The app's own timer record is shared by every module on this Azurite: one left by a timer test with an
    # injected clock would read as "not running". Health here starts from a timer that never fired.
    store = BlobObjectStore.from_connection_string(azurite)
    if store.exists(health.TIMER_CONTAINER, health.TIMER_BLOB):
        store.delete(health.TIMER_CONTAINER, health.TIMER_BLOB)


@pytest.fixture(scope="module")
def host():
    """One host stand-in for this module's HTTP tests. azure-functions indexes an app only once per process, so
    the record of indexed functions is cleared before and after (other modules build their own stand-in)."""
    import function_app
    from tests.azure.host_standin import HostStandIn

    function_app.app.functions_bindings = {}
    yield HostStandIn(function_app.app, app_settings={"EXPORT_SCHEDULE": "0 5 * * * *"})
    function_app.app.functions_bindings = {}


@pytest.fixture
def http_health(monkeypatch, host):
    def call(env: dict[str, str]):
        for name, value in env.items():  # the route reads its settings from the environment, as in Azure
            monkeypatch.setenv(name, value)
        return host.http("GET", "/api/health")

    return call


def test_get_api_health_answers_200_with_every_check(http_health, azurite, sim, config_file, app_queues):
    response = http_health(app_environment(azurite, sim, KEY, config_file))
    body = json.loads(response.get_body())
    assert response.status_code == 200 and body["status"] == "ok"
    assert [c["name"] for c in body["checks"]] == ["storage", "queues", "exports", "keyVault", "omnisend", "timer"]
    assert {c["status"] for c in body["checks"]} == {"ok"}


def test_get_api_health_answers_503_when_a_check_fails(http_health, azurite, sim, config_file, app_queues):
    response = http_health(app_environment(azurite, sim, WRONG_KEY, config_file))
    body = json.loads(response.get_body())
    assert response.status_code == 503 and body["status"] == "error"
    assert [c["name"] for c in body["checks"] if c["status"] == "error"] == ["omnisend"]
    assert WRONG_KEY not in response.get_body().decode()


def test_get_api_health_reports_broken_settings_instead_of_crashing(http_health, azurite, sim, config_file):
    env = {**app_environment(azurite, sim, KEY, config_file), "OMNISEND_API_VERSION": "v9"}
    response = http_health(env)
    body = json.loads(response.get_body())
    assert response.status_code == 503
    assert body["checks"] == [{"name": "settings", "status": "error",
                               "reason": "environment: OMNISEND_API_VERSION='v9': use one of 2026-03-15, v3"}]


def health_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMNISEND_", "KEY_VAULT", "AzureWebJobs",
                                                                       "EXPORTS_CONFIG", "LOCAL_STORAGE"))}
    return subprocess.run([sys.executable, "-m", "shared", "health", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_cli_health_prints_each_check_and_exits_0_when_healthy(azurite, sim, config_file, app_queues):
    result = health_cli(app_environment(azurite, sim, KEY, config_file))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:6]] == [["ok", n] for n in
                                                          ("storage", "queues", "exports", "keyVault", "omnisend",
                                                           "timer")]
    assert lines[-1] == "healthy"


def test_cli_health_json_and_a_non_zero_exit_when_a_check_fails(tmp_path, sim, config_file):
    env = {"LOCAL_STORAGE_ROOT": str(tmp_path / "data"), "EXPORTS_CONFIG": str(config_file),
           "OMNISEND_API_KEY": WRONG_KEY, "OMNISEND_BASE_URL": sim.base_url}
    result = health_cli(env, "--json")
    body = json.loads(result.stdout)
    assert result.returncode == 3
    assert {c["name"]: c["status"] for c in body["checks"]} == {
        "storage": "ok", "queues": "ok", "exports": "ok", "keyVault": "ok", "omnisend": "error", "timer": "ok"}
    assert WRONG_KEY not in result.stdout + result.stderr
