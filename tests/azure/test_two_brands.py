"""Two connections, two Omnisend brands: the real Functions app in two worker processes (tests/azure/concurrent_host.py)
exports one segment to each brand at the same time, each with its own key and its own request budget.

The simulator runs with ``separate_brands``: each key is a brand with its own contacts and its own rate limit, which
IS that brand's budget here (scaled like tests/azure/test_budget_scenarios.py: Omnisend's 60 s window is
``WINDOW_SECONDS``). So:
- nothing refused (0 429s) means each brand stayed within its own budget;
- the busiest window of both brands' requests together holding more than one brand's budget means the budgets are
  two, not one shared (one shared budget could never exceed it);
- each brand's contacts are exactly its own export's, tagged, and each connection has its own budget blob.
"""

from __future__ import annotations

import bisect
import collections
import json
import time
import uuid

import pytest
from azure.storage.blob import BlobServiceClient

from devtools import sample_data
from devtools.omnisend_sim import SimConfig, Simulator
from shared import names
from shared.brands import budget_blob_name
from shared.connections import Connection
from shared.queues import StageQueues
from tests.azure.concurrent_host import ConcurrentHost, HostConfig
from tests.azure.scenario_support import (
    BUDGET_PER_MINUTE,
    BUDGET_PER_WINDOW,
    SCALED_WIRING,
    SEND_THREADS,
    SLOW_POLL,
    TIMING,
    WINDOW_SECONDS,
    upload_export,
)

pytestmark = pytest.mark.azurite

EU_KEY, US_KEY = "eu-brand-key", "us-brand-key"
BRAND_KEYS = {"OMNISEND_API_KEY_EU": EU_KEY, "OMNISEND_API_KEY_US": US_KEY}
# 80 batches per brand: about 17 s of sending at 92 % of 300/min each, both at once, so a 20 s window of the two
# together holds well over one brand's 100.
ROWS = 8_000
# Generous: on a loaded 2-core machine a run that takes ~40 s alone can take minutes; the budget checks do not
# depend on it.
RUN_TIMEOUT_SECONDS = 300


@pytest.fixture
def brands_sim():
    config = SimConfig(
        api_keys=(EU_KEY, US_KEY),
        separate_brands=True,
        batch_delay=0.2,
        requests_per_minute=BUDGET_PER_WINDOW,
        rate_window_seconds=WINDOW_SECONDS,
    )
    with Simulator(config) as sim:
        yield sim


def busiest_window(times: list[float]) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + WINDOW_SECONDS) - bisect.bisect_left(times, t) for t in times)


def test_two_connections_export_to_two_brands_at_once_each_within_its_own_budget(
    tmp_path, azurite, brands_sim, container, queue_prefix
):
    blobs = BlobServiceClient.from_connection_string(azurite)
    prefix = queue_prefix + "-"
    StageQueues.from_connection_string(azurite).ensure_queues([prefix + q for q in names.STAGE_QUEUES])
    suffix = uuid.uuid4().hex[:8]
    exports = {}  # export name -> (brand key, tag, emails)
    definitions = {
        "connections": [
            {
                "name": "eu-store",
                "displayName": "EU store",
                "apiKeyEnv": "OMNISEND_API_KEY_EU",
                "requestsPerMinute": BUDGET_PER_MINUTE,
                "dataTransferAcknowledged": True,
            },
            {
                "name": "us-store",
                "displayName": "US store",
                "apiKeyEnv": "OMNISEND_API_KEY_US",
                "dataTransferAcknowledged": True,
            },
        ],
        "exports": [],
    }
    for connection, key, seed in (("eu-store", EU_KEY, 7), ("us-store", US_KEY, 11)):
        name, source = f"{connection}-{suffix}", f"ci{uuid.uuid4().hex[:12]}"
        blobs.get_container_client(source).create_container()
        emails = upload_export(blobs, tmp_path, source, ROWS, seed=seed)
        exports[name] = (key, f"ci-{name}", emails)
        definitions["exports"].append(
            {
                "name": name,
                "connection": connection,
                "source": {"container": source, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
                "mapping": {"email": "EMail"},
                "tags": [f"ci-{name}"],
            }
        )
    config_name = f"brands-{suffix}.json"
    config_container = blobs.get_container_client(names.CONFIG_CONTAINER)
    if not config_container.exists():
        config_container.create_container()
    config_container.upload_blob(config_name, json.dumps(definitions), overwrite=True)
    cfg = HostConfig(
        queue_prefix=prefix,
        app_settings={"AzureWebJobsStorage": azurite, "EXPORT_SCHEDULE": "0 5 * * * *"},
        bootstrap="tests.azure.app_wiring:wire",
        bootstrap_kwargs={
            "connection_string": azurite,
            "exports_config": f"{names.BLOB_CONFIG_PREFIX}{names.CONFIG_CONTAINER}/{config_name}",
            # The settings' own key is no brand's: an export sent with it would be refused (401).
            "base_url": brands_sim.base_url,
            "key": "not-a-brand-key",
            "brand_keys": BRAND_KEYS,
            "requests_per_minute": BUDGET_PER_MINUTE,
            "queue_prefix": prefix,
            "budget_container": container,
            **SCALED_WIRING,
        },
        threads=2,
        function_threads={"send_stage": SEND_THREADS},
        function_poll_seconds=SLOW_POLL,
        timing=TIMING,
        events_dir=str(tmp_path / "events"),
        http_match="^" + brands_sim.base_url,
    )
    host = ConcurrentHost(cfg, 2)
    host.bootstrap_here()
    import function_app

    with host:
        host.timer("export_timer")
        started = {
            e["name"]: e["lastRuns"][0]["runId"] for e in function_app.orchestrator().overview() if e["lastRuns"]
        }
        assert set(started) == set(exports)
        reports: dict[str, dict] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while time.monotonic() < deadline and len(reports) < len(started):
            for name, run_id in started.items():
                status = function_app.orchestrator().status(name, run_id)
                if status and status.get("stage") == "finished":
                    reports[name] = status["report"]
            time.sleep(0.5)
        requests = host.http_requests()
        if set(reports) != set(started):
            statuses = {x: function_app.orchestrator().status(x, r) for x, r in started.items() if x not in reports}
            outcomes = collections.Counter(f"{e['fn']}:{e['outcome']}" for e in host.events("done"))
            errors = collections.Counter(e["error"] for e in host.events("done") if e.get("error"))
            raise AssertionError(
                f"runs not finished in {RUN_TIMEOUT_SECONDS} s: {statuses}; invocations "
                f"{dict(outcomes)}; errors {dict(errors.most_common(3))}; alive {host.alive()}"
            )

    stats = brands_sim.state(include_contacts=False)["stats"]
    numbers = {
        "requests": len(requests),
        "responses_429": stats["responses_429"],
        "busiest_window_both_brands": busiest_window([e["t"] for e in requests]),
        "one_brand_budget_per_window": BUDGET_PER_WINDOW,
    }
    print(json.dumps(numbers))
    assert numbers["responses_429"] == 0, numbers  # each brand within its own budget
    assert numbers["busiest_window_both_brands"] > BUDGET_PER_WINDOW, numbers  # two budgets, not one shared
    for name, (key, tag, emails) in exports.items():
        report = reports[name]
        assert report["status"] == "succeeded" and report["sent"] == ROWS == len(emails), report
        contacts = brands_sim.contacts(brand=key)
        assert set(contacts) == emails  # this brand got its own export's contacts and no other's
        assert all(tag in contacts[e]["tags"] for e in emails)
    budget_blobs = {b.name for b in blobs.get_container_client(container).list_blobs()}
    for connection in ("eu-store", "us-store"):
        blob_name = budget_blob_name(Connection(name=connection, display_name=connection))
        assert blob_name in budget_blobs
        lanes = json.loads(blobs.get_blob_client(container, blob_name).download_blob().readall())
        assert lanes["perMinute"] == BUDGET_PER_MINUTE
