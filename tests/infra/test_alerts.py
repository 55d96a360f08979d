"""The alert queries in infra/main.bicep read exactly the events shared/events.py emits (issue 11, item 3).

Both sides are parsed: the KQL of every scheduled query rule (which event names it filters on, which fields of the
parsed JSON it reads, which statuses it compares with) and the emitting module's constants; a record the code
really emits is then taken apart the way the KQL does it (substring after "<name> ", parse_json).
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from shared import events
from tests.infra.test_bicep import body, path_of, resolve, resources_of_type, template

EVENT_FIELDS = {
    events.RUN_FINISHED: set(events.RUN_FINISHED_FIELDS),
    events.TIMER_FIRED: set(events.TIMER_FIRED_FIELDS),
}
# A KQL segment that parses one event: where message startswith "<Name> " | extend e = parse_json(substring(message,
# strlen("<Name> "))). The strlen must name the same event, or the JSON would be cut in the wrong place.
FILTER = re.compile(r'message startswith "(\w+) "')
PARSE = re.compile(r'parse_json\(substring\(message, strlen\("(\w+) "\)\)\)')
FIELD = re.compile(r"\be\.(\w+)")
STATUS_LITERAL = re.compile(r'status\)? (?:==|in) \(?("[^)|]*")')


def alert_rules() -> dict[str, dict]:
    return {name: body(res) for name, res in
            resources_of_type(template(), "Microsoft.Insights/scheduledQueryRules").items()}


def query_of(rule: dict) -> str:
    (condition,) = rule["properties"]["criteria"]["allOf"]
    return resolve(condition["query"])


def segments(query: str) -> list[str]:
    """The query's `let` statements and its final expression (each parses at most one event)."""
    return [part.strip() for part in query.split(";") if part.strip()]


def test_there_is_a_run_alert_and_a_staleness_alert():
    assert set(alert_rules()) == {"runNeedsAttentionAlert", "exportStaleAlert"}


@pytest.mark.parametrize("rule", ["runNeedsAttentionAlert", "exportStaleAlert"])
def test_every_query_reads_only_events_the_code_emits_and_only_their_fields(rule):
    named = set()
    for part in segments(query_of(alert_rules()[rule])):
        filtered, parsed, fields = FILTER.findall(part), PARSE.findall(part), set(FIELD.findall(part))
        if not filtered:
            assert not fields and not parsed, part
            continue
        (event,) = set(filtered)
        assert parsed in ([], [event]), part  # substring(message, strlen("<same name> "))
        assert event in EVENT_FIELDS, f"{rule} filters on {event!r}, which shared/events.py does not emit"
        assert fields <= EVENT_FIELDS[event], f"{rule} reads {fields - EVENT_FIELDS[event]} not in {event}"
        named.add(event)
    assert named


def test_run_alert_reads_the_status_and_counts_of_run_finished():
    query = query_of(alert_rules()["runNeedsAttentionAlert"])
    assert set(FILTER.findall(query)) == {events.RUN_FINISHED}
    assert {"export", "runId", "status", "sent", "failed"} <= set(FIELD.findall(query))


def test_statuses_the_queries_compare_with_are_statuses_a_run_can_have():
    for name, rule in alert_rules().items():
        literals = {s.strip().strip('"') for group in STATUS_LITERAL.findall(query_of(rule)) for s in group.split(",")}
        assert literals and literals <= set(events.RUN_STATUSES), name


def test_run_alert_fires_on_failed_held_and_partial_above_the_chosen_share():
    query = query_of(alert_rules()["runNeedsAttentionAlert"])
    assert 'status in ("failed", "held")' in query
    assert 'status == "partial" and failed * 100.0 > ${partialFailedPercent} * (sent + failed)' in query


def test_staleness_alert_uses_the_parameter_and_succeeded_runs_of_enabled_exports():
    query = query_of(alert_rules()["exportStaleAlert"])
    assert query.startswith("let staleAfter = ${staleAfterHours}h;")
    assert set(FILTER.findall(query)) == {events.RUN_FINISHED, events.TIMER_FIRED}
    assert 'tostring(e.status) == "succeeded"' in query and "e.enabledExports" in query


def test_staleness_threshold_fits_inside_the_query_time_range():
    rule = alert_rules()["exportStaleAlert"]["properties"]
    assert rule["overrideQueryTimeRange"] == "P2D"
    maximum = next(d["argument"] for d in template()["parameters"]["staleAfterHours"]["decorators"]
                   if d["type"] == "max_value")
    assert maximum < 48


def test_alerts_watch_application_insights_and_notify_the_action_group():
    for name, rule in alert_rules().items():
        props = rule["properties"]
        assert [path_of(scope) for scope in props["scopes"]] == ["appInsights.id"], name
        assert [path_of(group) for group in props["actions"]["actionGroups"]] == ["alertActionGroup.id"], name
        assert rule["kind"] == "LogAlert" and props["enabled"] is True


def test_action_group_mails_the_optional_address_only_when_given():
    (group,) = resources_of_type(template(), "Microsoft.Insights/actionGroups").values()
    receivers = body(group)["properties"]["emailReceivers"]["operator"]
    assert receivers["type"] == "conditional"
    assert receivers["operands"]["condition"]["function"]["parameters"]["item_to_test"] == "alertEmail"
    assert receivers["operands"]["true_value"] == []
    (mail,) = receivers["operands"]["false_value"]
    assert mail["emailAddress"] == "alertEmail"
    assert template()["parameters"]["alertEmail"]["default"] == ""


# --- the code side: what is really logged -----------------------------------------------------------------------


def kql_parse(message: str, event: str) -> dict:
    """What `where message startswith "<event> " | extend e = parse_json(substring(message, strlen(...)))` sees."""
    prefix = f"{event} "
    assert message.startswith(prefix)
    return json.loads(message[len(prefix):])


def test_an_emitted_run_event_parses_the_way_the_query_reads_it(caplog):
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)
    report = {"export": "vip", "runId": "r-1", "status": "partial", "rows": 10, "sent": 7, "failed": 3,
              "rejected": 0, "duplicates": 0, "unchanged": 0, "leavers": 0, "untagged": 0, "requests": 2,
              "durationSeconds": 1.5, "message": "", "snapshot": "not in the event"}
    events.run_finished(report)
    (record,) = [r for r in caplog.records if r.name == events.LOGGER_NAME]
    e = kql_parse(record.getMessage(), events.RUN_FINISHED)
    assert set(e) == set(events.RUN_FINISHED_FIELDS)
    query_fields = set(FIELD.findall(query_of(alert_rules()["runNeedsAttentionAlert"])))
    assert {field: e[field] for field in query_fields} == {field: report[field] for field in query_fields}


def test_an_emitted_timer_event_parses_the_way_the_query_reads_it(caplog):
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)
    events.timer_fired(["vip", "all-buyers"], [{"export": "vip", "runId": "r-2"}])
    (record,) = [r for r in caplog.records if r.name == events.LOGGER_NAME]
    e = kql_parse(record.getMessage(), events.TIMER_FIRED)
    assert e["enabledExports"] == ["all-buyers", "vip"] and e["started"] == ["r-2"]
