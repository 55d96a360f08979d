"""HTTP plumbing (stdlib ThreadingHTTPServer) and the ``Simulator`` facade used by tests and the CLI."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import LOOPBACK_HOSTS, SimConfig
from .core import Response, SimCore, split_api_path

SIM_PREFIX = "/_sim/"
# serve_forever checks for shutdown this often; the stdlib default (0.5 s) would make every stop() slow.
SHUTDOWN_POLL_SECONDS = 0.05


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    core: SimCore


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections, as against the real API
    # Headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks push many thousands of requests

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        core = self.server.core
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path.startswith(SIM_PREFIX):
            self._send(_inspect(core, self.command, parts.path, query, body))
            return
        api = split_api_path(parts.path)
        if api is None:
            self._send(Response(404, {"error": "unknown path; use /api/... (2026-03-15) or /v3/..."}))
            return
        latency = float(core.config.latency)
        if latency > 0:
            time.sleep(latency)
        response = core.handle_api(self.command, api[0], api[1], query, self.headers, body)
        if response.drop:
            self.close_connection = True  # close without a status line: the client sees a dropped connection
            return
        self._send(response)

    def _send(self, response: Response) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        content_type = "application/json"
        if isinstance(response.body, dict) and "type" in response.body and "instance" in response.body:
            content_type = "application/problem+json"
        if payload:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)


def _inspect(core: SimCore, method: str, path: str, query: dict, body: bytes) -> Response:
    """/_sim/* endpoints: no auth, no faults, not counted in stats."""
    try:
        data = json.loads(body) if body else None
        if (method, path) == ("GET", "/_sim/state"):
            include = (query.get("contacts") or ["1"])[0] not in ("0", "false")
            return Response(200, core.state(include_contacts=include, brand=(query.get("brand") or [None])[0]))
        if (method, path) == ("GET", "/_sim/contact"):
            found = core.contact((query.get("email") or [""])[0], brand=(query.get("brand") or [None])[0])
            return Response(200, found) if found else Response(404, {"error": "no such contact"})
        if (method, path) == ("POST", "/_sim/reset"):
            core.reset()
            return Response(200, {"reset": True})
        if (method, path) == ("GET", "/_sim/config"):
            return Response(200, core.config.to_dict())
        if (method, path) == ("POST", "/_sim/config"):
            if not isinstance(data, dict):
                raise ValueError("config body must be a JSON object")
            return Response(200, core.configure(data))
        if (method, path) == ("POST", "/_sim/contacts"):
            specs = data.get("contacts", [data]) if isinstance(data, dict) else data
            if not isinstance(specs, list):
                raise ValueError('send a contact object, a list, or {"contacts": [...]}')
            return Response(200, {"contacts": core.seed_contacts(specs)})
    except ValueError as exc:
        return Response(400, {"error": str(exc)})
    return Response(404, {"error": f"unknown inspection endpoint {method} {path}"})


class Simulator:
    """A running Omnisend API simulator (v3 under /v3, 2026-03-15 under /api) on loopback."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        if self.config.host not in LOOPBACK_HOSTS:
            raise ValueError("the simulator only binds loopback addresses")
        self._core = SimCore(self.config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = _Server((self.config.host, self.config.port), _Handler)
        server.core = self._core
        self._server = server
        self._core.scheduler.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="omnisend-sim-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._core.scheduler.stop()
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configure(self, **updates: Any) -> dict[str, Any]:
        return self._core.configure(updates, running=self._server is not None)

    def state(self, include_contacts: bool = True) -> dict[str, Any]:
        return self._core.state(include_contacts=include_contacts)

    def stats(self) -> dict[str, Any]:
        return self._core.state(include_contacts=False)["stats"]

    def contacts(self, brand: str | None = None) -> dict[str, dict[str, Any]]:
        """Every contact; with ``separate_brands``, those of the brand whose key is ``brand`` (default: the first)."""
        return self._core.state(brand=brand)["contacts"]

    def contact(self, email: str, brand: str | None = None) -> dict[str, Any] | None:
        return self._core.contact(email, brand=brand)

    def seed_contact(
        self,
        email: str,
        status: str | None = None,
        status_date: str | None = None,
        tags: list[str] | None = None,
        api_version: str = "v3",
        **extra: Any,
    ) -> dict[str, Any]:
        """Create or update a contact directly, bypassing the API rules.

        A new contact defaults to ``subscribed`` dated now; an existing one keeps its status unless ``status`` or
        ``status_date`` is given. Tags are merged. ``extra``: phone, fields, custom_properties, contact_id, created_at.
        """
        spec = {"email": email, "status": status, "status_date": status_date, "tags": tags or [],
                "api_version": api_version, **extra}  # fmt: skip
        return self._core.seed_contacts([spec])[0]

    def reset(self) -> None:
        self._core.reset()
