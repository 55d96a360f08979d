"""What HTTP callers may send: route values and the start body, checked before storage or the pipeline."""

from __future__ import annotations

import pytest

from shared.http_input import BadRequest, check_export_name, check_run_id, excerpt, start_options
from shared.runs import derive_run_id


@pytest.mark.parametrize("further", [0, 1, 12])
def test_every_run_id_the_exporter_makes_passes_the_route_check(further):
    check_run_id(derive_run_id("vip", "VipCustomers/2026/11/28/0205", further))


@pytest.mark.parametrize("run_id", ["..", "r-0123456789ab/..", "r-0123456789AB", "r-0123456789ab-f", "", "r-" * 40])
def test_other_run_ids_are_refused(run_id):
    with pytest.raises(BadRequest):
        check_run_id(run_id)


@pytest.mark.parametrize("name", ["..", "Vip", "-", "vip/..", "a" * 64, ""])
def test_names_outside_the_definition_rules_are_refused(name):
    with pytest.raises(BadRequest):
        check_export_name(name)


def test_the_start_body_becomes_run_options():
    assert start_options(b'{"force": true, "dryRun": false}') == {"force": True, "dry_run": False}
    assert start_options(b"") == {} and start_options(b"  ") == {}


def test_an_excerpt_is_cut_and_says_so():
    assert excerpt("x" * 1000).endswith("… (cut at 80 characters)") and len(excerpt("x" * 1000)) < 120
    assert excerpt("short") == "short"
