"""The management API through function_app.py's own function bodies, on Azurite: connections and exports read,
saved and deleted over HTTP, validation of the whole document, ETag/If-Match, who may do what, the audit log.

The caller's roles arrive as App Service Authentication would send them (X-MS-CLIENT-PRINCIPAL, built by
shared.management.access.encode_principal); what Entra ID itself does (tokens, app roles) is not here.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
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
from shared.management.access import ADMIN, OPERATOR, READER, encode_principal
from shared.queues import StageQueues
from shared.secrets import StaticKeyProvider
from shared.settings import Settings
from tests.azure.concurrent_host import PrefixedQueues

pytestmark = pytest.mark.azurite

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


def test_the_routes_called_here_are_the_app_routes():
    for (method, route), target in ROUTES.items():
        trigger = target._function.get_trigger()
        assert trigger.route == route and method in [str(m).split(".")[-1] for m in trigger.methods], (method, route)


# ------------------------------------------------------------------------------------------------ saving exports


def test_a_saved_export_gets_an_etag_and_is_not_run(make_api):
    api = make_api({"exports": []})
    api.upload_segment()

    response = api.call(
        "PUT", f"exports/{api.eu}", body=export_body(api.eu, api.source_container, dataTransferAcknowledged=True)
    )

    assert response.status_code == 201
    etag = response.headers["ETag"]
    fetched = api.call("GET", f"exports/{api.eu}", role=READER)
    assert fetched.status_code == 200 and fetched.headers["ETag"] == etag
    assert answer(fetched)["source"]["container"] == api.source_container
    assert [e["name"] for e in json.loads(api.document())["exports"]] == [api.eu]
    assert api.plan_messages() == 0 and api.runs(api.eu) == []  # saving never starts a run

    started = api.call("POST", f"exports/{api.eu}/runs")  # it runs on demand (or on the timer)
    assert started.status_code == 202 and api.plan_messages() == 1


def test_an_invalid_export_gets_every_problem_at_once_and_changes_nothing(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})
    before = api.document()
    bad = {
        "source": {"container": "ciexports", "path": "p", "table": "T"},
        "mapping": {"firstName": "First"},
        "tags": ["not a tag!"],
        "onExit": "explode",
        "colour": "blue",
    }

    response = api.call("PUT", "exports/new-one", body=bad)

    assert response.status_code == 400
    problems = answer(response)["problems"]
    assert len(problems) >= 4, problems
    for word in ("email", "tag", "onExit", "colour"):
        assert any(word in p for p in problems), (word, problems)
    assert api.document() == before
    assert answer(api.call("GET", "audit"))["records"] == []


def test_changing_an_export_without_if_match_is_428_and_changes_nothing(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})
    before = api.document()

    response = api.call("PUT", "exports/vip", body=export_body("vip", "ciexports", tags=["changed"]))

    assert response.status_code == 428 and "If-Match" in answer(response)["error"]
    assert api.document() == before


def test_a_stale_if_match_is_412_and_changes_nothing(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})
    stale = api.call("GET", "exports/vip").headers["ETag"]
    assert (
        api.call(
            "PUT",
            "exports/vip",
            body=export_body("vip", "ciexports", tags=["first-change"]),
            headers={"If-Match": stale},
        ).status_code
        == 200
    )
    after_first = api.document()

    response = api.call(
        "PUT", "exports/vip", body=export_body("vip", "ciexports", tags=["second-change"]), headers={"If-Match": stale}
    )

    assert response.status_code == 412
    assert api.document() == after_first
    assert json.loads(after_first)["exports"][0]["tags"] == ["first-change"]


def test_creating_with_if_none_match_star_is_412_when_the_export_exists(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})

    response = api.call("PUT", "exports/vip", body=export_body("vip", "ciexports"), headers={"If-None-Match": "*"})

    assert response.status_code == 412


def test_a_change_to_another_export_does_not_make_an_etag_stale(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports"), export_body("churn", "ciexports")]})
    etag = api.call("GET", "exports/vip").headers["ETag"]
    churn = api.call("GET", "exports/churn").headers["ETag"]
    assert (
        api.call(
            "PUT", "exports/churn", body=export_body("churn", "ciexports", enabled=False), headers={"If-Match": churn}
        ).status_code
        == 200
    )

    response = api.call(
        "PUT", "exports/vip", body=export_body("vip", "ciexports", tags=["ok"]), headers={"If-Match": etag}
    )

    assert response.status_code == 200


def test_the_url_and_body_must_name_the_same_export(make_api):
    api = make_api({"exports": []})

    response = api.call("PUT", "exports/vip", body=export_body("other", "ciexports"))

    assert response.status_code == 400 and "must agree" in answer(response)["error"]


def test_deleting_an_export_keeps_its_runs_and_state(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})
    runs = api.blobs.get_container_client(names.RUNS_CONTAINER)
    run_blob = f"vip-{api.id}/runs/r-000000000000/report.json"
    api.write_document({"exports": [export_body(f"vip-{api.id}", "ciexports"), export_body("churn", "ciexports")]})
    if not runs.exists():
        runs.create_container()
    runs.upload_blob(run_blob, b"{}", overwrite=True)
    etag = api.call("GET", f"exports/vip-{api.id}").headers["ETag"]

    response = api.call("DELETE", f"exports/vip-{api.id}", headers={"If-Match": etag})

    assert response.status_code == 200
    assert [e["name"] for e in json.loads(api.document())["exports"]] == ["churn"]
    assert runs.get_blob_client(run_blob).exists()
    runs.delete_blob(run_blob)


def test_deleting_an_export_with_purge_state_removes_its_runs_and_state(make_api):
    api = make_api(None)
    export = f"vip-{api.id}"
    api.write_document({"exports": [export_body(export, "ciexports"), export_body("churn", "ciexports")]})
    blobs = {
        names.RUNS_CONTAINER: f"{export}/runs/r-000000000000/report.json",
        names.STATE_CONTAINER: f"{export}/state/members.bin",
    }
    for container, blob in blobs.items():
        client = api.blobs.get_container_client(container)
        if not client.exists():
            client.create_container()
        client.upload_blob(blob, b"{}", overwrite=True)
    etag = api.call("GET", f"exports/{export}").headers["ETag"]

    response = api.call("DELETE", f"exports/{export}", headers={"If-Match": etag}, params={"purgeState": "true"})

    assert response.status_code == 200 and answer(response)["purgedObjects"] == 2
    for container, blob in blobs.items():
        assert not api.blobs.get_blob_client(container, blob).exists()


def test_the_last_export_cannot_be_deleted_as_the_file_needs_one(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})
    etag = api.call("GET", "exports/vip").headers["ETag"]

    response = api.call("DELETE", "exports/vip", headers={"If-Match": etag})

    assert response.status_code == 400 and any("at least one export" in p for p in answer(response)["problems"])
    assert [e["name"] for e in json.loads(api.document())["exports"]] == ["vip"]


def test_deleting_an_export_without_if_match_is_428(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})

    assert api.call("DELETE", "exports/vip").status_code == 428
    assert [e["name"] for e in json.loads(api.document())["exports"]] == ["vip"]


# ------------------------------------------------------------------------------------------------ connections


def test_a_connection_used_by_exports_cannot_be_deleted(make_api):
    api = make_api(two_brands("ciexports"))
    etag = api.call("GET", "connections/eu-store").headers["ETag"]

    response = api.call("DELETE", "connections/eu-store", headers={"If-Match": etag})

    assert response.status_code == 409 and answer(response)["exports"] == ["vip-eu"]
    assert "vip-eu" in answer(response)["error"]


def test_an_unused_connection_is_deleted(make_api):
    document = two_brands("ciexports")
    document["connections"].append(connection_body("spare"))
    api = make_api(document)
    etag = api.call("GET", "connections/spare").headers["ETag"]

    response = api.call("DELETE", "connections/spare", headers={"If-Match": etag})

    assert response.status_code == 200
    assert [c["name"] for c in json.loads(api.document())["connections"]] == ["eu-store", "us-store"]


@pytest.mark.parametrize("field", ["apiKey", "key", "omnisendApiKey", "apiToken"])
def test_a_key_is_never_accepted_in_a_body(make_api, field):
    api = make_api(two_brands("ciexports"))
    before = api.document()

    response = api.call("PUT", "connections/new-store", body={**connection_body("new-store"), field: "s3cr3t-key"})

    assert response.status_code == 400 and field in answer(response)["error"]
    assert "s3cr3t-key" not in response.get_body().decode()
    assert api.document() == before


def test_nobody_reads_a_key(make_api):
    api = make_api(two_brands("ciexports"))

    bodies = [api.call("GET", "connections", role=role).get_body().decode() for role in (ADMIN, OPERATOR, READER)]
    bodies.append(api.call("GET", "connections/eu-store").get_body().decode())

    for text in bodies:
        assert KEY not in text and '"apiKey"' not in text
    assert answer(api.call("GET", "connections/eu-store"))["apiKeySecret"] == "omnisend-eu-store-key"


def test_a_new_connection_is_saved(make_api):
    api = make_api(two_brands("ciexports"))

    response = api.call("PUT", "connections/third", body=connection_body("third", requestsPerMinute=100))

    assert response.status_code == 201 and response.headers["ETag"]
    assert [c["name"] for c in json.loads(api.document())["connections"]] == ["eu-store", "us-store", "third"]


def test_an_invalid_connection_gets_every_problem_at_once_and_changes_nothing(make_api):
    api = make_api(two_brands("ciexports"))
    before = api.document()

    response = api.call(
        "PUT",
        "connections/third",
        body={"name": "third", "requestsPerMinute": 5000, "allowedRoles": ["Exports.Everyone"]},
    )

    assert response.status_code == 400
    problems = answer(response)["problems"]
    assert len(problems) >= 3, problems  # no displayName, no key source, rate out of range, unknown role
    assert api.document() == before


# ------------------------------------------------------------------------------------------------ a single-brand file


def test_an_old_single_brand_file_keeps_working_unchanged(make_api):
    old = {"exports": [export_body("vip", "ciexports", dataTransferAcknowledged=True)]}
    api = make_api(old)

    connections = answer(api.call("GET", "connections", role=READER))["connections"]
    etag = api.call("GET", "exports/vip").headers["ETag"]
    saved = api.call(
        "PUT",
        "exports/vip",
        body=export_body("vip", "ciexports", dataTransferAcknowledged=True, tags=["ci-vip", "more"]),
        headers={"If-Match": etag},
    )

    assert [(c["name"], c["implicit"]) for c in connections] == [("default", True)]
    assert saved.status_code == 200
    document = json.loads(api.document())
    assert list(document) == ["exports"]  # no connections list was added
    assert document["exports"][0]["tags"] == ["ci-vip", "more"]
    assert [e.name for e in function_app.orchestrator().load_exports()] == ["vip"]


# ------------------------------------------------------------------------------------------------ who may do what


def brands_api(make_api, **connection_options) -> Api:
    api = make_api(None)
    document = two_brands(api.source_container, api.eu, api.us)
    document["connections"][0].update(connection_options)
    api.write_document(document)
    api.upload_segment()
    return api


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "exports"),
        ("GET", "exports/{eu}"),
        ("GET", "connections"),
        ("GET", "connections/eu-store"),
        ("GET", "audit"),
    ],
)
@pytest.mark.parametrize("role", [ADMIN, OPERATOR, READER])
def test_every_role_reads_definitions_and_the_audit_log(make_api, method, path, role):
    api = brands_api(make_api)

    assert api.call(method, path.format(eu=api.eu), role=role).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "exports/{eu}/runs", None),
        ("PUT", "exports/{eu}", "export"),
        ("DELETE", "exports/{eu}", None),
        ("PUT", "connections/eu-store", "connection"),
        ("DELETE", "connections/us-store", None),
        ("POST", "forget", {"emails": ["someone@example.com"]}),
    ],
)
def test_a_reader_cannot_change_or_run_anything(make_api, method, path, body):
    api = brands_api(make_api)
    before = api.document()
    bodies = {
        "export": export_body(api.eu, api.source_container, connection="eu-store"),
        "connection": connection_body("eu-store"),
    }

    response = api.call(
        method, path.format(eu=api.eu), role=READER, body=bodies[body] if isinstance(body, str) else body
    )

    assert response.status_code == 403
    assert "Exports." in answer(response)["error"]
    assert api.document() == before and api.plan_messages() == 0


def test_a_signed_in_caller_without_an_app_role_reads_nothing(make_api):
    api = brands_api(make_api)

    response = api.call("GET", "exports", role=())

    assert response.status_code == 403
    assert "Exports.Reader" in answer(response)["error"]


def test_an_operator_runs_an_export_of_a_connection_that_allows_operators(make_api):
    api = brands_api(make_api)

    response = api.call("POST", f"exports/{api.eu}/runs", role=OPERATOR)

    assert response.status_code == 202 and api.plan_messages() == 1


def test_an_operator_cannot_run_an_export_of_an_admins_only_connection(make_api):
    api = brands_api(make_api)

    response = api.call("POST", f"exports/{api.us}/runs", role=OPERATOR)

    assert response.status_code == 403 and "us-store" in answer(response)["error"]
    assert api.plan_messages() == 0


@pytest.mark.parametrize("option", ["allowMassExit", "fullResync"])
def test_an_operator_cannot_force_unless_the_connection_allows_it(make_api, option):
    api = brands_api(make_api)

    response = api.call("POST", f"exports/{api.eu}/runs", role=OPERATOR, body={option: True})

    assert response.status_code == 403 and "operatorsMayForce" in answer(response)["error"]
    assert api.plan_messages() == 0


def test_an_operator_may_force_when_the_connection_allows_it(make_api):
    api = brands_api(make_api, operatorsMayForce=True)

    response = api.call("POST", f"exports/{api.eu}/runs", role=OPERATOR, body={"fullResync": True})

    assert response.status_code == 202


def test_an_operator_saves_an_export_on_an_allowed_connection(make_api):
    api = brands_api(make_api)

    response = api.call(
        "PUT", "exports/new-eu", role=OPERATOR, body=export_body("new-eu", api.source_container, connection="eu-store")
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("name", "connection"),
    [
        ("new-us", "us-store"),  # a new export on an admins-only connection
        ("{us}", "us-store"),  # changing an export of an admins-only connection
        ("{eu}", "us-store"),  # moving an allowed export to an admins-only connection
    ],
)
def test_an_operator_cannot_touch_a_connection_not_allowed_to_it(make_api, name, connection):
    api = brands_api(make_api)
    name = name.format(eu=api.eu, us=api.us)
    before = api.document()
    etag = api.call("GET", f"exports/{name}").headers.get("ETag")

    response = api.call(
        "PUT",
        f"exports/{name}",
        role=OPERATOR,
        headers={"If-Match": etag} if etag else {},
        body=export_body(name, api.source_container, connection=connection),
    )

    assert response.status_code == 403 and "us-store" in answer(response)["error"]
    assert api.document() == before


@pytest.mark.parametrize(("method", "path"), [("PUT", "connections/eu-store"), ("DELETE", "exports/{eu}")])
def test_only_an_admin_changes_connections_and_deletes_exports(make_api, method, path):
    api = brands_api(make_api)
    path = path.format(eu=api.eu)
    etag = api.call("GET", path).headers["ETag"]
    body = connection_body("eu-store", allowedRoles=[OPERATOR], operatorsMayForce=True) if method == "PUT" else None

    response = api.call(method, path, role=OPERATOR, body=body, headers={"If-Match": etag})

    assert response.status_code == 403 and ADMIN in answer(response)["error"]


def test_a_function_key_alone_has_no_role_once_authentication_is_on(make_api):
    api = brands_api(make_api)

    response = api.call("GET", "exports", role=None)

    assert response.status_code == 403 and "ALLOW_FUNCTION_KEY_ADMIN" in answer(response)["error"]


def test_a_function_key_acts_as_admin_when_allowed(make_api):
    api = make_api(None, allow_function_key_admin=True)
    api.write_document(two_brands(api.source_container))

    response = api.call("PUT", "connections/third", role=None, body=connection_body("third"))

    assert response.status_code == 201
    record = answer(api.call("GET", "audit", role=None))["records"][0]
    assert record["who"]["via"] == "function-key"


def test_without_authentication_the_principal_header_is_ignored_and_the_key_is_admin(make_api):
    api = make_api(None, auth_enabled=False)
    api.write_document(two_brands(api.source_container))

    # A caller cannot claim a role with a header of its own making when App Service Authentication is off
    response = api.call("PUT", "connections/third", role=READER, body=connection_body("third"))

    assert response.status_code == 201
    assert answer(api.call("GET", "audit"))["records"][0]["who"] == {
        "name": "function key",
        "via": "function-key",
        "roles": [ADMIN],
    }


# ------------------------------------------------------------------------------------------------ audit


def test_the_audit_log_records_every_change_newest_first(make_api):
    api = brands_api(make_api)
    etag = api.call("GET", f"exports/{api.eu}").headers["ETag"]
    api.call(
        "PUT",
        f"exports/{api.eu}",
        role=OPERATOR,
        headers={"If-Match": etag},
        body=export_body(api.eu, api.source_container, connection="eu-store", tags=["changed"]),
    )
    api.call("PUT", "connections/third", body=connection_body("third"))
    third = api.call("GET", "connections/third").headers["ETag"]
    api.call("DELETE", "connections/third", headers={"If-Match": third})
    api.call("PUT", f"exports/{api.eu}", role=OPERATOR, body=export_body(api.eu, "x"))  # 428: not a change

    records = answer(api.call("GET", "audit", role=READER))["records"]

    assert [(r["action"], r["kind"], r["name"]) for r in records] == [
        ("delete", "connection", "third"),
        ("put", "connection", "third"),
        ("put", "export", api.eu),
    ]
    change = records[2]
    assert change["who"]["name"] == f"{OPERATOR}@example.com" and change["who"]["roles"] == [OPERATOR]
    assert change["before"]["tags"] == ["ci-vip"] and change["after"]["tags"] == ["changed"]
    assert records[1]["before"] is None and records[1]["after"]["apiKeySecret"] == "omnisend-third-key"
    assert records[0]["after"] is None and records[0]["at"]


def test_the_audit_log_pages(make_api):
    api = brands_api(make_api)
    for i in range(5):
        api.call("PUT", f"connections/spare-{i}", body=connection_body(f"spare-{i}"))

    first = answer(api.call("GET", "audit", params={"limit": "2"}))
    second = answer(api.call("GET", "audit", params={"limit": "2", "after": first["next"]}))
    last = answer(api.call("GET", "audit", params={"limit": "2", "after": second["next"]}))

    names_seen = [r["name"] for page in (first, second, last) for r in page["records"]]
    assert names_seen == [f"spare-{i}" for i in (4, 3, 2, 1, 0)]
    assert last["next"] is None


def test_a_bad_audit_limit_is_400(make_api):
    api = brands_api(make_api)

    assert api.call("GET", "audit", params={"limit": "0"}).status_code == 400
    assert api.call("GET", "audit", params={"after": "../x"}).status_code == 400


# ------------------------------------------------------------------------------------------------ two writers at once

# One writer process: the app's own function body, its own orchestrator, the same definitions blob. It signals it is
# ready, waits for the go file so both writers PUT at the same moment, and prints the status and the audit id.
WRITER = """
import json, sys, time
from pathlib import Path
import azure.functions as func
import function_app
from shared.app import build_orchestrator
from shared.management.access import encode_principal
from shared.settings import Settings

connection, exports_config, name, etag, tag, ready, go = sys.argv[1:]
settings = Settings(storage_connection_string=connection, exports_config=exports_config, auth_enabled=True)
function_app._orchestrator = build_orchestrator(settings, queues=object())
body = {"name": name, "source": {"container": "ciexports", "path": "p", "table": "T"},
        "mapping": {"email": "EMail"}, "tags": [tag]}
principal = encode_principal(tag, ["Exports.Admin"])
request = func.HttpRequest("PUT", "http://localhost/api/exports/" + name,
                           headers={"If-Match": etag, "X-MS-CLIENT-PRINCIPAL": principal},
                           params={}, route_params={"name": name}, body=json.dumps(body).encode())
target = function_app.manage_export._function.get_user_function()
Path(ready).touch()
deadline = time.monotonic() + 120
while not Path(go).exists() and time.monotonic() < deadline:
    time.sleep(0.005)
response = target(request)
print(json.dumps({"status": response.status_code, "tag": tag}))
"""


def test_two_concurrent_puts_from_two_processes_one_wins_the_other_gets_412(make_api, tmp_path):
    api = make_api({"exports": [export_body("vip", "ciexports"), export_body("churn", "ciexports")]})
    etag = api.call("GET", "exports/vip").headers["ETag"]
    go = tmp_path / "go"
    writers = []
    for tag in ("writer-a", "writer-b"):
        ready = tmp_path / f"{tag}.ready"
        writers.append(
            (
                ready,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WRITER,
                        api.settings.storage_connection_string,
                        api.settings.exports_config,
                        "vip",
                        etag,
                        tag,
                        str(ready),
                        str(go),
                    ],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 120
    while not all(ready.exists() for ready, _ in writers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()

    results = [json.loads(proc.communicate(timeout=120)[0]) for _, proc in writers]

    assert sorted(r["status"] for r in results) == [200, 412]
    winner = next(r["tag"] for r in results if r["status"] == 200)
    document = json.loads(api.document())
    assert [e["tags"] for e in document["exports"]] == [[winner], ["ci-vip"]]  # the loser changed nothing
    records = answer(api.call("GET", "audit"))["records"]
    assert [(r["name"], r["after"]["tags"]) for r in records] == [("vip", [winner])]


def test_an_operator_cannot_give_the_privacy_acknowledgement(make_api):
    api = brands_api(make_api)

    response = api.call(
        "PUT",
        "exports/new-eu",
        role=OPERATOR,
        body=export_body("new-eu", api.source_container, connection="eu-store", dataTransferAcknowledged=True),
    )

    assert response.status_code == 403 and "dataTransferAcknowledged" in answer(response)["error"]


def test_what_a_get_adds_may_be_sent_back_unchanged(make_api):
    api = brands_api(make_api)
    fetched = api.call("GET", "connections/eu-store")

    response = api.call(
        "PUT",
        "connections/eu-store",
        body={**answer(fetched), "displayName": "EU shop"},
        headers={"If-Match": fetched.headers["ETag"]},
    )

    assert response.status_code == 200
    stored = json.loads(api.document())["connections"][0]
    assert stored["displayName"] == "EU shop" and "etag" not in stored and "implicit" not in stored


def test_a_key_given_twice_in_a_body_is_refused(make_api):
    api = make_api({"exports": [export_body("vip", "ciexports")]})

    response = api.call("PUT", "exports/other", body=b'{"name": "other", "tags": ["a"], "tags": ["b"]}')

    assert response.status_code == 400 and "twice" in answer(response)["error"]
