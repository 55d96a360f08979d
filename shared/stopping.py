"""One stop flag per CLI run (ARCHITECTURE §4 rule 10: fatal means stop, within seconds, everywhere).

Set once, by Ctrl-C / SIGTERM (reason ``Interrupted``) or by the first fatal error any thread meets (a refused key,
an unreachable Omnisend). Every send worker, the pacer and the client's retry waits look at it: waits return at
once, and no new request leaves once it is set; only requests already on the wire finish. The flag also counts
those requests, so the operator can be told how many are still in flight.

The Azure Functions app does not use it to stop anything: there a queue message is the unit of work, and a stopped
run is a blob (failure.json) that later messages find.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import ExporterError

EXIT_INTERRUPTED = 130


class Interrupted(ExporterError):
    """The operator asked to stop (Ctrl-C, SIGTERM). The run is left as it is: the same command resumes it."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str = "interrupted: run the same command again to resume") -> None:
        super().__init__(message)


class Stopped(ExporterError):
    """Raised in a thread that finds the run stopping: it must not start another request. ``reason`` is what
    stopped the run (``Interrupted`` or the fatal error another thread met); the CLI exits with its code."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.exit_code = getattr(reason, "exit_code", 3)


class StopSignal:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason: BaseException | None = None
        self._in_flight = 0

    def stop(self, reason: BaseException) -> bool:
        """Ask every thread to stop. The first reason wins; returns True for the call that set it."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
        self._event.set()
        return True

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``Stopped`` if the run is stopping: called before every request."""
        if self._event.is_set():
            raise Stopped(self.reason or Interrupted())

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the run starts stopping meanwhile (an interruptible ``time.sleep``)."""
        if seconds > 0:
            self._event.wait(seconds)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered, across every thread."""
        return self._in_flight

    @contextmanager
    def request(self) -> Iterator[None]:
        """Counts one request on the wire for as long as the block runs."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
