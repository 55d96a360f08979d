"""The consent probe against the simulator: every assumption confirmed in the default mode, and each pessimistic
switch detected as exactly the assumption it breaks, on each API version where the behaviour applies."""

from __future__ import annotations

import time

import pytest

from shared.probe import (
    ASSUMPTIONS,
    CONFIRMED,
    CONTRADICTED,
    NOT_APPLICABLE,
    AssumptionContradicted,
    read_result,
    run_probe,
)
from tests.integration.exporting import export, load_export, make_context, write_segment

BOTH = ("2026-03-15", "v3")
DOMAIN = "probe.example.com"
# switch -> (the assumption it breaks, the API versions on which that behaviour exists)
PESSIMISTIC = {
    "no_channels_resets_status": ("noChannelsKeepsStatus", ("2026-03-15",)),
    "no_channels_new_subscribed": ("newWithoutChannelsIsNonSubscribed", ("2026-03-15",)),
    "older_status_date_overrides": ("olderStatusDateIgnored", BOTH),
    "upsert_tags_replace": ("upsertTagsMerge", BOTH),
    "untag_removes_all": ("untagRemovesOnlyGivenTags", ("2026-03-15",)),
}
NOT_ON_V3 = {"noChannelsKeepsStatus", "newWithoutChannelsIsNonSubscribed", "untagRemovesOnlyGivenTags"}


def probe(tmp_path, sim, api_version: str, **switches) -> dict:
    sim.configure(supported_versions=list(BOTH), **switches)
    ctx = make_context(tmp_path, sim.base_url, api_version=api_version)
    return run_probe(ctx.client, ctx.state_store, api_version=api_version, base_url=sim.base_url, domain=DOMAIN,
                     sleep=lambda _: time.sleep(0.02), wait_seconds=5)


def verdicts(result: dict) -> dict[str, str]:
    return {aid: a["result"] for aid, a in result["assumptions"].items()}


@pytest.mark.parametrize("api_version", BOTH)
def test_in_the_default_mode_every_assumption_is_confirmed(tmp_path, sim, api_version):
    result = probe(tmp_path, sim, api_version)
    expected = {a.id: NOT_APPLICABLE if api_version == "v3" and a.id in NOT_ON_V3 else CONFIRMED
                for a in ASSUMPTIONS}
    assert verdicts(result) == expected


@pytest.mark.parametrize(("switch", "api_version"),
                         [(s, v) for s, (_, versions) in PESSIMISTIC.items() for v in versions])
def test_each_pessimistic_behaviour_is_reported_as_exactly_its_assumption_contradicted(tmp_path, sim, switch,
                                                                                       api_version):
    result = probe(tmp_path, sim, api_version, **{switch: True})
    contradicted = [aid for aid, verdict in verdicts(result).items() if verdict == CONTRADICTED]
    assert contradicted == [PESSIMISTIC[switch][0]]


def test_the_probe_uses_three_named_contacts_in_the_given_domain_with_welcome_messages_off(tmp_path, sim):
    result = probe(tmp_path, sim, "2026-03-15")
    contacts = sim.contacts()
    assert sorted(contacts) == sorted(result["contacts"])
    assert all(e.startswith("omnisend-exporter-probe-") and e.endswith("@" + DOMAIN) for e in contacts)
    assert sim.stats()["welcome_messages"] == 0
    assert "delete these contacts in Omnisend" in result["cleanUp"]


def test_the_result_is_kept_in_the_state_container_per_api_version(tmp_path, sim):
    probe(tmp_path, sim, "v3")
    ctx = make_context(tmp_path, sim.base_url)
    assert read_result(ctx.state_store, "v3")["apiVersion"] == "v3"
    assert read_result(ctx.state_store, "2026-03-15") is None
    assert (tmp_path / "exporter-state" / "_probe" / "v3.json").is_file()


def test_an_export_relying_on_a_contradicted_assumption_refuses_to_run(tmp_path, sim):
    probe(tmp_path, sim, "2026-03-15", upsert_tags_replace=True)
    write_segment(tmp_path, 50, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    with pytest.raises(AssumptionContradicted, match="tagsVia"):
        export(ctx)
    assert [e for e in sim.contacts() if not e.startswith("omnisend-exporter-probe")] == []


def test_with_tags_applied_by_the_tags_endpoint_the_export_runs_and_keeps_other_tags(tmp_path, sim):
    probe(tmp_path, sim, "2026-03-15", upsert_tags_replace=True)
    write_segment(tmp_path, 50, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    from tests.integration.exporting import segment_emails

    someone = segment_emails(tmp_path, 1)[0]
    sim.seed_contact(email=someone, status="subscribed", tags=["legacy"], api_version="2026-03-15")
    report = export(ctx, load_export(tagsVia="tagsEndpoint"))
    assert report["status"] == "succeeded" and report["sent"] == 50
    deadline = time.monotonic() + 5
    while "ci-vip" not in sim.contact(someone)["tags"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(sim.contact(someone)["tags"]) == ["ci-vip", "legacy"]
    exported = [c for e, c in sim.contacts().items() if not e.startswith("omnisend-exporter-probe")]
    assert len(exported) == 50 and all("ci-vip" in c["tags"] for c in exported)


def test_an_export_that_avoids_the_contradicted_assumption_runs(tmp_path, sim):
    probe(tmp_path, sim, "2026-03-15", untag_removes_all=True)
    write_segment(tmp_path, 50, messy=False)
    ctx = make_context(tmp_path, sim.base_url)
    assert export(ctx, load_export(onExit="ignore"))["status"] == "succeeded"


def test_tags_through_the_tags_endpoint_on_v3_are_refused_before_anything_is_sent(tmp_path, sim):
    from shared.errors import ConfigError

    sim.configure(supported_versions=list(BOTH))
    write_segment(tmp_path, 50, messy=False)
    ctx = make_context(tmp_path, sim.base_url, api_version="v3")
    with pytest.raises(ConfigError, match="tagsEndpoint"):
        export(ctx, load_export(tagsVia="tagsEndpoint", onExit="ignore"))
    assert sim.stats()["requests_total"] == 0
