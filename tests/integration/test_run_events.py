"""Every finished run emits one RunFinished event (what the alerts in infra/main.bicep read), carrying the report's
export, run id, status, counts and duration, and no contact."""

from __future__ import annotations

import logging

import pytest

from shared import events
from shared.errors import AuthRejected
from tests.integration.exporting import export, make_context, write_segment
from tests.integration.test_incremental import exported_then_new_snapshot


@pytest.fixture
def emitted(caplog):
    caplog.set_level(logging.INFO, logger=events.LOGGER_NAME)

    def parsed(name: str = events.RUN_FINISHED) -> list[dict]:
        found = [events.parse_event(r.getMessage()) for r in caplog.records if r.name == events.LOGGER_NAME]
        return [fields for event, fields in found if event == name]

    return parsed


def test_a_succeeded_run_emits_one_event_with_its_report_numbers(tmp_path, sim, emitted):
    write_segment(tmp_path, 250)
    report = export(make_context(tmp_path, sim.base_url))
    (event,) = emitted()
    assert report["status"] == "succeeded"
    assert event == {field: report[field] for field in events.RUN_FINISHED_FIELDS}


def test_a_held_run_emits_held_with_its_leavers(tmp_path, sim, emitted):
    ctx, _ = exported_then_new_snapshot(tmp_path, sim, 400, drop_fraction=0.5)
    report = export(ctx)
    first, second = emitted()
    assert first["status"] == "succeeded"
    assert second["status"] == "held" and second["runId"] == report["runId"]
    assert second["leavers"] == report["leavers"] > 0 and "--allow-mass-exit" in second["message"]


def test_a_run_stopped_by_a_refused_key_emits_failed(tmp_path, sim, emitted):
    write_segment(tmp_path, 50)
    with pytest.raises(AuthRejected):
        export(make_context(tmp_path, sim.base_url, key="not-the-key"))
    (event,) = emitted()
    assert event["status"] == "failed" and event["export"] == "vip" and event["runId"]
    assert "refused the API key" in event["message"]


def test_an_already_exported_snapshot_emits_nothing_more(tmp_path, sim, emitted):
    write_segment(tmp_path, 50)
    ctx = make_context(tmp_path, sim.base_url)
    export(ctx)
    export(ctx)
    assert len(emitted()) == 1


def test_events_carry_no_email_address(tmp_path, sim, caplog, emitted):
    write_segment(tmp_path, 250)  # messy rows: rejected and duplicate emails in the snapshot
    export(make_context(tmp_path, sim.base_url))
    assert emitted()
    assert not [r for r in caplog.records if r.name == events.LOGGER_NAME and "@" in r.getMessage()]
