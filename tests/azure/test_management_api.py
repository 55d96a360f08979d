"""The management API through function_app.py's own function bodies, on Azurite: connections and exports read,
saved and deleted over HTTP, validation of the whole document, ETag/If-Match, an old single-brand file, two
writers at once. Who may do what: test_management_roles.py; the audit log: test_management_audit.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import function_app
from shared import names
from shared.management.access import ADMIN, OPERATOR, READER
from tests.azure import management_support
from tests.azure.management_support import (
    KEY,
    REPO,
    ROUTES,
    answer,
    brands_api,
    connection_body,
    export_body,
    two_brands,
)

pytestmark = pytest.mark.azurite
make_api = management_support.make_api  # the fixture, registered for this module


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
