"""Export definitions: what a valid file yields, and what an invalid one says (every problem, with where)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import ConfigError, FailRun
from shared.exports import (
    ConsentMapping,
    ExportDefinition,
    ExportNotRunnable,
    Source,
    ensure_runnable,
    find_export,
    load_exports,
    load_exports_file,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "exports"


def fixture(name: str) -> Path:
    return FIXTURES / name


def problems_of(name: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_exports_file(fixture(name))
    assert caught.value.source == str(fixture(name))
    return caught.value.problems


def one_export(**overrides: object) -> str:
    export = {
        "name": "vip",
        "source": {"container": "ciexports", "path": "CI/Feed", "table": "Vip"},
        "mapping": {"email": "EMail"},
    }
    export.update(overrides)
    return json.dumps({"exports": [export]})


# --- valid files -----------------------------------------------------------------------------------------------


def test_valid_file_yields_every_export_in_order():
    exports = load_exports_file(fixture("valid_two_exports.json"))
    assert [e.name for e in exports] == ["vip", "lapsed-buyers"]


def test_valid_export_carries_source_mapping_tags_and_policies():
    vip = load_exports_file(fixture("valid_two_exports.json"))[0]
    assert vip == ExportDefinition(
        name="vip",
        source=Source(container="ciexports", path="CustomerInsights_0000/OmnisendFeed", table="VipCustomers"),
        mapping={
            "email": "EMail",
            "firstName": "FirstName",
            "lastName": "LastName",
            "address": "StreetAddress",
            "city": "City",
            "state": "State",
            "postalCode": "PostCode",
            "country": "Country",
        },
        tags=("ci-vip",),
        on_exit="untag",
        data_transfer_acknowledged=True,
        enabled=True,
    )


def test_custom_properties_are_kept_apart_from_the_field_mapping():
    lapsed = load_exports_file(fixture("valid_two_exports.json"))[1]
    assert lapsed.mapping == {
        "email": "Email",
        "phone": "Mobile",
        "countryCode": "CountryIso",
        "birthdate": "DateOfBirth",
        "gender": "Gender",
    }
    assert lapsed.custom_properties == {"ci_customer_id": "CustomerId", "lifetime_value": "LifetimeValue"}


def test_explicit_policies_override_the_defaults():
    lapsed = load_exports_file(fixture("valid_two_exports.json"))[1]
    assert (lapsed.source, lapsed.on_exit, lapsed.enabled) == (
        Source(container="ciexports", file="flat/lapsed.csv"),
        "ignore",
        False,
    )
    assert lapsed.new_contact_status == "subscribed"
    assert lapsed.send_welcome_message is True
    assert lapsed.max_exit_fraction == 0.5


def test_omitted_keys_take_the_documented_defaults():
    (minimal,) = load_exports_file(fixture("minimal_defaults.json"))
    assert minimal == ExportDefinition(
        name="minimal",
        source=Source(container="ciexports", prefix="exports/minimal_"),
        mapping={"email": "Email"},
        custom_properties={},
        tags=(),
        on_exit="untag",
        data_transfer_acknowledged=False,
        enabled=True,
        new_contact_status="nonSubscribed",
        send_welcome_message=False,
        max_exit_fraction=0.2,
        consent=None,
    )


def test_consent_values_are_stored_trimmed_and_case_folded():
    (newsletter,) = load_exports_file(fixture("consent_mapping.json"))
    assert newsletter.consent == ConsentMapping(
        column="EmailOptIn",
        timestamp_column="OptInChangedOn",
        values={"subscribed": ("yes", "1", "true"), "unsubscribed": ("no", "0", "false")},
    )


def test_a_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "exports.json"
    path.write_bytes(b"\xef\xbb\xbf" + fixture("minimal_defaults.json").read_bytes())
    assert [e.name for e in load_exports_file(path)] == ["minimal"]


# --- invalid files: one ConfigError listing every problem --------------------------------------------------------


def test_json_syntax_error_names_source_line_and_column():
    with pytest.raises(ConfigError) as caught:
        load_exports(fixture("syntax_error.json").read_text(), source="blob://config/exports.json")
    assert caught.value.source == "blob://config/exports.json"
    assert caught.value.problems == [
        "line 6, column 36: not valid JSON (Expecting property name enclosed in double quotes)"
    ]
    assert "blob://config/exports.json" in str(caught.value)


def test_missing_file_names_the_path_and_the_settings_that_choose_it(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError) as caught:
        load_exports_file(missing)
    (problem,) = caught.value.problems
    assert str(missing) in problem
    assert "not found" in problem
    assert "EXPORTS_CONFIG" in problem and "--config" in problem


def test_config_errors_fail_the_run_with_exit_code_2():
    with pytest.raises(FailRun) as caught:
        load_exports_file(fixture("missing_email_mapping.json"))
    assert caught.value.exit_code == 2


def test_unknown_keys_are_errors_at_every_level_with_the_closest_valid_name():
    problems = problems_of("unknown_keys.json")
    assert problems[0] == "version: unknown key (use one of: connections, exports)"
    assert problems[1].startswith('exports[0].tag: unknown field; did you mean "tags"? (use one of: name, source,')
    assert problems[2] == (
        'exports[0].source.tabel: unknown field; did you mean "table"? '
        "(use one of: container, path, table, file, prefix)"
    )
    assert problems[3].startswith('exports[0].mapping.fristName: unknown field; did you mean "firstName"? (use one of:')
    assert len(problems) == 4


def test_mapping_without_email_is_an_error():
    assert problems_of("missing_email_mapping.json") == [
        'exports[0].mapping: "email" is required: the column holding the email address'
    ]


def test_duplicate_names_point_at_the_first_use():
    assert problems_of("duplicate_names.json") == [
        'exports[2].name: "vip" is already used by exports[0]; names must be unique'
    ]


def test_names_must_be_safe_for_paths_and_urls_and_present():
    problems = problems_of("bad_names.json")
    assert problems[0].startswith('exports[0].name: "VIP Customers" is not allowed: use 1-63 lower-case letters')
    assert problems[1].startswith('exports[1].name: "-leading-hyphen" is not allowed')
    assert problems[2] == 'exports[2]: "name" is required'


def test_tags_must_be_unique_strings_of_the_allowed_characters():
    assert problems_of("bad_tags.json") == [
        'exports[0].tags[1]: "source:shopify": tags use only letters, digits, _, - and spaces (1-128 characters)',
        'exports[0].tags[2]: "": tags use only letters, digits, _, - and spaces (1-128 characters)',
        "exports[0].tags[3]: expected a string, got a number",
        'exports[0].tags[4]: "ok tag" is listed twice',
        'exports[0].tags[5]: "' + "x" * 129 + '": tags use only letters, digits, _, - and spaces (1-128 characters)',
    ]


def test_more_than_100_tags_is_an_error():
    assert problems_of("too_many_tags.json") == ["exports[0].tags: 101 tags; Omnisend allows at most 100"]


def test_source_needs_exactly_one_of_table_file_prefix_and_a_path_only_with_table():
    problems = problems_of("source_problems.json")
    assert problems[0].startswith("exports[0].source: give exactly one of table")
    assert problems[0].endswith("got table, file")
    assert problems[1].endswith("got none")
    assert problems[2] == 'exports[2].source: "path" is required with "table": the folder holding model.json'
    assert problems[3] == 'exports[3].source.path: only used with "table"; put the full blob name in "file"'
    assert problems[4].startswith('exports[4].source.container: "CI_Exports" is not a valid blob container name')
    assert problems[5] == 'exports[5]: "source" is required'


def test_policy_values_are_type_checked_and_suggest_the_closest_choice():
    assert problems_of("bad_policies.json") == [
        "exports[0].mapping.customProperties.lifetime-value: Omnisend property names use only latin letters, "
        "digits and _ (1-128 characters)",
        "exports[0].mapping.customProperties.tier: expected a non-empty string, got an empty string",
        'exports[0].onExit: "delete" is not allowed (use one of: untag, ignore)',
        'exports[0].dataTransferAcknowledged: expected true or false, got "yes"',
        "exports[0].enabled: expected true or false, got 1",
        'exports[0].newContactStatus: "subscribe" is not allowed; did you mean "subscribed"? '
        "(use one of: subscribed, unsubscribed, nonSubscribed)",
        "exports[0].sendWelcomeMessage: expected true or false, got null",
        "exports[0].maxExitFraction: expected a number from 0 to 1 (the largest share of the previous segment "
        "that may leave in one run), got 1.5",
    ]


def test_consent_value_under_two_statuses_and_unknown_status_are_errors():
    assert problems_of("consent_conflict.json") == [
        "exports[0].consent.values.optedOut: unknown status (use one of: subscribed, unsubscribed, nonSubscribed)",
        'exports[0].consent.values.unsubscribed[1]: "YES " is also listed under subscribed; a value can mean only '
        "one status (values are compared ignoring case and surrounding spaces)",
    ]


def test_consent_must_list_values_for_at_least_one_status():
    assert problems_of("consent_no_values.json") == [
        "exports[0].consent.values: list the cell values for at least one status "
        "(subscribed, unsubscribed, nonSubscribed)"
    ]


def test_a_key_given_twice_is_an_error_not_silently_the_last():
    assert problems_of("duplicate_keys.json") == [
        "exports[0].tags: given more than once; JSON keeps only the last, so remove the others"
    ]


def test_top_level_must_be_an_object_with_exports():
    assert problems_of("not_an_object.json") == ["(top level): expected an object, got a list"]


def test_an_empty_exports_list_is_an_error():
    with pytest.raises(ConfigError) as caught:
        load_exports('{"exports": []}', source="inline")
    assert caught.value.problems == ["exports: the list is empty; define at least one export"]


def test_max_exit_fraction_accepts_the_bounds():
    assert load_exports(one_export(maxExitFraction=0), "inline")[0].max_exit_fraction == 0.0
    assert load_exports(one_export(maxExitFraction=1), "inline")[0].max_exit_fraction == 1.0


def test_problems_of_several_exports_are_reported_together():
    text = json.dumps(
        {
            "exports": [
                {"name": "a", "source": {"container": "ciexports", "file": "a.csv"}, "mapping": {}},
                {"name": "b", "source": {"container": "ciexports", "file": "b.csv"}, "mapping": {"email": "E"}, "x": 1},
            ]
        }
    )
    with pytest.raises(ConfigError) as caught:
        load_exports(text, "inline")
    assert [p.split(":")[0] for p in caught.value.problems] == ["exports[0].mapping", "exports[1].x"]


# --- find_export / ensure_runnable --------------------------------------------------------------------------------


def test_find_export_returns_the_named_export():
    exports = load_exports_file(fixture("valid_two_exports.json"))
    assert find_export(exports, "lapsed-buyers").name == "lapsed-buyers"


def test_find_export_unknown_name_lists_known_names_and_suggests_one():
    exports = load_exports_file(fixture("valid_two_exports.json"))
    with pytest.raises(ConfigError) as caught:
        find_export(exports, "vpi")
    assert caught.value.problems == ['no export named "vpi" (did you mean "vip"?); known exports: vip, lapsed-buyers']


def test_runnable_export_passes():
    vip = load_exports_file(fixture("valid_two_exports.json"))[0]
    ensure_runnable(vip)


def test_unacknowledged_data_transfer_stops_the_run_and_says_how_to_acknowledge():
    (minimal,) = load_exports_file(fixture("minimal_defaults.json"))
    with pytest.raises(ExportNotRunnable) as caught:
        ensure_runnable(minimal)
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert 'export "minimal" cannot run' in message
    assert "Customer Insights boundary" in message
    assert '"dataTransferAcknowledged": true' in message


def test_disabled_export_stops_the_run_and_says_how_to_enable():
    lapsed = load_exports_file(fixture("valid_two_exports.json"))[1]
    with pytest.raises(ExportNotRunnable) as caught:
        ensure_runnable(lapsed)
    assert caught.value.reasons == ['it is disabled; set "enabled": true to run it']


def test_source_names_that_leave_their_folder_are_refused_with_the_field():
    problems = problems_of("source_paths_escaping.json")
    assert [p.split(":", 1)[0] for p in problems] == [
        "exports[0].source.path", "exports[1].source.file", "exports[2].source.prefix", "exports[3].source.file",
        "exports[4].source.file", "exports[5].source.table",
    ]
    assert "'..' segment" in problems[0] and "'..' segment" in problems[1] and "'..' segment" in problems[2]
    assert "empty segment" in problems[3] and "control character" in problems[4]


def test_deeply_nested_json_is_a_configuration_error_not_a_crash():
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_exports('{"exports": ' + "[" * 100_000 + "]" * 100_000 + "}", source="test")

def test_max_rejected_fraction_defaults_to_half():
    assert load_exports(one_export(), "inline")[0].max_rejected_fraction == 0.5


def test_max_rejected_fraction_accepts_the_bounds():
    assert load_exports(one_export(maxRejectedFraction=0), "inline")[0].max_rejected_fraction == 0.0
    assert load_exports(one_export(maxRejectedFraction=1), "inline")[0].max_rejected_fraction == 1.0


def test_max_rejected_fraction_outside_0_to_1_is_an_error_saying_what_it_means():
    with pytest.raises(ConfigError) as caught:
        load_exports(one_export(maxRejectedFraction="50%"), "inline")
    assert caught.value.problems == [
        "exports[0].maxRejectedFraction: expected a number from 0 to 1 (the largest share of a snapshot's rows that "
        'may be rejected before the run sends nothing and fails), got "50%"'
    ]
