"""Omnisend-specific errors, each a subclass of the product's errors named for what the caller must do."""

from __future__ import annotations

from shared.errors import ConfigError, FailRun, RejectRow


class BatchRejected(RejectRow):
    """Omnisend refused a whole batch (400/413/422). Mark every item of the batch failed with ``reason``.

    Retrying the same body would be refused again, so this is not ``RetryLater``. ``reason`` is Omnisend's
    message (emails masked), fit for rejected.csv; ``request_id`` is Omnisend's ``instance`` when it gave one.
    """

    def __init__(self, message: str, *, status: int, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.args = (message,)
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        return self.args[0]


class UntagNotSupported(ConfigError):
    """The v3 API has no way to remove a tag; an export with onExit "untag" needs API 2026-03-15."""

    def __init__(self, api_version: str) -> None:
        super().__init__(
            f"onExit 'untag' needs OMNISEND_API_VERSION=2026-03-15; API {api_version} has no untag endpoint "
            "(set onExit to 'ignore' or switch the API version)"
        )


class UnexpectedResponse(FailRun):
    """Omnisend answered with a status the client has no rule for (404 on a batch, 410 retired version...).

    ``status`` and ``request_id`` are the evidence; the message names the method and path.
    """

    def __init__(self, message: str, *, status: int | None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class BaseUrlNotFound(UnexpectedResponse):
    """Omnisend answered 404 to an endpoint that always exists (GET/POST /batches): the base URL is wrong."""

    exit_code = 2


class OmnisendUnreachable(FailRun):
    """No answer from Omnisend at all for a while (see breaker.py): the base URL is wrong or Omnisend is down."""

    def __init__(self, base_url: str, evidence: str) -> None:
        super().__init__(f"cannot reach Omnisend at {base_url} – check OMNISEND_BASE_URL ({evidence})")
        self.base_url = base_url
