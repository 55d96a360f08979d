"""Snapshots that are plain CSV files with a header row: one ``file``, or every ``*.csv`` under a ``prefix``."""

from __future__ import annotations

import re

from shared.errors import SnapshotError
from shared.storage import ObjectStore, StoredObject

from .cdm import digest
from .model import CsvFormat, Partition, Snapshot
from .reader import first_record, header_difference

# A CSV with a header row, comma-separated, RFC 4180 quoting, UTF-8 (BOM allowed).
PLAIN_CSV_FORMAT = CsvFormat(column_headers=True)


def _natural_key(name: str) -> list:
    """part_2.csv before part_10.csv."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _header(store: ObjectStore, obj: StoredObject) -> list[str]:
    found = first_record(store, obj.container, obj.name, PLAIN_CSV_FORMAT)
    if found is None:
        raise SnapshotError(
            f"{store.describe(obj.container, obj.name)} is empty: a CSV source needs a header row naming the columns"
        )
    return found[1]


def _snapshot(store: ObjectStore, label: str, objects: list[StoredObject], where: str) -> Snapshot:
    columns = _header(store, objects[0])
    for obj in objects[1:]:
        other = _header(store, obj)
        if other != columns:
            raise SnapshotError(
                f"{store.describe(obj.container, obj.name)} has a different header from "
                f"{store.describe(objects[0].container, objects[0].name)}: {header_difference(other, tuple(columns))}; "
                "every CSV under the prefix must have the same header: remove or fix that file"
            )
    partitions = tuple(Partition(o.container, o.name, o.size, o.etag) for o in objects)
    return Snapshot(
        snapshot_id=f"{label}@{digest(objects)}",
        columns=tuple(columns),
        partitions=partitions,
        csv_format=PLAIN_CSV_FORMAT,
        description=where,
        total_bytes=sum(p.size for p in partitions),
    )


def discover_file(store: ObjectStore, container: str, file: str) -> Snapshot:
    name = file.strip("/")
    where = store.describe(container, name)
    match = [o for o in store.list(container, name) if o.name == name]
    if not match:
        raise SnapshotError(f"CSV file {where} does not exist: check source.container and source.file")
    return _snapshot(store, name, match, f"CSV file {where}")


def discover_prefix(store: ObjectStore, container: str, prefix: str) -> Snapshot:
    prefix = prefix.lstrip("/")
    where = store.describe(container, prefix)
    objects = [o for o in store.list(container, prefix) if o.name.lower().endswith(".csv")]
    if not objects:
        raise SnapshotError(f"no *.csv objects under {where}: check source.container and source.prefix")
    objects.sort(key=lambda o: _natural_key(o.name))
    return _snapshot(store, prefix, objects, f"{len(objects)} CSV file(s) under {where}")
