"""Connections in the definitions file: what a valid file yields, and what an invalid one says (every problem)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.exports import (
    IMPLICIT_DEFAULT,
    Connection,
    Definitions,
    ExportNotRunnable,
    ensure_runnable,
    load_definitions,
    load_definitions_file,
    load_exports,
    load_exports_file,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "connections"


def fixture(name: str) -> Path:
    return FIXTURES / name


def problems_of(name: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_definitions_file(fixture(name))
    assert caught.value.source == str(fixture(name))
    return caught.value.problems


def document(connections: list[dict], exports: list[dict] | None = None) -> str:
    exports = exports or [
        {
            "name": "vip",
            "connection": "eu-store",
            "source": {"container": "ciexports", "file": "vip.csv"},
            "mapping": {"email": "Email"},
        }
    ]
    return json.dumps({"connections": connections, "exports": exports})


def eu_store(**overrides: object) -> dict:
    connection = {"name": "eu-store", "displayName": "EU store", "apiKeySecret": "omnisend-eu-key"}
    connection.update(overrides)
    return connection


def problems_in(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_definitions(text, "inline")
    return caught.value.problems


# --- valid files -----------------------------------------------------------------------------------------------


def test_connections_are_read_in_file_order_with_every_field():
    definitions = load_definitions_file(fixture("two_brands.json"))
    assert list(definitions.connections) == ["eu-store", "us-store"]
    assert definitions.connections["eu-store"] == Connection(
        name="eu-store",
        display_name="EU store",
        api_version="2026-03-15",
        api_key_secret="omnisend-eu-key",
        api_key_env="OMNISEND_API_KEY_EU",
        requests_per_minute=300,
        data_transfer_acknowledged=True,
        allowed_roles=("Exports.Operator",),
        operators_may_force=True,
        implicit=False,
    )


def test_omitted_connection_fields_take_the_documented_defaults():
    us = load_definitions_file(fixture("two_brands.json")).connections["us-store"]
    assert us == Connection(name="us-store", display_name="US store", api_key_env="OMNISEND_API_KEY_US")
    assert (us.api_version, us.api_key_secret, us.requests_per_minute) == (None, None, None)
    assert (us.data_transfer_acknowledged, us.allowed_roles, us.operators_may_force, us.implicit) == (
        False,
        (),
        False,
        False,
    )


def test_each_export_carries_the_connection_it_names():
    definitions = load_definitions_file(fixture("two_brands.json"))
    assert [(e.name, e.connection) for e in definitions.exports] == [("vip-eu", "eu-store"), ("vip-us", "us-store")]
    assert definitions.connection_of(definitions.exports[1]).display_name == "US store"


def test_load_exports_returns_the_same_exports_as_load_definitions():
    text = fixture("two_brands.json").read_text()
    assert load_exports(text, "inline") == load_definitions(text, "inline").exports


def test_a_file_without_connections_has_the_implicit_default_connection():
    definitions = load_definitions_file(REPO / "tests" / "fixtures" / "exports" / "valid_two_exports.json")
    assert definitions == Definitions(connections={"default": IMPLICIT_DEFAULT}, exports=definitions.exports)
    assert IMPLICIT_DEFAULT.implicit is True
    assert IMPLICIT_DEFAULT.data_transfer_acknowledged is False
    assert {e.connection for e in definitions.exports} == {"default"}


def test_an_old_file_loads_unchanged_apart_from_the_default_connection():
    exports = load_exports_file(REPO / "tests" / "fixtures" / "exports" / "valid_two_exports.json")
    vip = exports[0]
    assert vip.connection == "default"
    assert vip.data_transfer_acknowledged is True
    assert vip.transfer_acknowledged is True
    ensure_runnable(vip)  # acknowledged per export, as before connections


def test_an_export_may_name_the_implicit_default_connection():
    definitions = load_definitions(
        json.dumps(
            {
                "exports": [
                    {
                        "name": "vip",
                        "connection": "default",
                        "mapping": {"email": "E"},
                        "source": {"container": "ciexports", "file": "vip.csv"},
                    }
                ]
            }
        ),
        "inline",
    )
    assert definitions.exports[0].connection == "default"


def test_an_export_without_connection_uses_a_connection_named_default():
    definitions = load_definitions_file(fixture("explicit_default.json"))
    assert [e.connection for e in definitions.exports] == ["default", "outlet"]
    assert definitions.connections["default"].implicit is False


def test_a_connection_acknowledgement_lets_its_exports_run():
    vip_eu = load_definitions_file(fixture("two_brands.json")).exports[0]
    assert vip_eu.data_transfer_acknowledged is False
    assert vip_eu.transfer_acknowledged is True
    ensure_runnable(vip_eu)


def test_an_export_level_acknowledgement_still_counts_on_an_unacknowledged_connection():
    vip_us = load_definitions_file(fixture("two_brands.json")).exports[1]
    assert vip_us.resolved_connection.data_transfer_acknowledged is False
    ensure_runnable(vip_us)


def test_an_export_acknowledged_nowhere_cannot_run_and_is_told_where_to_acknowledge():
    outlet_vip = load_definitions_file(fixture("explicit_default.json")).exports[1]
    with pytest.raises(ExportNotRunnable) as caught:
        ensure_runnable(outlet_vip)
    assert '"dataTransferAcknowledged": true on its connection (or on the export)' in str(caught.value)


def test_find_connection_suggests_the_closest_name():
    definitions = load_definitions_file(fixture("two_brands.json"))
    assert definitions.find_connection("us-store").name == "us-store"
    with pytest.raises(ConfigError) as caught:
        definitions.find_connection("eu-stor")
    assert caught.value.problems == [
        'no connection named "eu-stor" (did you mean "eu-store"?); known connections: eu-store, us-store'
    ]


def test_requests_per_minute_accepts_the_bounds():
    for rpm in (1, 400):
        definitions = load_definitions(document([eu_store(requestsPerMinute=rpm)]), "inline")
        assert definitions.connections["eu-store"].requests_per_minute == rpm


def test_both_api_versions_are_accepted():
    for version in ("v3", "2026-03-15"):
        definitions = load_definitions(document([eu_store(apiVersion=version)]), "inline")
        assert definitions.connections["eu-store"].api_version == version


def test_the_plain_omnisend_api_key_variable_may_be_named():
    definitions = load_definitions(document([eu_store(apiKeyEnv="OMNISEND_API_KEY")]), "inline")
    assert definitions.connections["eu-store"].api_key_env == "OMNISEND_API_KEY"


# --- invalid connections: every problem at once, with where ------------------------------------------------------


def test_every_connection_problem_is_reported_at_once_with_where():
    assert problems_of("bad_connections.json") == [
        'connections[0].name: "EU Store" is not allowed: use 1-63 lower-case letters, digits and hyphens, starting '
        "with a letter or digit (the name is used in blob paths and URLs)",
        "connections[0].displayName: expected a non-empty string, got an empty string",
        'connections[0].apiVersion: "v4" is not allowed (use one of: 2026-03-15, v3)',
        "connections[0].apiKeySecret: not a Key Vault secret name: use 1-127 letters, digits and hyphens (the name "
        "of the secret holding the key, never the key itself)",
        "connections[0].requestsPerMinute: expected a whole number from 1 to 400 (this app's share of the brand's "
        "400 requests a minute), got 401",
        'connections[0].dataTransferAcknowledged: expected true or false, got "yes"',
        'connections[0].allowedRoles[0]: "Exports.Operater" is not allowed; did you mean "Exports.Operator"? '
        "(use one of: Exports.Operator)",
        'connections[0].allowedRoles[1]: "Exports.Admin" may always use every connection: list only the other '
        "roles (use one of: Exports.Operator)",
        "connections[0].allowedRoles[2]: expected a string, got a number",
        "connections[0].operatorsMayForce: expected true or false, got 1",
        'connections[1].displayname: unknown field; did you mean "displayName"? (use one of: name, displayName, '
        "apiVersion, apiKeySecret, apiKeyEnv, requestsPerMinute, dataTransferAcknowledged, allowedRoles, "
        "operatorsMayForce)",
        'connections[1].apiKeyEnv: "AzureWebJobsStorage" is not allowed: name an environment variable '
        "OMNISEND_API_KEY or OMNISEND_API_KEY_<SUFFIX> (upper-case letters, digits and _), which holds the key",
        "connections[1].requestsPerMinute: expected a whole number from 1 to 400 (this app's share of the brand's "
        "400 requests a minute), got 0",
        'connections[1].allowedRoles[1]: "Exports.Operator" is listed twice',
        'connections[2].name: "us-store" is already used by connections[1]; names must be unique',
        'connections[3]: give "apiKeySecret" (the Key Vault secret holding the brand\'s key) or "apiKeyEnv" (the '
        "environment variable holding it locally), or both",
        'connections[4]: "name" is required',
        "connections[4].requestsPerMinute: expected a whole number from 1 to 400 (this app's share of the brand's "
        "400 requests a minute), got true",
    ]


def test_a_key_pasted_into_the_definitions_is_refused_without_repeating_it():
    problems = problems_of("key_in_definitions.json")
    assert problems == [
        "connections[0].apiKey: the key itself never goes in the definitions (whoever can read them would see it): "
        'store it in Key Vault and give the secret name in "apiKeySecret", or locally the name of an environment '
        'variable in "apiKeyEnv"'
    ]
    assert "pasted-key-value" not in " ".join(problems)


def test_a_display_name_over_100_characters_is_an_error():
    assert problems_in(document([eu_store(displayName="x" * 101)])) == [
        "connections[0].displayName: 101 characters; use at most 100"
    ]


def test_api_key_env_may_not_name_another_setting():
    assert problems_in(document([eu_store(apiKeyEnv="OMNISEND_API_KEY_SECRET_NAME")])) == [
        "connections[0].apiKeyEnv: OMNISEND_API_KEY_SECRET_NAME is a setting of its own, not a key: name the variable "
        "holding the key"
    ]


def test_two_connections_on_one_key_are_an_error_since_budgets_are_per_connection():
    text = document([eu_store(), eu_store(name="eu-outlet", displayName="EU outlet")])
    assert problems_in(text) == [
        'connections[1].apiKeySecret: "omnisend-eu-key" is also used by connections[0]: one brand, one connection '
        "(each connection has its own request budget, so two on one key could together exceed the brand's 400 "
        "requests a minute)"
    ]


def test_allowed_roles_must_be_a_list():
    assert problems_in(document([eu_store(allowedRoles="Exports.Operator")])) == [
        "connections[0].allowedRoles: expected a list of role names, got a string"
    ]


def test_connections_must_be_a_list_and_exports_are_not_checked_against_it():
    assert problems_of("connections_not_a_list.json") == ["connections: expected a list of connections, got an object"]


def test_an_empty_connections_list_is_an_error_saying_how_to_use_the_settings_key():
    assert problems_of("connections_empty.json") == [
        'connections: the list is empty; define at least one connection, or remove "connections" to use the key '
        'from the app settings (the implicit "default" connection)',
        'exports[0]: "connection" is required: "connections" has none named "default" (connections: none)',
    ]


# --- exports and their connection --------------------------------------------------------------------------------


def test_unknown_or_missing_connection_of_an_export_is_reported_with_the_closest_name():
    assert problems_of("unknown_connection.json") == [
        'exports[0].connection: no connection named "eu-stroe"; did you mean "eu-store"? '
        "(connections: eu-store, us-store)",
        'exports[1]: "connection" is required: "connections" has none named "default" '
        "(connections: eu-store, us-store)",
        "exports[2].connection: expected a non-empty string, got an empty string",
    ]


def test_naming_a_connection_in_a_file_without_connections_says_how_to_define_it():
    assert problems_of("connection_without_connections.json") == [
        'exports[0].connection: no connection named "eu-store"; this file has no "connections", so the only one is '
        'the implicit "default" (add a "connections" list to define more)'
    ]


def test_an_export_naming_an_invalid_connection_reports_only_the_connection_problem():
    problems = problems_in(document([eu_store(requestsPerMinute=0)]))
    assert [p.split(":")[0] for p in problems] == ["connections[0].requestsPerMinute"]


def test_connection_and_export_problems_are_reported_together():
    text = document(
        [eu_store(apiVersion="v2")],
        [
            {
                "name": "vip",
                "connection": "eu-store",
                "source": {"container": "ciexports", "file": "vip.csv"},
                "mapping": {},
            }
        ],
    )
    assert [p.split(":")[0] for p in problems_in(text)] == ["connections[0].apiVersion", "exports[0].mapping"]
