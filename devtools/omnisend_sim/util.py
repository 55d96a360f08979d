"""Clock, timestamp and id helpers shared by the simulator modules."""

from __future__ import annotations

import itertools
import os
import uuid
from datetime import UTC, datetime


def now_iso() -> str:
    # Millisecond precision: two writes in the same second must still order ("missing date means now").
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def parse_ts(value: object) -> datetime | None:
    """RFC 3339 / ISO 8601 to an aware datetime; None when unparseable. Naive values are taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def request_instance() -> str:
    return f"urn:omnisend:request:{uuid.uuid4()}"


class IdMaker:
    """24-hex ids like Omnisend's ObjectIds: a random per-process prefix plus a counter (cheap, unique)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"
