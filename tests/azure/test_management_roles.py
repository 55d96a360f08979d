"""Who may do what in the management API: the caller's roles arrive as App Service Authentication would send them
(X-MS-CLIENT-PRINCIPAL, built by shared.management.access.encode_principal); what Entra ID itself does (tokens, app
roles) is not here."""

from __future__ import annotations

import pytest

from shared.management.access import ADMIN, OPERATOR, READER
from tests.azure import management_support
from tests.azure.management_support import (
    answer,
    brands_api,
    connection_body,
    export_body,
    two_brands,
)

pytestmark = pytest.mark.azurite
make_api = management_support.make_api  # the fixture, registered for this module


# ------------------------------------------------------------------------------------------------ who may do what


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
