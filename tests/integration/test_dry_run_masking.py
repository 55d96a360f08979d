"""A dry run shows shapes, not people: no value of the segment appears unmasked in its report (CLI --json and
HTTP return this same report)."""

from __future__ import annotations

import csv
import json

from devtools import sample_data
from tests.integration.exporting import export, load_export, make_context, write_segment

MAPPING = {
    "email": "EMail", "firstName": "FirstName", "lastName": "LastName", "phone": "Telephone",
    "address": "StreetAddress", "city": "City", "state": "State", "postalCode": "PostCode",
    "country": "Country", "countryCode": "CountryCode", "birthdate": "DateOfBirth", "gender": "Gender",
    "customProperties": {"loyalty_tier": "LoyaltyTier", "lifetime_value": "LifetimeValue"},
}


def mapped_cells(root) -> set[str]:
    """Every value of a mapped column in the segment, as written and as the exporter normalises it."""
    columns = list(sample_data.COLUMNS)
    wanted = [columns.index(c) for c in MAPPING.values() if isinstance(c, str)]
    wanted += [columns.index(c) for c in MAPPING["customProperties"].values()]
    cells: set[str] = set()
    for path in root.rglob(f"{sample_data.TABLE}_*.csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.reader(f):
                for i in wanted:
                    if i < len(row):
                        cells |= {row[i], row[i].strip(), row[i].strip().lower(), row[i].replace(" ", "")}
    # Two-letter values (country codes, "f"/"m") are settings-like shapes, not identifying on their own.
    return {c for c in cells if len(c) > 2}


def dry_run_report(tmp_path, sim) -> dict:
    write_segment(tmp_path, 300)
    ctx = make_context(tmp_path, sim.base_url)
    return export(ctx, load_export(mapping=MAPPING), dry_run=True)


def test_no_value_of_the_segment_appears_in_a_dry_run_report(tmp_path, sim):
    report = dry_run_report(tmp_path, sim)
    text = json.dumps(report, ensure_ascii=False)
    assert report["samplePayloads"] and report["rejectedSample"]
    leaked = sorted(c for c in mapped_cells(tmp_path) if json.dumps(c, ensure_ascii=False)[1:-1] in text)
    assert leaked == []


def test_sample_payloads_keep_field_names_lengths_and_formats(tmp_path, sim):
    sample = dry_run_report(tmp_path, sim)["samplePayloads"][0]
    email = sample["identifiers"][0]
    assert email["type"] == "email" and "***@" in email["id"]
    assert sample["tags"] == ["ci-vip"]
    assert set(sample) >= {"firstName", "lastName", "city", "birthdate", "customProperties"}
    assert sample["birthdate"] == "9999-99-99"
    assert sample["firstName"][0] == "X" and set(sample["firstName"][1:]) <= {"x", " ", "-", "'"}


def test_rejected_sample_masks_emails_and_raw_cells(tmp_path, sim):
    rejected = dry_run_report(tmp_path, sim)["rejectedSample"]
    invalid = next(r for r in rejected if r["reason"] == "invalid email address" and r["line"] == 6)
    assert invalid["email"] == "xxx-xx-xxxxx"  # "not-an-email": its shape only
    duplicates = [r for r in rejected if r["bucket"] == "duplicate"]
    assert duplicates and all("***@" in r["email"] for r in duplicates)
