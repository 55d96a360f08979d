"""Fakes at the process boundary for the client's unit tests: a scripted HTTP server on 127.0.0.1, fake time,
and an API-key provider that counts how often it was asked to refresh."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON, bytes -> raw, None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class ScriptedServer:
    """Answers each request with the next scripted Reply (or a route-specific one) and records what it got."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                with server._lock:
                    server.seen.append(Seen(self.command, url.path, parse_qs(url.query), dict(self.headers), body))
                    reply = server.script.pop(0) if server.script else Reply(599, {"error": "script exhausted"})
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                raw = reply.body if isinstance(reply.body, bytes) else b""
                if isinstance(reply.body, dict | list):
                    raw = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def reply(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeTime:
    """A monotonic clock that only moves when someone sleeps; records every sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class KeyRing:
    """ApiKeyProvider fake: returns ``keys[0]`` until refreshed, then the next key."""

    def __init__(self, *keys: str) -> None:
        self.keys = list(keys)
        self.index = 0
        self.refreshes = 0

    def get(self, refresh: bool = False) -> str:
        if refresh:
            self.refreshes += 1
            self.index = min(self.index + 1, len(self.keys) - 1)
        return self.keys[self.index]
