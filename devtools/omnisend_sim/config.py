"""Simulator configuration: one dataclass, changeable at runtime through ``apply_updates``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

API_VERSION_2026 = "2026-03-15"
V3 = "v3"

# Omnisend documents 400 requests/minute for both API generations (reference §4).
DEFAULT_RPM = 400
# /contacts/tags has its own, tighter limit on 2026 (reference §4.2).
DEFAULT_TAGS_RPM = 60
# Batch item caps per version (reference §3.1).
MAX_ITEMS_V3 = 1000
MAX_ITEMS_2026 = 100
# "Keep each batch request <= 1 MB" (reference §3.1); enforced as 413 when enforce_body_limit is on.
MAX_BODY_BYTES = 1_048_576

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Fields fixed at start(): changing them on a running server would silently do nothing.
START_ONLY_FIELDS = ("host", "port")


@dataclass
class SimConfig:
    api_keys: tuple[str, ...] = ("test-key",)
    # False: every key reaches one brand (one contact list). True: each key is a brand of its own, with its own
    # contacts (rate limits and batch listings are per key either way), as two Omnisend stores would be.
    separate_brands: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    supported_versions: tuple[str, ...] = (API_VERSION_2026,)
    auth_status: int = 401  # 401 per spec; 403 reproduces the {"error":"Forbidden"} seen in the wild
    batch_delay: float = 0.2  # seconds from batch creation to "finished" (half pending, half inProgress)
    requests_per_minute: int = DEFAULT_RPM
    tags_requests_per_minute: int = DEFAULT_TAGS_RPM
    rate_window_seconds: float = 60.0
    retry_after_header: bool = False  # 2026: also send a Retry-After header on 429
    enforce_body_limit: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    max_batch_items_v3: int = MAX_ITEMS_V3
    max_batch_items_2026: int = MAX_ITEMS_2026
    stop_error_fraction: float | None = None  # batch -> "stopped" once errorsCount > fraction * totalCount
    error_5xx_rate: float = 0.0
    drop_rate: float = 0.0
    latency: float = 0.0
    burst_429: int = 0
    burst_retry_after: int = 1  # the 429's retryAfter (2026) or X-Rate-Limit-Reset header (v3)
    # v3 only: the next N authenticated requests get 403 "blocked due to many errors" (omnisend-api.md §4.1).
    # Omnisend documents the block but not its body nor its length; see docs/simulator.md.
    block_403: int = 0
    # Routes ("POST /batches", "GET /batches", ...) the key has no permission for: 403 there, on both versions
    # (2026 "insufficient permissions", v3 "access not allowed").
    forbidden_routes: tuple[str, ...] = ()
    item_fail: dict[str, int] = field(default_factory=dict)  # exact email -> per-item responseCode
    item_fail_times: int | None = None  # failures per email before it succeeds; None = forever
    seed: int = 0
    # Pessimistic behaviours: what Omnisend's documentation does not rule out (reference §8.1). Off = the behaviour
    # the exporter assumes; each switch lets a test (and the consent probe, shared/probe.py) see the other one.
    no_channels_resets_status: bool = False  # 2026: an existing contact posted without channels -> nonSubscribed
    no_channels_new_subscribed: bool = False  # 2026: a new contact posted without channels -> subscribed
    older_status_date_overrides: bool = False  # both: a status with an older date replaces a newer one
    upsert_tags_replace: bool = False  # both: tags in a contact upsert replace the contact's tags
    untag_removes_all: bool = False  # 2026: DELETE /contacts/tags removes every tag of the contact
    # Omnisend deletes batches after 7 days (reference §3.3); these bring that forward so a test can meet a batch
    # answered 404: once this many seconds passed since its creation, or once it was read this many times by id.
    batch_retention_seconds: float | None = None
    batch_retention_polls: int | None = None
    # What each /items entry carries besides itemID: "request" (the documented echo), "position" (0-based index in
    # the batch instead), "none" (itemID only). Omnisend's docs are silent on entries without the echo.
    batch_items_echo: str = "request"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_keys"] = list(self.api_keys)
        data["supported_versions"] = list(self.supported_versions)
        data["forbidden_routes"] = list(self.forbidden_routes)
        return data


_TUPLE_FIELDS = ("api_keys", "supported_versions", "forbidden_routes")


def apply_updates(config: SimConfig, updates: dict[str, Any], *, running: bool) -> list[str]:
    """Merge ``updates`` into ``config`` in place; returns the names changed. Raises ValueError on bad input."""
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(updates) - known)
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    if running:
        fixed = sorted(set(updates) & set(START_ONLY_FIELDS))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} can only be set before start()")
    for name, value in updates.items():
        if name in _TUPLE_FIELDS:
            if isinstance(value, str):
                value = (value,)
            value = tuple(str(v) for v in value)
        elif name == "item_fail":
            value = {str(k): int(v) for k, v in (value or {}).items()}
        elif name == "auth_status" and value not in (401, 403):
            raise ValueError("auth_status must be 401 or 403")
        elif name in ("error_5xx_rate", "drop_rate", "stop_error_fraction") and value is not None:
            value = float(value)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        elif name == "batch_items_echo" and value not in ("request", "position", "none"):
            raise ValueError("batch_items_echo must be request, position or none")
        elif name == "host" and value not in LOOPBACK_HOSTS:
            raise ValueError("the simulator only binds loopback addresses")
        setattr(config, name, value)
    return list(updates)
