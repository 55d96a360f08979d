"""Erasure on request: after forget, nothing in the exporter's storage names the person."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
import pytest

import function_app
from shared import names
from shared.forget import RunsInFlight, forget
from shared.orchestrator import Orchestrator
from shared.pipeline import RunOptions, plan, start_run
from shared.state import decode_state, load_state
from tests.integration.exporting import (
    export,
    load_export,
    make_context,
    rejected_rows,
    segment_emails,
    write_segment,
)

SOURCE = "ciexports"  # Customer Insights' own container in the test root: not ours to erase


def traces(root: Path, email: str) -> list[str]:
    """Every file of the exporter's storage (state decoded) that still holds ``email``, in any case."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.relative_to(root).parts[0] == SOURCE:
            continue
        data = path.read_bytes()
        if path.name == "members.bin":
            text = "\n".join(decode_state(data, str(path)).emails)
        else:
            text = data.decode("utf-8", errors="replace")
        if email.lower() in text.lower():
            found.append(str(path.relative_to(root)))
    return found


@pytest.fixture
def exported_with_failures(tmp_path, sim):
    """Two exports of the same segment, one person refused by Omnisend (400), one failing once (503: re-submitted,
    so a sent marker names them), and the dirty sample rows (rejected, duplicates)."""
    write_segment(tmp_path, 300)
    emails = segment_emails(tmp_path)
    refused, flaky = emails[10], emails[20]
    sim.configure(item_fail={refused: 400, flaky: 503})
    ctx = make_context(tmp_path, sim.base_url)
    report = export(ctx)
    sim.configure(item_fail={})
    export(ctx, load_export(name="vip-two"))
    duplicate = next(r["email"] for r in rejected_rows(ctx, report) if r["bucket"] == "duplicate")
    return ctx, tmp_path, {"refused": refused, "flaky": flaky, "duplicate": duplicate, "kept": emails[30]}


def test_after_forget_no_trace_of_the_people_remains_in_state_or_run_files(exported_with_failures):
    ctx, root, people = exported_with_failures
    gone = [people["refused"], people["flaky"], people["duplicate"]]
    assert all(traces(root, e) for e in gone)  # the test would catch a trace
    forget(ctx.state_store, gone)
    assert {e: traces(root, e) for e in gone} == {e: [] for e in gone}


def test_forget_keeps_everybody_else(exported_with_failures):
    ctx, root, people = exported_with_failures
    before = {export: len(load_state(ctx.state_store, export)) for export in ("vip", "vip-two")}
    forget(ctx.state_store, [people["duplicate"]])
    after = {export: len(load_state(ctx.state_store, export)) for export in ("vip", "vip-two")}
    assert after == {export: n - 1 for export, n in before.items()}
    assert traces(root, people["kept"])


def test_emails_are_matched_as_the_planner_normalises_them(exported_with_failures):
    ctx, root, people = exported_with_failures
    forget(ctx.state_store, [f"  {people['duplicate'].upper()} "])
    assert traces(root, people["duplicate"]) == []


def test_forget_reports_counts_per_place_with_emails_masked(exported_with_failures):
    ctx, _, people = exported_with_failures
    result = forget(ctx.state_store, [people["refused"], "nobody@example.com"])
    assert people["refused"] not in json.dumps(result)
    assert result["emails"] == sorted(["n***@example.com", people["refused"][0] + "***@" +
                                       people["refused"].split("@")[1]])
    assert result["found"] == 1
    places = result["removed"]
    assert any(p.endswith("/rejected.csv") for p in places)
    assert any("/results/" in p for p in places)
    assert "in Omnisend" in result["notInOmnisend"]


def test_forget_refuses_while_a_run_is_under_way_and_changes_nothing(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    person = segment_emails(tmp_path)[10]
    run = start_run(ctx, load_export(), RunOptions())
    plan(ctx, load_export(), run.run_id)
    with pytest.raises(RunsInFlight, match=run.run_id):
        forget(ctx.state_store, [person])
    assert traces(tmp_path, person)  # its batch file still holds them: the run needs it


def _forget_function():
    function_app.app.functions_bindings = {}  # get_functions() refuses to index the same app twice otherwise
    return next(f for f in function_app.app.get_functions() if f.get_function_name() == "forget_people")


def _forget_over_http(body: bytes) -> func.HttpResponse:
    fn = _forget_function()
    request = func.HttpRequest("POST", "http://localhost/api/forget", headers={}, params={}, route_params={},
                               body=body)
    return fn.get_user_function()(request)


def test_post_api_forget_needs_an_admin_key_and_erases_the_person(exported_with_failures):
    ctx, root, people = exported_with_failures
    fn = _forget_function()
    trigger = next(b for b in json.loads(str(fn))["bindings"] if b["type"] == "httpTrigger")
    assert trigger["authLevel"] == "ADMIN" and trigger["route"] == "forget"
    function_app._orchestrator = Orchestrator(ctx, queues=None, load_exports=lambda: [load_export()])
    try:
        assert _forget_over_http(b'{"emails": "x@example.com"}').status_code == 400
        response = _forget_over_http(json.dumps({"emails": [people["duplicate"]]}).encode())
    finally:
        function_app._orchestrator = None
    assert response.status_code == 200
    assert traces(root, people["duplicate"]) == []
    assert names.STATE_CONTAINER in json.loads(response.get_body())["removed"].__repr__()


def test_post_api_forget_answers_409_while_a_run_is_under_way(tmp_path, sim):
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    run = start_run(ctx, load_export(), RunOptions())
    function_app._orchestrator = Orchestrator(ctx, queues=None, load_exports=lambda: [load_export()])
    try:
        response = _forget_over_http(json.dumps({"emails": [segment_emails(tmp_path, 1)[0]]}).encode())
    finally:
        function_app._orchestrator = None
    assert response.status_code == 409 and run.run_id in json.loads(response.get_body())["error"]
