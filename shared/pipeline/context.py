"""What every stage is given (Context) and what a run was started with (RunOptions)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared import names
from shared.connections import IMPLICIT_DEFAULT, Connection
from shared.omnisend import OmnisendClient
from shared.segments import CsvFormat, Partition, Snapshot
from shared.settings import Settings
from shared.storage import ObjectStore

RUNS = names.RUNS_CONTAINER
log = logging.getLogger("exporter")


@dataclass
class Context:
    """What every stage needs. Built once per process (CLI) or per function instance (Azure), and once per
    connection (Omnisend brand): its ``client`` talks to that brand with that brand's key, pacing and breaker."""

    settings: Settings
    state_store: ObjectStore
    source_store: ObjectStore
    client_factory: Callable[[], OmnisendClient]
    clock: Callable[[], float] = time.time
    connection: Connection = IMPLICIT_DEFAULT
    _client: OmnisendClient | None = field(default=None, repr=False)

    @property
    def client(self) -> OmnisendClient:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    @property
    def api_version(self) -> str:
        return self.connection.api_version or self.settings.omnisend_api_version


@dataclass(frozen=True)
class RunOptions:
    force: bool = False
    dry_run: bool = False
    full_resync: bool = False
    allow_mass_exit: bool = False
    trigger: str = "cli"
    # Mark the export's unfinished run superseded (no untag, no state commit) and start this snapshot's run.
    supersede: bool = False
    # Start a new run of this snapshot even if one exists (finished or not); the CLI's --new-run.
    new_run: bool = False

    @property
    def fresh(self) -> bool:
        """Options that ask for a run beyond the snapshot's usual one (a forced run, a full resync...)."""
        return self.force or self.full_resync or self.allow_mass_exit or self.new_run


@dataclass(frozen=True)
class StartedRun:
    export: str
    run_id: str
    created: bool  # False: this snapshot's run already existed
    finished: bool  # a report exists
    snapshot_id: str
    # True when another unfinished run of the export blocks this start: ``run_id`` is that run (and
    # ``snapshot_id`` its snapshot); the newest snapshot, which could not start, is ``wanted_snapshot``.
    busy: bool = False
    wanted_snapshot: str = ""
    note: str = ""  # why this run was chosen (re-planned held run, retried failed run, superseded ...)


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

