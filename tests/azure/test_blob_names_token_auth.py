"""Names from the outside never reach Blob Storage, with bearer-token auth as in Azure.

With a token credential (not a shared key) the Blob service resolves ``..`` in a blob name: reading
``exporter-runs`` / ``t/runs/../../../private/secret.json`` returned the blob ``secret.json`` of the container
``private``. Azurite accepts OAuth only over HTTPS with ``--oauth basic``, so this module starts its own blob-only
Azurite that way (a trustme certificate, a free port, stopped at the end); the shared Azurite on :10000 uses a
shared key and would not show the attack.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import azure.functions as func
import pytest
import trustme
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient

import function_app
from devtools import sample_data
from shared.app import build_orchestrator
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from shared.storage import BadName
from shared.storage_blob import BlobObjectStore
from tests.azure.azurite_support import AZURITE_BIN, port_answers

pytestmark = pytest.mark.azurite

# Azurite listens within seconds; a loaded 2-core CI machine may need more.
START_TIMEOUT_SECONDS = 120  # 60 was exceeded with 4 parallel workers on a heavily loaded 2-core machine
TENANT = "ab1f708d-50f6-404c-a006-d71b2ac7a606"
SECRET = b'{"apiKey": "not for you"}'


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class StorageToken:
    """A TokenCredential whose token Azurite's basic OAuth accepts (it checks audience, issuer and dates, not the
    signature): the SDK then authenticates with ``Authorization: Bearer``, as with a managed identity in Azure."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        now = int(time.time())
        claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/", "tid": TENANT,
                  "oid": str(uuid.uuid4()), "iat": now - 60, "nbf": now - 60, "exp": now + 3600}
        return AccessToken(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.c2ln", now + 3600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(account URL, CA bundle path) of a blob-only Azurite that takes bearer tokens over HTTPS."""
    folder = tmp_path_factory.mktemp("azurite-oauth")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    port = _free_port()
    blob_bin = AZURITE_BIN.with_name("azurite-blob")
    process = subprocess.Popen(
        [str(blob_bin), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--oauth", "basic",
         "--cert", str(folder / "cert.pem"), "--key", str(folder / "key.pem"), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                # Kill before reading: reading a live process's stderr blocks until it exits (seen hanging a run).
                process.kill()
                _, err = process.communicate(timeout=15)
                pytest.fail(f"azurite-blob --oauth basic did not start: {err.decode()[-2000:]}")
            time.sleep(0.2)
        yield f"https://127.0.0.1:{port}/devstoreaccount1", str(folder / "ca.pem")
    finally:
        # Azurite waits for open keep-alive connections before it exits on SIGTERM: give it a moment, then kill it.
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def service(oauth_azurite) -> Iterator[BlobServiceClient]:
    url, ca = oauth_azurite
    client = BlobServiceClient(url, credential=StorageToken(), connection_verify=ca)
    client.create_container("private")
    client.get_blob_client("private", "secret.json").upload_blob(SECRET, overwrite=True)
    client.create_container("exporter-runs")
    yield client
    client.close()


@pytest.fixture
def store(service) -> BlobObjectStore:
    return BlobObjectStore(service)


TRAVERSAL = "t/runs/../../../private/secret.json"


def test_the_service_itself_resolves_dot_dot_into_another_container(service):
    """The attack this module guards against, reproduced with the SDK alone (no store in between)."""
    assert service.get_blob_client("exporter-runs", TRAVERSAL).download_blob().readall() == SECRET


def test_the_store_works_with_a_token(store):
    store.write("exporter-runs", "t/runs/r-0123456789ab/report.json", b"{}")
    assert store.read("exporter-runs", "t/runs/r-0123456789ab/report.json") == b"{}"


@pytest.mark.parametrize("operation", ["read", "open", "exists", "write", "create", "delete"])
def test_the_store_refuses_a_dot_dot_name_before_any_request(store, service, operation):
    call = {
        "read": lambda: store.read("exporter-runs", TRAVERSAL),
        "open": lambda: store.open("exporter-runs", TRAVERSAL),
        "exists": lambda: store.exists("exporter-runs", TRAVERSAL),
        "write": lambda: store.write("exporter-runs", TRAVERSAL, b"overwritten"),
        "create": lambda: store.create("exporter-runs", TRAVERSAL, b"overwritten"),
        "delete": lambda: store.delete("exporter-runs", TRAVERSAL),
    }[operation]
    with pytest.raises(BadName):
        call()
    assert service.get_blob_client("private", "secret.json").download_blob().readall() == SECRET


def test_the_store_refuses_a_dot_dot_listing_prefix(store):
    with pytest.raises(BadName):
        list(store.list("exporter-runs", "t/runs/../../../private/"))


class NoQueues:
    """Storage queues are not used by the status route; a start would fail loudly here."""

    def send(self, queue_name, message, delay_seconds: int = 0) -> str:
        raise AssertionError("no message expected")


@pytest.fixture(scope="module")
def host(service, tmp_path_factory):
    store = BlobObjectStore(service)
    folder = tmp_path_factory.mktemp("segment")
    sample_data.write_export(folder, 300)  # the messy sample: rejected rows and duplicates included
    base = folder / sample_data.CONTAINER
    service.create_container(sample_data.CONTAINER)
    for path in base.rglob("*"):
        if path.is_file():
            service.get_blob_client(sample_data.CONTAINER, path.relative_to(base).as_posix()).upload_blob(
                path.read_bytes(), overwrite=True)
    config = folder / "exports.json"
    config.write_text(json.dumps({"exports": [{
        "name": "vip", "dataTransferAcknowledged": True, "tags": ["ci-vip"],
        "source": {"container": sample_data.CONTAINER, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
        "mapping": {"email": "EMail", "firstName": "FirstName", "lastName": "LastName", "phone": "Telephone",
                    "city": "City", "birthdate": "DateOfBirth"},
    }]}))
    settings = Settings(omnisend_api_key="k", exports_config=str(config))
    function_app._orchestrator = build_orchestrator(settings, queues=NoQueues(), stores=(store, store),
                                                    key_provider=StaticKeyProvider("k"))
    yield Routes()
    function_app._orchestrator = None


class Routes:
    """Calls function_app's own HTTP functions with the request the host would build for a URL.

    Not the HostStandIn: FunctionApp.get_functions() indexes an app once per process, and test_functions_flow's
    stand-in does that. The two routes here are matched by hand; their route templates are checked below.
    """

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def http(self, method: str, path: str, body: bytes | dict | None = None) -> func.HttpResponse:
        parts = path.removeprefix("/api/").split("/")
        data = json.dumps(body).encode() if isinstance(body, dict) else body or b""
        if method == "GET" and len(parts) == 4 and parts[0] == "exports" and parts[2] == "runs":
            target, params = function_app.get_export_run, {"name": parts[1], "runId": parts[3]}
        elif method == "POST" and len(parts) == 3 and parts[0] == "exports" and parts[2] == "runs":
            target, params = function_app.start_export_run, {"name": parts[1]}
        else:
            raise AssertionError(f"no route for {method} {path}")
        request = func.HttpRequest(method, f"http://localhost{path}", headers={}, params={},
                                   route_params=params, body=data)
        try:
            return target._function.get_user_function()(request)
        except Exception as exc:  # what the host would turn into a 500
            self.errors.append(exc)
            return func.HttpResponse("Internal Server Error", status_code=500)


def test_the_routes_called_here_are_the_app_routes():
    routes = {b._function.get_user_function().__name__: b._function.get_trigger().route
              for b in (function_app.get_export_run, function_app.start_export_run)}
    assert routes == {"get_export_run": "exports/{name}/runs/{runId}", "start_export_run": "exports/{name}/runs"}


@pytest.mark.parametrize(
    ("name", "run_id"),
    [("t", ".."), ("..", "r-0123456789ab"), ("t", "r-0123456789ab.."), ("T", "r-0123456789ab"),
     ("t", "%2e%2e"), ("t", "r-" + "a" * 5000), ("t", "r-0123456789ab\x00")],
)
def test_a_malformed_run_route_is_a_400_that_quotes_only_an_excerpt(host, name, run_id):
    response = host.http("GET", f"/api/exports/{name}/runs/{run_id}")
    assert response.status_code == 400
    assert len(response.get_body()) < 300


def test_a_well_formed_unknown_run_is_a_404(host):
    response = host.http("GET", "/api/exports/t/runs/r-0123456789ab")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        b'{"force": "' + b"x" * 10_000_000 + b'"}',  # 10 MB: once echoed back whole
        b"[" * 100_000 + b"]" * 100_000,  # once a RecursionError and a 500
        b'{"force": ' + b"[" * 400 + b"]" * 400 + b"}",  # deep, but small enough to parse
        b'{"force": "' + b"y" * 900 + b'"}',
        b"not json",
    ],
    ids=["10-MB", "deep-100k", "deep-400", "wrong-type", "not-json"],
)
def test_a_bad_start_body_is_a_400_that_echoes_at_most_an_excerpt(host, body):
    response = host.http("POST", "/api/exports/t/runs", body=body)
    assert response.status_code == 400 and not host.errors
    assert len(response.get_body()) < 300


def test_an_http_dry_run_shows_shapes_not_people(host, service):
    response = host.http("POST", "/api/exports/vip/runs", body={"dryRun": True})
    assert response.status_code == 200, response.get_body()
    text = response.get_body().decode()
    report = json.loads(text)
    assert report["dryRun"] and report["samplePayloads"] and report["rejectedSample"]
    emails = [r["email"] for r in report["rejectedSample"]]
    assert all(e == "" or "***" in e or set(e) <= set("xX9-. ") for e in emails)
    for payload in report["samplePayloads"]:
        assert "***@" in payload["identifiers"][0]["id"]
        assert set(payload["firstName"]) <= set("xX -'")
        assert payload.get("birthdate", "9999-99-99") == "9999-99-99"


def test_a_malformed_export_name_in_a_start_is_a_400(host):
    response = host.http("POST", "/api/exports/..%2F..%2Fprivate/runs", body=b"{}")
    assert response.status_code == 400
