"""Omnisend API client: payloads per API version, pacing, retries, typed errors. See docs/omnisend-client.md."""

from shared.omnisend.client import (
    MISSING_STATUS,
    REQUEST_TIMEOUT_SECONDS,
    ApiKeyProvider,
    BatchItems,
    BatchStatus,
    ItemFailure,
    OmnisendClient,
)
from shared.omnisend.errors import BatchRejected, UnexpectedResponse, UntagNotSupported
from shared.omnisend.limits import API_2026, API_LIMITS, API_V3, ApiLimits
from shared.omnisend.pacing import Pacer
from shared.omnisend.payloads import OLD_STATUS_DATE, build_contact_payload, encode_batch_body
from shared.omnisend.retry import DEFAULT_MAX_ATTEMPTS

__all__ = [
    "API_2026",
    "API_LIMITS",
    "API_V3",
    "DEFAULT_MAX_ATTEMPTS",
    "MISSING_STATUS",
    "OLD_STATUS_DATE",
    "REQUEST_TIMEOUT_SECONDS",
    "ApiKeyProvider",
    "ApiLimits",
    "BatchItems",
    "BatchRejected",
    "BatchStatus",
    "ItemFailure",
    "OmnisendClient",
    "Pacer",
    "UnexpectedResponse",
    "UntagNotSupported",
    "build_contact_payload",
    "encode_batch_body",
]
