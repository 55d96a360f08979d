"""The audit log: one blob per change under ``_audit/<definitions document>/`` in the state container (which never
expires with the runs): the history of that document (EXPORTS_CONFIG), e.g. ``_audit/exporter-config/exports.json/``.

Each record is created with if-none-match under a unique name, so any number of instances append at once without
a lock and without overwriting each other. Names sort newest first (an inverted millisecond timestamp), so reading
the latest N lists only the first N names.

Record: {"id", "at", "who": {"name", "via", "roles"}, "action": "put"|"delete", "kind": "export"|"connection",
"name", "before", "after", ...}; before/after are the definition objects as stored, minus anything that looks like
a key (the definitions hold secret names only; the filter is a second guard).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared import names
from shared.storage import ObjectStore

AUDIT_PREFIX = "_audit/"
# Newest-first names: (this constant - epoch milliseconds), zero-padded. Valid until the year 2286.
_INVERT_MS = 10**13
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
AUDIT_ID_RE = re.compile(r"[0-9]{13}-[0-9a-f]{12}")
SECRET_FIELD_RE = re.compile(r"(?i)(key|secret|token|password)")
# Fields that name where a key is kept, not the key: kept in audit records and answers.
SECRET_NAME_FIELDS = ("apiKeySecret", "apiKeyEnv")


def without_secrets(value: Any) -> Any:
    """``value`` with every field whose name looks like a key's removed (except the secret-name fields)."""
    if isinstance(value, dict):
        return {
            k: without_secrets(v) for k, v in value.items() if k in SECRET_NAME_FIELDS or not SECRET_FIELD_RE.search(k)
        }
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


class AuditLog:
    def __init__(self, store: ObjectStore, clock: Callable[[], float], document_key: str) -> None:
        self.store = store
        self.clock = clock
        self.prefix = f"{AUDIT_PREFIX}{document_key}/"

    def append(
        self, who: dict[str, Any], action: str, kind: str, name: str, before: Any, after: Any, **extra: Any
    ) -> dict[str, Any]:
        now = self.clock()
        record_id = f"{_INVERT_MS - int(now * 1000):013d}-{uuid.uuid4().hex[:12]}"
        record = {
            "id": record_id,
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "who": who,
            "action": action,
            "kind": kind,
            "name": name,
            "before": without_secrets(before),
            "after": without_secrets(after),
            **extra,
        }
        data = json.dumps(record, ensure_ascii=False, indent=1).encode()
        while not self.store.create(names.STATE_CONTAINER, f"{self.prefix}{record_id}.json", data):
            record_id = f"{record_id[:13]}-{uuid.uuid4().hex[:12]}"  # a uuid collision: practically never
            record["id"] = record_id
            data = json.dumps(record, ensure_ascii=False, indent=1).encode()
        return record

    def read(self, limit: int = DEFAULT_LIMIT, after: str | None = None) -> dict[str, Any]:
        """Up to ``limit`` records, newest first, older than the record ``after`` (the previous page's
        ``next``)."""
        records: list[dict[str, Any]] = []
        more = False
        for obj in self.store.list(names.STATE_CONTAINER, self.prefix):
            record_id = obj.name[len(self.prefix) :].removesuffix(".json")
            if after is not None and record_id <= after:
                continue
            if len(records) == limit:
                more = True
                break
            records.append(json.loads(self.store.read(names.STATE_CONTAINER, obj.name)))
        return {"records": records, "next": records[-1]["id"] if more and records else None}
