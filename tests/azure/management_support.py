"""What the management API tests share: an Api that calls function_app.py's own HTTP function bodies on Azurite
(with the caller's roles as App Service Authentication sends them), request helpers, and the ``make_api`` fixture."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient

import function_app
from devtools import sample_data
from shared import names
from shared.app import build_orchestrator
from shared.management.access import ADMIN, OPERATOR, encode_principal
from shared.queues import StageQueues
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from tests.azure.concurrent_host import PrefixedQueues

KEY = "management-test-key"
REPO = Path(__file__).resolve().parents[2]
ROUTES = {  # (method, route template) -> the app's function; checked against the bindings below
    ("GET", "connections"): function_app.list_connections,
    ("GET", "connections/{name}"): function_app.manage_connection,
    ("PUT", "connections/{name}"): function_app.manage_connection,
    ("DELETE", "connections/{name}"): function_app.manage_connection,
    ("GET", "exports"): function_app.list_exports,
    ("GET", "exports/{name}"): function_app.manage_export,
    ("PUT", "exports/{name}"): function_app.manage_export,
    ("DELETE", "exports/{name}"): function_app.manage_export,
    ("POST", "exports/{name}/runs"): function_app.start_export_run,
    ("GET", "exports/{name}/runs/{runId}"): function_app.get_export_run,
    ("GET", "audit"): function_app.read_audit,
    ("POST", "forget"): function_app.forget_people,
}


def export_body(name: str, source_container: str, **extra) -> dict:
    return {
        "name": name,
        "source": {"container": source_container, "path": sample_data.EXPORT_PATH, "table": sample_data.TABLE},
        "mapping": {"email": "EMail"},
        "tags": ["ci-vip"],
        **extra,
    }


def connection_body(name: str, **extra) -> dict:
    return {
        "name": name,
        "displayName": f"Store {name}",
        "apiKeySecret": f"omnisend-{name}-key",
        "dataTransferAcknowledged": True,
        **extra,
    }


class Api:
    """One deployment of the app (its own definitions blob, queues, source container) called as a given role."""

    def __init__(self, azurite: str, queue_prefix: str, tmp_path: Path, document: dict | None, **settings) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.blobs = BlobServiceClient.from_connection_string(azurite)
        self.config_blob = f"mgmt-{self.id}.json"
        self.source_container = f"ci{self.id}"
        # Export names of this test's own: runs live in the shared exporter-runs container
        self.eu, self.us = f"eu-{self.id}", f"us-{self.id}"
        config = self.blobs.get_container_client(names.CONFIG_CONTAINER)
        if not config.exists():
            with contextlib.suppress(ResourceExistsError):  # another test created it first
                config.create_container()
        if document is not None:
            self.write_document(document)
        self.settings = Settings(
            storage_connection_string=azurite,
            omnisend_api_key=KEY,
            exports_config=f"{names.BLOB_CONFIG_PREFIX}{names.CONFIG_CONTAINER}/{self.config_blob}",
            **{"auth_enabled": True, **settings},
        )
        self.queue_prefix = queue_prefix + "-"
        stage_queues = StageQueues.from_connection_string(azurite)
        stage_queues.ensure_queues([self.queue_prefix + q for q in names.STAGE_QUEUES])
        self.queue_service = stage_queues
        function_app._orchestrator = build_orchestrator(
            self.settings, queues=PrefixedQueues(stage_queues, self.queue_prefix), key_provider=StaticKeyProvider(KEY)
        )
        self.tmp_path = tmp_path

    def write_document(self, document: dict) -> None:
        self.blobs.get_blob_client(names.CONFIG_CONTAINER, self.config_blob).upload_blob(
            json.dumps(document, indent=2), overwrite=True
        )

    def document(self) -> bytes:
        return self.blobs.get_blob_client(names.CONFIG_CONTAINER, self.config_blob).download_blob().readall()

    def upload_segment(self, rows: int = 20) -> None:
        local = self.tmp_path / uuid.uuid4().hex
        sample_data.write_export(local, rows, messy=False)
        container = self.blobs.get_container_client(self.source_container)
        if not container.exists():
            container.create_container()
        base = local / sample_data.CONTAINER
        for path in base.rglob("*"):
            if path.is_file():
                container.upload_blob(path.relative_to(base).as_posix(), path.read_bytes(), overwrite=True)

    def plan_messages(self) -> int:
        from azure.storage.queue import QueueClient

        client = QueueClient.from_connection_string(
            self.settings.storage_connection_string, self.queue_prefix + names.PLAN_QUEUE
        )
        return client.get_queue_properties().approximate_message_count

    def runs(self, export: str) -> list[str]:
        return (
            [
                b.name
                for b in self.blobs.get_container_client(names.RUNS_CONTAINER).list_blobs(name_starts_with=f"{export}/")
            ]
            if self.blobs.get_container_client(names.RUNS_CONTAINER).exists()
            else []
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        role: str | None | tuple = ADMIN,
        body=None,
        headers: dict | None = None,
        params: dict | None = None,
    ) -> func.HttpResponse:
        """``role``: the signed-in caller's app role(s); None for a request with the function key only."""
        route, route_params = _match(method, path)
        all_headers = dict(headers or {})
        if role is not None:
            roles = (role,) if isinstance(role, str) else role
            all_headers["X-MS-CLIENT-PRINCIPAL"] = encode_principal(f"{'-'.join(roles) or 'nobody'}@example.com", roles)
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        request = func.HttpRequest(
            method,
            f"http://localhost/api/{path}",
            headers=all_headers,
            params=params or {},
            route_params=route_params,
            body=data,
        )
        return ROUTES[(method, route)]._function.get_user_function()(request)

    def cleanup(self) -> None:
        self.blobs.get_blob_client(names.CONFIG_CONTAINER, self.config_blob).delete_blob()
        state = self.blobs.get_container_client(names.STATE_CONTAINER)
        # A test that changed nothing wrote no audit record; on a fresh Azurite the container may not exist yet.
        if state.exists():
            for blob in state.list_blobs(name_starts_with=f"_audit/{names.CONFIG_CONTAINER}/{self.config_blob}/"):
                state.delete_blob(blob.name)
        source = self.blobs.get_container_client(self.source_container)
        if source.exists():
            source.delete_container()


def _match(method: str, path: str) -> tuple[str, dict[str, str]]:
    parts = path.split("/")
    for m, route in ROUTES:
        template = route.split("/")
        if (
            m == method
            and len(template) == len(parts)
            and all(t.startswith("{") or t == p for t, p in zip(template, parts, strict=True))
        ):
            return route, {t[1:-1]: p for t, p in zip(template, parts, strict=True) if t.startswith("{")}
    raise AssertionError(f"no route for {method} {path}")


def answer(response: func.HttpResponse) -> dict:
    return json.loads(response.get_body())


def two_brands(source_container: str, eu: str = "vip-eu", us: str = "vip-us") -> dict:
    """Two connections: eu-store lets operators use it (without forcing), us-store is for admins only."""
    return {
        "connections": [connection_body("eu-store", allowedRoles=[OPERATOR]), connection_body("us-store")],
        "exports": [
            export_body(eu, source_container, connection="eu-store"),
            export_body(us, source_container, connection="us-store"),
        ],
    }


def brands_api(make_api, **connection_options) -> Api:
    """An Api over the two brands of two_brands(), with a snapshot uploaded; ``connection_options`` go to eu-store."""
    api = make_api(None)
    document = two_brands(api.source_container, api.eu, api.us)
    document["connections"][0].update(connection_options)
    api.write_document(document)
    api.upload_segment()
    return api


@pytest.fixture
def make_api(azurite, queue_prefix, tmp_path):
    made: list[Api] = []

    def make(document: dict | None = None, **settings) -> Api:
        api = Api(azurite, queue_prefix, tmp_path, document, **settings)
        made.append(api)
        return api

    yield make
    for api in made:
        api.cleanup()
