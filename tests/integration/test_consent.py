"""Consent is never changed by accident: existing statuses survive an export, welcome messages stay off,
and a status from the data is applied only with its own timestamp."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.integration.exporting import export, load_export, make_context, segment_emails, write_segment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "consent"





@pytest.mark.parametrize("version", ["2026-03-15", "v3"])
def test_existing_contacts_keep_their_status_and_nobody_is_welcomed(tmp_path, sim, version):
    write_segment(tmp_path, 200, messy=False)
    unsubscribed, subscribed = segment_emails(tmp_path, 2)
    sim.seed_contact(email=unsubscribed, status="unsubscribed", status_date="2025-06-01T00:00:00Z",
                     api_version=version)
    sim.seed_contact(email=subscribed, status="subscribed", status_date="2025-06-01T00:00:00Z", api_version=version)
    report = export(make_context(tmp_path, sim.base_url, api_version=version))
    contacts = sim.contacts()
    assert report["sent"] == 200
    assert contacts[unsubscribed]["status"] == "unsubscribed"
    assert contacts[subscribed]["status"] == "subscribed"
    assert {c["status"] for e, c in contacts.items() if e not in (unsubscribed, subscribed)} == {"nonSubscribed"}
    assert sim.state()["stats"]["welcome_messages"] == 0


def consent_export(**overrides):
    return load_export(
        source={"container": "segments", "file": "consent/members.csv"},
        mapping={"email": "Email", "firstName": "FirstName"},
        consent={"column": "Consent", "timestampColumn": "ConsentAt",
                 "values": {"subscribed": ["yes"], "unsubscribed": ["no"]}},
        **overrides,
    )


def test_consent_from_data_is_sent_with_its_timestamp(tmp_path, sim):
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    # Unsubscribed in Omnisend before CI's consent date: the data's newer "yes" wins.
    sim.seed_contact(email="old.unsub@example.com", status="unsubscribed", status_date="2026-10-01T00:00:00Z",
                     api_version="2026-03-15")
    # Unsubscribed in Omnisend after CI's consent date (clicked "unsubscribe" yesterday): that newer choice stays.
    sim.seed_contact(email="late.unsub@example.com", status="unsubscribed", status_date="2026-11-20T00:00:00Z",
                     api_version="2026-03-15")
    report = export(make_context(tmp_path, sim.base_url), consent_export())
    contacts = sim.contacts()
    assert report["sent"] == 4
    assert contacts["new.yes@example.com"]["status"] == "subscribed"
    assert contacts["new.yes@example.com"]["statusChangedAt"].startswith("2026-11-01T10:00:00")
    assert contacts["new.no@example.com"]["status"] == "unsubscribed"
    assert contacts["old.unsub@example.com"]["status"] == "subscribed"
    assert contacts["late.unsub@example.com"]["status"] == "unsubscribed"
    assert sim.state()["stats"]["welcome_messages"] == 0
