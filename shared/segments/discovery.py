"""Pick the reader for a ``Source``: a CDM folder (``table``) or plain CSV (``file`` / ``prefix``)."""

from __future__ import annotations

from shared.errors import SnapshotError
from shared.exports import Source
from shared.storage import ObjectStore

from .cdm import discover_cdm
from .model import Snapshot
from .plaincsv import discover_file, discover_prefix


def discover_snapshot(store: ObjectStore, source: Source) -> Snapshot:
    """The snapshot to export now: its identity, columns, partitions and CSV format. Raises SnapshotError."""
    chosen = [k for k in ("table", "file", "prefix") if getattr(source, k)]
    if len(chosen) != 1:
        raise SnapshotError(
            f"source in container {source.container!r} must name exactly one of table, file or prefix "
            f"(it names {', '.join(chosen) or 'none'})"
        )
    if source.table:
        return discover_cdm(store, source.container, source.path, source.table)
    if source.file:
        return discover_file(store, source.container, source.file)
    return discover_prefix(store, source.container, source.prefix or "")
