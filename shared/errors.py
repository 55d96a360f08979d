"""Errors named for what the caller must do.

- ``RetryLater``: a transient condition (429, 5xx, timeout, dropped connection). Try the same work again later.
- ``FailRun``: the run cannot go on (bad key, bad config, unreadable snapshot). Stop and tell the operator.
- ``RejectRow``: one input row cannot become a contact. Record it in rejected.csv and go on.

Every error carries evidence (HTTP status, Omnisend request id, batch, source file and line) and never
the API key nor a list of contacts.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Root of every error the product raises on purpose."""


class FailRun(ExporterError):
    """The run must stop; ``exit_code`` is what the CLI exits with."""

    exit_code = 3


class ConfigError(FailRun):
    """Settings or export definitions are invalid. ``problems`` lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


class SnapshotError(FailRun):
    """The segment snapshot cannot be read (no model.json, unknown table, not UTF-8, no partitions...)."""

    exit_code = 4


class AuthRejected(FailRun):
    """Omnisend refused the API key (401/403). Fix the key; retrying will not help."""

    exit_code = 5


class RunBusy(FailRun):
    """Another run of the export is active (another process, or the Functions app): wait, or --supersede it."""

    exit_code = 7


class RetryLater(ExporterError):
    """Transient failure. ``retry_after`` (seconds) is the server's hint when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RejectRow(ExporterError):
    """One row cannot be exported; ``reason`` is the short text written to rejected.csv."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
