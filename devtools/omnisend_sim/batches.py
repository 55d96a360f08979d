"""Batch records and listing. Callers hold the simulator lock."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from .util import IdMaker

STATUSES = ("pending", "inProgress", "finished", "stopped")

# (itemID, request as compact JSON text, responseCode, response, position in the batch): response is a dict for
# failures and a tuple for successes, (email, contactID) on v3 or (id, email, status) on 2026.
ItemResult = tuple[str, str, int, Any, int]
# What an /items entry says about its item (config ``batch_items_echo``): Omnisend documents the ``request`` echo;
# "position" replaces it with the item's 0-based index, "none" leaves only the opaque itemID.
ITEM_ECHO_MODES = ("request", "position", "none")


def render_result(result: ItemResult, echo: str = "request") -> dict[str, Any]:
    item_id, request, code, response, position = result
    if isinstance(response, tuple):
        if len(response) == 2:
            response = {"email": response[0], "contactID": response[1]}
        else:
            response = {"id": response[0], "email": response[1], "status": response[2]}
    entry: dict[str, Any] = {"itemID": item_id}
    if echo == "request":
        entry["request"] = json.loads(request)
    elif echo == "position":
        entry["position"] = position
    entry.update({"responseCode": code, "response": response, "status": "finished"})
    return entry


class Batch:
    __slots__ = (
        "created", "created_mono", "ended", "endpoint", "errors", "errors_count", "finished_count", "id", "items",
        "key", "method", "origin", "polls", "responses", "started", "status", "total", "version",
    )  # fmt: skip

    def __init__(self, bid: str, key: str, version: str, body: dict[str, Any], now: str) -> None:
        self.id = bid
        self.key = key
        self.version = version
        self.method = body["method"]
        self.endpoint = body["endpoint"]
        self.origin = body.get("origin") or "api"
        self.items: list[Any] | None = body["items"]  # dropped once processed; results keep each request
        self.total = len(body["items"])
        self.status = "pending"
        self.created = now
        self.created_mono = time.monotonic()  # for batch_retention_seconds
        self.polls = 0  # GET /batches/{id}(/items) answered, for batch_retention_polls
        self.started: str | None = None
        self.ended: str | None = None
        self.finished_count = 0
        self.errors_count = 0
        self.errors: list[ItemResult] = []
        self.responses: list[ItemResult] = []

    def render(self, with_items: bool = False, echo: str = "request") -> dict[str, Any]:
        body: dict[str, Any] = {
            "batchID": self.id,
            "method": self.method,
            "endpoint": self.endpoint,
            "status": self.status,
            "createdAt": self.created,
            "startedAt": self.started,
            "endedAt": self.ended,
            "totalCount": self.total,
            "finishedCount": self.finished_count,
            "errorsCount": self.errors_count,
        }
        if self.version != "v3":
            body["origin"] = self.origin
        if with_items:
            body["errors"] = [render_result(r, echo) for r in self.errors]
            body["responses"] = [render_result(r, echo) for r in self.responses]
        return body


class BatchStore:
    def __init__(self) -> None:
        self.by_id: dict[str, Batch] = {}
        self._by_key: dict[tuple[str, str], list[Batch]] = {}  # (api key, endpoint) -> creation order
        self.by_status: Counter[str] = Counter()
        self._ids = IdMaker()
        self.item_ids = IdMaker()
        self.forgotten = 0

    def create(self, key: str, version: str, body: dict[str, Any], now: str) -> Batch:
        batch = Batch(self._ids.new(), key, version, body, now)
        self.by_id[batch.id] = batch
        self._by_key.setdefault((key, batch.endpoint), []).append(batch)
        self.by_status["pending"] += 1
        return batch

    def forget(self, batch: Batch) -> None:
        """Omnisend deleted the batch (retention): 404 from now on, gone from the list. Its items still apply."""
        if self.by_id.pop(batch.id, None) is not None:
            self._by_key[(batch.key, batch.endpoint)].remove(batch)
            self.forgotten += 1

    def expire(self, retention_seconds: float | None, now: float) -> None:
        if retention_seconds is None:
            return
        for batch in [b for b in self.by_id.values() if now - b.created_mono >= retention_seconds]:
            self.forget(batch)

    def set_status(self, batch: Batch, status: str) -> None:
        self.by_status[batch.status] -= 1
        self.by_status[status] += 1
        batch.status = status

    def page(self, key: str, endpoint: str, offset: int, limit: int, status: str | None) -> tuple[list[Batch], bool]:
        """Newest first. Without a status filter this only slices; with one it walks back from the newest."""
        batches = self._by_key.get((key, endpoint), [])
        if status is None:
            end = len(batches) - offset
            start = max(0, end - limit)
            chosen = batches[start:end][::-1] if end > 0 else []
            return chosen, start > 0
        chosen, skipped = [], 0
        for batch in reversed(batches):
            if batch.status != status:
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(chosen) == limit:
                return chosen, True
            chosen.append(batch)
        return chosen, False
