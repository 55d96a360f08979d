"""The run events the alerts count are log traces: host.json must neither sample them away nor filter them out."""

import json
from pathlib import Path

HOST_JSON = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())


def test_traces_are_never_sampled():
    sampling = HOST_JSON["logging"]["applicationInsights"]["samplingSettings"]
    assert not sampling.get("isEnabled", True) or "Trace" in sampling["excludedTypes"].split(";")


def test_information_logs_of_functions_reach_application_insights():
    # A function's own log records have the category Function.<name>.User, governed by the "Function" level.
    assert HOST_JSON["logging"]["logLevel"]["Function"] in ("Trace", "Debug", "Information")
