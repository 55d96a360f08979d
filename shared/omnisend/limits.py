"""Per-API-version limits the planner cuts batches by and the client enforces (omnisend-api.md §3.1)."""

from __future__ import annotations

from dataclasses import dataclass

API_2026 = "2026-03-15"
API_V3 = "v3"

# Omnisend advises keeping a batch request at or below 1 MB "for optimal performance" and does not say whether
# 1 MB means 10^6 or 2^20 bytes. 999_000 is under both readings, with headroom for the envelope
# ({"method":"POST","endpoint":"contacts","items":[...]}) that encode_batch_body adds around the items.
MAX_BODY_BYTES = 999_000


@dataclass(frozen=True)
class ApiLimits:
    base_path: str  # appended to the base URL: https://api.omnisend.com + /api
    max_batch_items: int
    max_body_bytes: int


API_LIMITS: dict[str, ApiLimits] = {
    # 2026-03-15: POST /api/batches takes 1..100 items (the official plugin dropped from 1000 to 100).
    API_2026: ApiLimits("/api", 100, MAX_BODY_BYTES),
    # v3: "up to 1000 operations per batch".
    API_V3: ApiLimits("/v3", 1000, MAX_BODY_BYTES),
}


def limits_for(api_version: str) -> ApiLimits:
    try:
        return API_LIMITS[api_version]
    except KeyError:
        known = ", ".join(API_LIMITS)
        raise ValueError(f"unknown Omnisend API version {api_version!r} (known: {known})") from None
