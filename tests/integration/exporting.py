"""Helpers for end-to-end export tests: a segment on disk, a context wired to the simulator, the export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools import sample_data
from shared.app import build_context
from shared.exports import load_exports
from shared.local_runner import run_export
from shared.pipeline import Context, RunOptions
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from shared.storage import LocalObjectStore

KEY = "test-key"
# Tests run against the simulator with a large budget so that pacing never makes them slow; pacing itself is
# covered by the client's unit tests and by the benchmark.
FAST_RPM = 60_000


def export_definition(**overrides: Any) -> dict[str, Any]:
    definition = {
        "name": "vip",
        "source": {"container": sample_data.CONTAINER, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
        "mapping": {
            "email": "EMail", "firstName": "FirstName", "lastName": "LastName", "phone": "Telephone",
            "city": "City", "countryCode": "CountryCode", "birthdate": "DateOfBirth",
            "customProperties": {"loyalty_tier": "LoyaltyTier"},
        },
        "tags": ["ci-vip"],
        "onExit": "untag",
        "dataTransferAcknowledged": True,
        "enabled": True,
    }
    definition.update(overrides)
    return definition


def load_export(**overrides: Any):
    return load_exports(json.dumps({"exports": [export_definition(**overrides)]}), "test")[0]


def make_context(root: Path, base_url: str, api_version: str = "2026-03-15", rpm: int = FAST_RPM,
                 key: str = KEY, max_attempts: int | None = None) -> Context:
    settings = Settings(
        local_storage_root=root, omnisend_base_url=base_url, omnisend_api_version=api_version,
        omnisend_api_key=key, omnisend_requests_per_minute=rpm,
    )
    store = LocalObjectStore(root)
    kwargs = {"max_attempts": max_attempts} if max_attempts else {}
    return build_context(settings, key_provider=StaticKeyProvider(key), stores=(store, store), **kwargs)


def write_segment(root: Path, rows: int, **kw: Any) -> None:
    sample_data.write_export(root, rows, **kw)


def segment_emails(root: Path, n: int | None = None) -> list[str]:
    """The email cells of the first partition write_segment made, in file order (the first ``n`` of them)."""
    import csv
    from itertools import islice

    path = next(root.rglob(f"{sample_data.TABLE}_1.csv"))
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [row[3].strip().lower() for row in islice(csv.reader(f), n)]


def export(ctx: Context, export_def=None, **options: Any) -> dict[str, Any]:
    return run_export(ctx, export_def or load_export(), RunOptions(**options), sleep=lambda s: None)


def rejected_rows(ctx: Context, report: dict[str, Any]) -> list[dict[str, str]]:
    import csv
    import io

    from shared.names import RUNS_CONTAINER
    from shared.runs import RunPaths

    data = ctx.state_store.read(RUNS_CONTAINER, RunPaths(report["export"], report["runId"]).rejected)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def assert_accounting(report: dict[str, Any]) -> None:
    assert report["rows"] == (
        report["sent"] + report["failed"] + report["unconfirmed"] + report["rejected"] + report["duplicates"]
        + report["unchanged"]
    )
