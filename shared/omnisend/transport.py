"""The HTTP session the Omnisend client talks through: no redirects, and a total deadline per request.

- Redirects are never followed (``allow_redirects=False`` on every request, and a session that cannot follow one
  even if asked, as a second lock): a 3xx from the API is an unexpected answer. Following one re-sent the API key
  and the whole batch of contacts to whatever host the ``Location`` named.
- ``requests`` has no total timeout: its read timeout bounds each socket read, so a server trickling one byte per
  few seconds held a request for as long as it liked (33 s and counting). Every request made inside
  ``request_deadline(seconds)`` is cut when the deadline passes: a timer shuts the connection's socket down, the
  blocked read returns, and ``requests`` raises a connection error that the client treats as a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# Connections kept open per host: enough for the CLI's worker pool without "pool is full" churn.
POOL_MAXSIZE = 32


class Deadline:
    """One request's deadline, for the thread that makes it. ``expired`` once the timer cut the connection."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, sock: socket.socket | None) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it already has)."""
        if sock is None:
            return
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), self._cut, (sock,))
            self._timer.daemon = True
            self._timer.start()

    def _cut(self, sock: socket.socket) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            # socket.socket.shutdown also for TLS sockets: it wakes the blocked read without touching the TLS state
            # another thread is using.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def disarm(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


_current = threading.local()


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[Deadline]:
    """Requests made by this thread inside the block are cut ``seconds`` after it began."""
    deadline = Deadline(seconds)
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = None
        deadline.disarm()


class _DeadlineMixin:
    """Arms the calling thread's deadline on the socket before waiting for the answer (headers and body)."""

    sock: socket.socket | None

    def getresponse(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        deadline: Deadline | None = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.arm(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class _NoRedirectSession(requests.Session):
    def resolve_redirects(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        """Follows nothing: requests asks this generator for the next hop, and it has none."""
        return iter(())


def new_session() -> requests.Session:
    session = _NoRedirectSession()
    adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=POOL_MAXSIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
