"""What every stage is given (Context) and what a run was started with (RunOptions)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import names
from shared.omnisend import OmnisendClient
from shared.segments import CsvFormat, Partition, Snapshot
from shared.settings import Settings
from shared.storage import ObjectStore

RUNS = names.RUNS_CONTAINER
log = logging.getLogger("exporter")


@dataclass
class Context:
    """What every stage needs. Built once per process (CLI) or per function instance (Azure)."""

    settings: Settings
    state_store: ObjectStore
    source_store: ObjectStore
    client_factory: Callable[[], OmnisendClient]
    clock: Callable[[], float] = time.time
    _client: OmnisendClient | None = field(default=None, repr=False)

    @property
    def client(self) -> OmnisendClient:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    @property
    def api_version(self) -> str:
        return self.settings.omnisend_api_version


@dataclass(frozen=True)
class RunOptions:
    force: bool = False
    dry_run: bool = False
    full_resync: bool = False
    allow_mass_exit: bool = False
    trigger: str = "cli"


@dataclass(frozen=True)
class StartedRun:
    export: str
    run_id: str
    created: bool  # False: this snapshot's run already existed
    finished: bool  # a report exists
    snapshot_id: str


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    return asdict(snapshot)


def _snapshot_from_json(data: dict[str, Any]) -> Snapshot:
    return Snapshot(
        snapshot_id=data["snapshot_id"],
        columns=tuple(data["columns"]),
        partitions=tuple(Partition(**p) for p in data["partitions"]),
        csv_format=CsvFormat(**data["csv_format"]),
        description=data["description"],
        total_bytes=data["total_bytes"],
    )

