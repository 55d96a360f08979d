"""Outbound safety: the key and the contacts go to the configured Omnisend host only, and no request hangs.

A redirecting server and a trickling server on 127.0.0.1 play the hostile or broken peer.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from omnisend_fakes import Reply, ScriptedServer

from shared.errors import RetryLater
from shared.omnisend import OmnisendClient, Pacer
from shared.omnisend.errors import UnexpectedResponse

ITEM = {"identifiers": [{"type": "email", "id": "jane@example.com", "sendWelcomeMessage": False,
                         "channels": {"email": {"status": "nonSubscribed", "statusDate": "1970-01-01T00:00:00Z"}}}]}
KEY = "secret-key-0123456789"


class Key:
    def get(self, refresh: bool = False) -> str:
        return KEY


def client_for(base_url: str, version: str = "2026-03-15", **kwargs) -> OmnisendClient:
    return OmnisendClient(base_url=base_url, api_version=version, api_key=Key(), pacer=Pacer(60_000),
                          max_attempts=1, sleep=lambda s: None, **kwargs)


@pytest.fixture
def elsewhere():
    """Another host (another port): whatever reaches it has left Omnisend."""
    srv = ScriptedServer()
    yield srv
    srv.stop()


# --- redirects ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("version", ["2026-03-15", "v3"])
def test_a_redirected_batch_post_sends_nothing_to_the_other_host(server, elsewhere, status, version):
    base = "/api" if version == "2026-03-15" else "/v3"
    server.reply(Reply(status, {"batchID": "theirs"}, headers={"Location": f"{elsewhere.base_url}{base}/batches"}))
    elsewhere.reply(Reply(200, {"batchID": "theirs"}))
    with pytest.raises(UnexpectedResponse, match=f"→ {status}"):
        client_for(server.base_url, version).create_batch([ITEM])
    assert elsewhere.seen == []
    assert len(server.seen) == 1  # and nothing re-sent to Omnisend either


def test_a_redirected_status_poll_is_not_followed(server, elsewhere):
    server.reply(Reply(302, headers={"Location": f"{elsewhere.base_url}/api/batches/b1"}))
    with pytest.raises(UnexpectedResponse, match="→ 302"):
        client_for(server.base_url).batch_statuses(["b1"])
    assert elsewhere.seen == []


def test_a_redirected_untag_is_not_followed(server, elsewhere):
    server.reply(Reply(307, headers={"Location": f"{elsewhere.base_url}/api/contacts/tags"}))
    with pytest.raises(UnexpectedResponse, match="→ 307"):
        client_for(server.base_url).untag(["jane@example.com"], ["ci-vip"])
    assert elsewhere.seen == []


# --- base URL -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://api.omnisend.com", "https://evil.example", "https://omnisend.com.evil.example"])
def test_a_client_refuses_a_base_url_that_is_not_omnisend(url):
    with pytest.raises(ValueError, match="refusing Omnisend base URL"):
        client_for(url)


# --- a total deadline per request ---------------------------------------------------------------------------------


class Trickler:
    """Accepts a request, then answers one byte every ``interval`` seconds: each read gets a byte well within the
    read timeout, so only a total deadline ends the request. ``phase`` says what trickles: headers or body."""

    def __init__(self, phase: str, interval: float = 0.2) -> None:
        self.phase, self.interval = phase, interval
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n"
            try:
                if self.phase == "body":
                    conn.sendall(head + b"\r\n")
                    drip = b" " * 100000
                else:
                    drip = head + b"X-Slow: " + b"a" * 100000
                for byte in drip:
                    if self.stopped.wait(self.interval):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_is_cut_at_the_deadline(phase):
    trickler = Trickler(phase)
    try:
        client = client_for(trickler.base_url, deadline_seconds=1.0)
        started = time.monotonic()
        with pytest.raises(RetryLater, match="deadline of 1 s exceeded"):
            client.create_batch([ITEM])
        elapsed = time.monotonic() - started
    finally:
        trickler.stop()
    # The read timeout (10 s) never fires here: only the deadline ends it. A generous bound, not a speed target.
    assert 1.0 <= elapsed < 5.0


# --- nothing that can carry a header reaches a message ------------------------------------------------------------


class BadKey:
    def get(self, refresh: bool = False) -> str:
        return KEY + "\r\nX-Injected: 1"


def test_a_header_requests_cannot_send_gives_an_error_without_the_key(server):
    client = OmnisendClient(base_url=server.base_url, api_version="2026-03-15", api_key=BadKey(),
                            pacer=Pacer(60_000), max_attempts=1)
    with pytest.raises(UnexpectedResponse) as caught:
        client.create_batch([ITEM])
    assert KEY not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert server.seen == []


# --- a deeply nested answer is no answer, not a crash -------------------------------------------------------------


def test_a_deeply_nested_answer_to_a_batch_post_is_retried_later_not_a_crash(server):
    server.reply(Reply(200, b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(RetryLater, match="without a batchID"):
        client_for(server.base_url).create_batch([ITEM])
