"""Scenarios of the real Functions app on the concurrent host stand-in (tests/azure/concurrent_host.py): worker
processes over Azurite, against the Omnisend simulator. Shared by the budget scenarios (test_budget_scenarios.py)
and the crash and life-cycle scenarios (test_crash_scenarios.py).

Time scale: the host's 10-minute lease is ``TIMING.lease_seconds``, claims (sends, verify rounds, finalisation)
``CLAIM_SECONDS``, verify rounds every ``VERIFY_DELAY`` s; a scenario with crashes ends in seconds.
"""

from __future__ import annotations

import collections
import csv
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from devtools import sample_data
from devtools.omnisend_sim import Simulator
from shared import names
from shared.queues import StageQueues
from tests.azure.concurrent_host import ConcurrentHost, HostConfig, Timing

KEY = "budget-key"
BUDGET_PER_MINUTE = 300  # the app's OMNISEND_REQUESTS_PER_MINUTE (the default)
# Omnisend's sliding minute, scaled by 1/3 so a scenario sends for about half a minute instead of a minute and a half.
WINDOW_SECONDS = 20
BUDGET_PER_WINDOW = BUDGET_PER_MINUTE * WINDOW_SECONDS // 60  # 100: what the simulator allows in any window
# shared/budget.py's 2 s late tolerance belongs to a 60 s window; scaled with the budget scenarios' 20 s window (a
# send starting later than this after its slot takes a new slot).
LATE_TOLERANCE = 0.5
# A side-lane request (verify poll) waits at most this long in an invocation (10 s of 60, scaled).
SLOT_WAIT = 3.0
VERIFY_DELAY = 2  # seconds between verify rounds (15 s in production)
SEND_BACKOFF = (1, 2, 4)
# The host's lease and retry visibility scaled (see concurrent_host.Timing); idle threads poll every 0.5 s at most.
# A 6 s lease renewed every 1.5 s: on this shared 2-core machine a renewal can be late by seconds, and a lapsed
# lease is a twin delivery (a second POST), which would blur what the scenarios measure.
TIMING = Timing(lease_seconds=6, renew_seconds=1.5, retry_visibility_seconds=1, max_poll_seconds=0.5)
# Claims and leases (send claims, verify rounds, finalisation) outlive the longest invocation: 11-15 min against a
# 10-minute functionTimeout in production; here 8 s against the 6 s lease that stands for it.
CLAIM_SECONDS = 8
# The late tolerance is scaled, this machine's polling lag and storage calls are not (and other test runs share its
# two cores): send messages become visible 0.5-1.5 s before their slot and wait for it in the invocation, so at
# 4.6 sends/s about 5 invocations wait at any moment: 8 send threads per worker.
RELEASE_LEAD = 0.5
SEND_THREADS = 8
# Plan and verify pick-up lag does not matter here: idle polling at 1 s spares the shared CPU (sends: 0.5 s).
SLOW_POLL = {"plan_stage": 1.0, "verify_stage": 1.0}
# The scaled numbers above as tests/azure/app_wiring.wire takes them (bootstrap_kwargs of every scenario host).
SCALED_WIRING = {
    "verify_delay": VERIFY_DELAY,
    "late_tolerance": LATE_TOLERANCE,
    "send_backoff": SEND_BACKOFF,
    "slot_wait": SLOT_WAIT,
    "release_lead": RELEASE_LEAD,
    "claim_seconds": CLAIM_SECONDS,
}
# The source's second CDM run folder (a newer snapshot of the same export).
SECOND_SNAPSHOT = "2026/11/29/0205"


@dataclass
class Export:
    name: str
    tag: str
    rows: int
    seed: int
    emails: set[str]
    source: str = ""


class Scenario:
    def __init__(
        self,
        tmp_path: Path,
        azurite: str,
        sim: Simulator,
        budget_container: str,
        queue_prefix: str,
        exports: list[tuple[int, int]],
    ) -> None:
        self.tmp = tmp_path
        self.azurite = azurite
        self.sim = sim
        self.blobs = BlobServiceClient.from_connection_string(azurite)
        self.queue_prefix = queue_prefix + "-"
        StageQueues.from_connection_string(azurite).ensure_queues([self.queue_prefix + q for q in names.STAGE_QUEUES])
        self.budget_container = budget_container
        self.exports: list[Export] = []
        definitions = []
        for rows, seed in exports:
            name = f"vip-{uuid.uuid4().hex[:8]}"
            source = f"ci{uuid.uuid4().hex[:12]}"
            self.blobs.get_container_client(source).create_container()
            export = Export(name, f"ci-{name}", rows, seed, set(), source)
            export.emails = self.upload_snapshot(export, rows)
            self.exports.append(export)
            definitions.append(
                {
                    "name": name,
                    "source": {"container": source, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
                    "mapping": {"email": "EMail", "firstName": "FirstName"},
                    "tags": [f"ci-{name}"],
                    "dataTransferAcknowledged": True,
                }
            )
        config_name = f"budget-{uuid.uuid4().hex[:8]}.json"
        container = self.blobs.get_container_client(names.CONFIG_CONTAINER)
        if not container.exists():
            container.create_container()
        container.upload_blob(config_name, json.dumps({"exports": definitions}), overwrite=True)
        self.exports_config = f"{names.BLOB_CONFIG_PREFIX}{names.CONFIG_CONTAINER}/{config_name}"

    def upload_snapshot(self, export: Export, rows: int, **kw: Any) -> set[str]:
        """Upload a CDM run folder (``run=``, ``drop_fraction=``... as sample_data.write_export) into the export's
        source container; returns its valid emails."""
        return upload_export(self.blobs, self.tmp, export.source, rows, seed=export.seed, **kw)

    def host(self, workers: int, wiring: dict[str, Any] | None = None, **config: Any) -> ConcurrentHost:
        """The app in ``workers`` processes. ``wiring``: tests/azure/app_wiring.wire arguments to override;
        ``config``: HostConfig fields to override (timing, kill_points, twin_functions...)."""
        options = {
            "threads": 2,
            "function_threads": {"send_stage": SEND_THREADS},
            "function_poll_seconds": SLOW_POLL,
            "timing": TIMING,
            **config,
        }
        cfg = HostConfig(
            queue_prefix=self.queue_prefix,
            app_settings={"AzureWebJobsStorage": self.azurite, "EXPORT_SCHEDULE": "0 5 * * * *"},
            bootstrap="tests.azure.app_wiring:wire",
            bootstrap_kwargs={
                "connection_string": self.azurite,
                "exports_config": self.exports_config,
                "base_url": self.sim.base_url,
                "key": KEY,
                "requests_per_minute": BUDGET_PER_MINUTE,
                "queue_prefix": self.queue_prefix,
                "budget_container": self.budget_container,
                **SCALED_WIRING,
                **(wiring or {}),
            },
            events_dir=str(self.tmp / f"events-{uuid.uuid4().hex[:6]}"),
            http_match="^" + self.sim.base_url,
            **options,
        )
        host = ConcurrentHost(cfg, workers)
        host.bootstrap_here()
        return host

    def run(self, host: ConcurrentHost, timeout: float = 120, during=None) -> dict[str, dict]:
        """Fire the timer (it starts a run for every export), wait until every run finished; the reports."""
        import function_app

        host.timer("export_timer")
        started = {
            e["name"]: e["lastRuns"][0]["runId"] for e in function_app.orchestrator().overview() if e["lastRuns"]
        }
        assert set(started) == {e.name for e in self.exports}
        return self.wait_finished(host, started, timeout, during)

    def wait_finished(
        self, host: ConcurrentHost, runs: dict[str, str], timeout: float = 120, during=None
    ) -> dict[str, dict]:
        """Wait until each run (export -> run id) has finished; their reports. Fails with what the host did."""
        import function_app

        deadline = time.monotonic() + timeout
        reports: dict[str, dict] = {}
        while time.monotonic() < deadline and len(reports) < len(runs):
            if during:
                during()
            for export, run_id in runs.items():
                status = function_app.orchestrator().status(export, run_id)
                if status and status.get("stage") == "finished":
                    reports[export] = status["report"]
            time.sleep(0.5)
        if len(reports) < len(runs):
            statuses = {
                x: (
                    function_app.orchestrator().status(x, r),
                    [e["lastRuns"] for e in function_app.orchestrator().overview() if e["name"] == x],
                )
                for x, r in runs.items()
                if x not in reports
            }
            outcomes = collections.Counter(f"{e['fn']}:{e['outcome']}" for e in host.events("done"))
            errors = collections.Counter(e["error"] for e in host.events("done") if e.get("error"))
            raise AssertionError(
                f"runs not finished in {timeout} s: {statuses}; invocations {dict(outcomes)}; "
                f"errors {dict(errors.most_common(3))}; workers alive {host.alive()}"
            )
        return reports

    def check_delivered(self, reports: dict[str, dict]) -> None:
        contacts = self.sim.contacts()
        for export in self.exports:
            report = reports[export.name]
            assert report["status"] == "succeeded", report
            assert_identity(report)
            assert report["sent"] == export.rows == len(export.emails)
            missing = [e for e in export.emails if export.tag not in (contacts.get(e) or {}).get("tags", ())]
            assert missing == [], f"{len(missing)} contacts of {export.name} missing or untagged"


def upload_export(blobs: BlobServiceClient, tmp: Path, container_name: str, rows: int, *, seed: int,
                  **kw: Any) -> set[str]:
    """Write a clean CDM export (sample_data.write_export; ``run=``, ``drop_fraction=``...) under ``tmp`` and upload
    it into an existing container; returns its valid emails."""
    local = tmp / uuid.uuid4().hex
    sample_data.write_export(local, rows, seed=seed, messy=False, **kw)
    container = blobs.get_container_client(container_name)
    base = local / sample_data.CONTAINER
    emails: set[str] = set()
    for path in base.rglob("*"):
        if path.is_file():
            container.upload_blob(path.relative_to(base).as_posix(), path.read_bytes(), overwrite=True)
            if path.suffix == ".csv":
                with path.open(encoding="utf-8", newline="") as f:
                    emails |= {row[3].strip().lower() for row in csv.reader(f)}
    return emails


def assert_identity(report: dict) -> None:
    """Every row of the run in exactly one bucket of its report."""
    assert report["rows"] == (
        report["sent"]
        + report["failed"]
        + report["unconfirmed"]
        + report["rejected"]
        + report["duplicates"]
        + report["unchanged"]
    ), report


def wait_for(predicate: Callable[[], object], what: str, seconds: float = 40) -> object:
    """The predicate's first truthy value, polled every 0.1 s; fails naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def posts_to_batches(sim: Simulator) -> int:
    return sim.state(include_contacts=False)["stats"]["requests_by_route"].get("POST /api/batches", 0)
