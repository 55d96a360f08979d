"""A local HTTPS stand-in for Azure Key Vault's secret reads, good enough for the real ``SecretClient``.

What it does (what azure-keyvault-secrets 4.12 needs, see /work/shared/reference/azure-functions.md §3.2.5):
- serves TLS on 127.0.0.1 with a certificate from a throw-away ``trustme`` CA (``ca_pem`` is the file to pass as
  ``connection_verify``): the SDK's challenge policy refuses plain http vault URLs;
- answers any request without a bearer token with 401 and
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"``
  (the SDK's challenge handshake; clients need ``verify_challenge_resource=False`` because the host is not
  ``*.vault.azure.net``); any bearer token is accepted afterwards;
- ``GET /secrets/<name>[/<version>]?api-version=...`` → 200 ``{"value", "id", "attributes"}``, 404 with Key Vault's
  error shape (``SecretNotFound``) for unknown names, 403 (``Forbidden`` / ``ForbiddenByRbac``) while ``deny`` is on.

It counts authorised reads per secret (``reads``) so tests can assert on caching, and ``set_secret`` rotates a
value (new 32-hex version). It is not Key Vault: no other operations, no RBAC model, no throttling, no
soft-delete, no token validation.

Run it by hand:  ``.venv/bin/python -m devtools.keyvault_fake --secret omnisend-api-key=test-key``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import tempfile
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import trustme

DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"


class KeyVaultFake:
    def __init__(self, *, tenant: str = DEFAULT_TENANT, cert_dir: Path | str | None = None) -> None:
        self.tenant = tenant
        self._secrets: dict[str, tuple[str, str]] = {}  # name -> (value, version)
        self._lock = threading.Lock()
        self.reads: Counter[str] = Counter()  # authorised GETs per secret name (found or not)
        self.challenges = 0  # 401 answers sent
        self.deny = False  # True: every authorised request gets 403, as without 'Key Vault Secrets User'
        self._tmp = None if cert_dir else tempfile.TemporaryDirectory(prefix="kvfake-")
        self._cert_dir = Path(cert_dir or self._tmp.name)  # type: ignore[union-attr]
        self._cert_dir.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA()
        self.ca_pem = str(self._cert_dir / "kvfake-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_pem)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Create or rotate a secret; returns the new version id."""
        version = uuid.uuid4().hex
        with self._lock:
            self._secrets[name] = (value, version)
        return version

    def delete_secret(self, name: str) -> None:
        with self._lock:
            self._secrets.pop(name, None)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def client_kwargs(self) -> dict[str, object]:
        """What a real SecretClient needs to talk to this fake."""
        return {"connection_verify": self.ca_pem, "verify_challenge_resource": False}

    def start(self) -> KeyVaultFake:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        # A short poll interval makes stop() quick (shutdown() waits for the serve loop to notice).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="keyvault-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> KeyVaultFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ---------------------------------------------------------------------------------------

    def _answer(self, method: str, path: str, authorization: str | None) -> tuple[int, dict[str, str], dict]:
        if not (authorization or "").startswith("Bearer "):
            with self._lock:
                self.challenges += 1
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{self.tenant}", '
                'resource="https://vault.azure.net"'
            )
            return 401, {"WWW-Authenticate": challenge}, {"error": {"code": "Unauthorized", "message": "no token"}}
        parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
        if method != "GET" or len(parts) not in (2, 3) or parts[0] != "secrets":
            return 400, {}, {"error": {"code": "BadParameter", "message": f"the fake does not do {method} {path}"}}
        name = parts[1]
        with self._lock:
            self.reads[name] += 1
            if self.deny:
                message = (
                    "Caller is not authorized to perform action on resource. "
                    "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'"
                )
                return (
                    403,
                    {},
                    {"error": {"code": "Forbidden", "message": message, "innererror": {"code": "ForbiddenByRbac"}}},
                )
            found = self._secrets.get(name)
        if found is None or (len(parts) == 3 and parts[2] != found[1]):
            message = f"A secret with (name/id) {name} was not found in this key vault."
            return 404, {}, {"error": {"code": "SecretNotFound", "message": message}}
        value, version = found
        body = {
            "value": value,
            "id": f"{self.url}/secrets/{name}/{version}",
            "attributes": {"enabled": True, "created": 1767225600, "updated": 1767225600, "recoveryLevel": "Purgeable"},
            "tags": {},
        }
        return 200, {}, body


def _handler_for(fake: KeyVaultFake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, headers, body = fake._answer(self.command, self.path, self.headers.get("Authorization"))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read counters, not logs

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--secret", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    fake = KeyVaultFake()  # the CA certificate lives in a temporary folder removed on exit
    for item in args.secret:
        name, _, value = item.partition("=")
        fake.set_secret(name, value)
    with fake:
        print(f"Key Vault fake at {fake.url} ; CA certificate: {fake.ca_pem} ; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
