"""What an export relies on (shared/probe.py relied_on) follows from the payloads it actually sends: if the payload
builder changes, these tests say which probe verdicts the change needs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from shared.contacts import Contact
from shared.exports import ConsentMapping, ExportDefinition, Source
from shared.omnisend.payloads import build_contact_payload
from shared.probe import relied_on

CONSENT = ConsentMapping(column="Consent", timestamp_column=None, values={"subscribed": ("yes",)})
BASE = ExportDefinition(name="x", source=Source(container="c", file="f.csv"), mapping={"email": "E"})
VARIANTS = [
    dataclasses.replace(BASE, new_contact_status=status, consent=consent, tags=tags, on_exit=on_exit,
                        tags_via=tags_via)
    for status, consent, tags, on_exit, tags_via in itertools.product(
        ("nonSubscribed", "subscribed"), (None, CONSENT), ((), ("t",)), ("untag", "ignore"),
        ("upsert", "tagsEndpoint"))
]
CONTACTS = (Contact("a@example.com"), Contact("b@example.com", consent_status="subscribed"))


def payloads(export: ExportDefinition, version: str) -> list[dict]:
    contacts = CONTACTS if export.consent else CONTACTS[:1]
    return [build_contact_payload(c, export, version) for c in contacts]


def relies(export: ExportDefinition, version: str) -> set[str]:
    return {a.id for a in relied_on(export, version)}


@pytest.mark.parametrize("version", ["2026-03-15", "v3"])
@pytest.mark.parametrize("export", VARIANTS, ids=range(len(VARIANTS)))
def test_an_export_relies_on_no_channel_behaviour_exactly_when_it_posts_a_contact_without_channels(export, version):
    without = any("channels" not in p["identifiers"][0] for p in payloads(export, version))
    assert ({"noChannelsKeepsStatus", "newWithoutChannelsIsNonSubscribed"} <= relies(export, version)) == without


@pytest.mark.parametrize("version", ["2026-03-15", "v3"])
@pytest.mark.parametrize("export", VARIANTS, ids=range(len(VARIANTS)))
def test_an_export_relies_on_older_dates_being_ignored_exactly_when_it_sends_a_dated_status(export, version):
    dated = any("channels" in p["identifiers"][0] for p in payloads(export, version))
    assert ("olderStatusDateIgnored" in relies(export, version)) == dated


@pytest.mark.parametrize("export", VARIANTS, ids=range(len(VARIANTS)))
def test_an_export_relies_on_upsert_tags_merging_exactly_when_its_payloads_carry_tags(export):
    tagged = any("tags" in p for p in payloads(export, "2026-03-15"))
    assert ("upsertTagsMerge" in relies(export, "2026-03-15")) == tagged

