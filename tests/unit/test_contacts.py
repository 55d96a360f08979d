"""Row → contact: which rows are rejected and why, how values are normalised, which values are dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.contacts import (
    COUNTRY_CODES,
    Contact,
    ContactMapper,
    email_key,
    fingerprint,
)
from shared.errors import ConfigError, RejectRow
from shared.exports import ExportDefinition, load_exports, load_exports_file
from shared.logs import event, mask_email

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "exports"

# Snapshot columns used by most tests: the row helper fills them by name.
COLUMNS = [
    "CustomerId",
    "EMail",
    "FirstName",
    "LastName",
    "City",
    "CountryIso",
    "Mobile",
    "DateOfBirth",
    "Gender",
    "Tier",
    "EmailOptIn",
    "OptInChangedOn",
]


def export_with(mapping: dict, **extra: object) -> ExportDefinition:
    text = json.dumps(
        {
            "exports": [
                {"name": "vip", "source": {"container": "ciexports", "path": "CI/Feed", "table": "Vip"}}
                | {"mapping": mapping}
                | extra
            ]
        }
    )
    return load_exports(text, source="test")[0]


FULL = export_with(
    {
        "email": "EMail",
        "firstName": "FirstName",
        "lastName": "LastName",
        "city": "City",
        "countryCode": "CountryIso",
        "phone": "Mobile",
        "birthdate": "DateOfBirth",
        "gender": "Gender",
        "customProperties": {"tier": "Tier"},
    }
)
CONSENT = load_exports_file(FIXTURES / "consent_mapping.json")[0]


def row(**cells: str) -> list[str]:
    values = {"EMail": "jane@example.com"} | cells
    return [values.get(column, "") for column in COLUMNS]


def mapped(export: ExportDefinition = FULL, **cells: str) -> Contact:
    return ContactMapper(export, COLUMNS).map("part_1.csv", 7, row(**cells))


def rejection(**cells: str) -> str:
    with pytest.raises(RejectRow) as caught:
        mapped(**cells)
    return caught.value.reason


def consent_columns() -> list[str]:
    return ["EMail", "EmailOptIn", "OptInChangedOn"]


def consent_contact(opt_in: str, changed_on: str = "2026-08-24T10:15:00Z") -> Contact:
    return ContactMapper(CONSENT, consent_columns()).map("part_1.csv", 2, ["jane@example.com", opt_in, changed_on])


# --- rejected rows ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["", "   "])
def test_empty_email_rejects_the_row(email):
    assert rejection(EMail=email) == "email is empty"


@pytest.mark.parametrize(
    "email",
    [
        "jane",  # no @
        "jane@",  # no domain
        "@example.com",  # no local part
        "jane@@example.com",  # two @
        "ja ne@example.com",  # space inside
        "jane@example",  # no dot in the domain
        "jane@example.c",  # one-letter TLD
        "jane@example.c0m",  # TLD with a digit
        "jane@-example.com",  # label starting with a hyphen
        "jane@example-.com",  # label ending with a hyphen
        "jane@exa_mple.com",  # underscore in the domain
        "jane@example..com",  # empty label
        ".jane@example.com",  # local part starting with a dot
        "ja..ne@example.com",  # double dot in the local part
        "jane,doe@example.com",  # comma
        '"jane"@example.com',  # quoted local part (not supported)
        "x" * 65 + "@example.com",  # local part over 64
        "jane@" + "a" * 64 + ".com",  # label over 63
        "jane@" + ("a" * 60 + ".") * 5 + "com",  # whole address over 254
    ],
)
def test_invalid_email_rejects_the_row(email):
    assert rejection(EMail=email) == "invalid email address"


@pytest.mark.parametrize(
    ("email", "code_point"),
    [
        ("K\u212a@example.com", "U+212A"),  # Kelvin sign: lower-cases to "k", i.e. into kk@example.com
        ("jan\u00e9@example.com", "U+00E9"),  # é: an internationalised address
        ("jane@\u0435xample.com", "U+0435"),  # Cyrillic "е" in the domain: a look-alike of another domain
        ("\u0130nfo@example.com", "U+0130"),  # dotted capital I
    ],
)
def test_an_email_with_a_non_ascii_character_is_rejected_before_case_folding(email, code_point):
    reason = rejection(EMail=email)
    assert reason.startswith("invalid email address: non-ASCII character " + code_point)
    assert email not in reason and email.lower() not in reason


@pytest.mark.parametrize(
    "email",
    [
        "jane@example.com",
        "jane.doe+vip@mail.example.co.uk",
        "o'brien@example.ie",
        "x" * 64 + "@example.com",
        "jane@xn--80ak6aa92e.xn--p1ai",
        "1@2.io",
    ],
)
def test_valid_email_is_accepted(email):
    assert mapped(EMail=email).email == email


def test_a_row_shorter_than_the_mapped_columns_is_rejected_not_a_crash():
    mapper = ContactMapper(FULL, COLUMNS)
    with pytest.raises(RejectRow) as caught:
        mapper.map("part_1.csv", 3, ["c1", "jane@example.com"])
    assert caught.value.reason == "row has 2 values; expected 12"


# --- normalisation ------------------------------------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased():
    assert mapped(EMail="  Jane.Doe@Example.COM ").email == "jane.doe@example.com"


def test_contact_remembers_its_source_file_and_line():
    contact = mapped()
    assert (contact.file, contact.line) == ("part_1.csv", 7)


def test_text_fields_are_trimmed_and_empty_cells_are_absent():
    contact = mapped(FirstName="  Jane ", LastName="", City=" ")
    assert contact.fields == {"firstName": "Jane"}
    assert contact.dropped == ()


def test_a_fully_mapped_row_becomes_a_clean_contact():
    contact = mapped(
        EMail="Jane@Example.com",
        FirstName="Jane",
        LastName="Doe",
        City="Vilnius",
        CountryIso="lt",
        Mobile="+370 612 34567",
        DateOfBirth="1990-05-01",
        Gender="Female",
        Tier="gold",
    )
    assert contact == Contact(
        email="jane@example.com",
        fields={
            "firstName": "Jane",
            "lastName": "Doe",
            "city": "Vilnius",
            "countryCode": "LT",
            "gender": "f",
            "birthdate": "1990-05-01",
        },
        phone="+37061234567",
        custom_properties={"tier": "gold"},
        file="part_1.csv",
        line=7,
    )


@pytest.mark.parametrize(
    ("cell", "code"), [("LT", "LT"), ("lt", "LT"), (" gb ", "GB"), ("Us", "US"), ("AX", "AX"), ("SS", "SS")]
)
def test_country_code_is_upper_cased(cell, code):
    assert mapped(CountryIso=cell).fields["countryCode"] == code


@pytest.mark.parametrize(("cell", "gender"), [("m", "m"), ("F", "f"), ("male", "m"), ("FEMALE", "f"), (" Male ", "m")])
def test_gender_is_normalised_to_m_or_f(cell, gender):
    assert mapped(Gender=cell).fields["gender"] == gender


@pytest.mark.parametrize(
    ("cell", "birthdate"),
    [
        ("1990-05-01", "1990-05-01"),
        ("2000-02-29", "2000-02-29"),
        ("1990-05-01T00:00:00Z", "1990-05-01"),
        ("1990-05-01T23:30:00-05:00", "1990-05-01"),  # a calendar date: not shifted to UTC
        ("1990-05-01 00:00:00", "1990-05-01"),
        ("1990-05-01T00:00:00.0000000Z", "1990-05-01"),
    ],
)
def test_birthdate_keeps_the_date(cell, birthdate):
    assert mapped(DateOfBirth=cell).fields["birthdate"] == birthdate


@pytest.mark.parametrize(
    ("cell", "phone"),
    [
        ("+37061234567", "+37061234567"),
        ("+370 612 34567", "+37061234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        ("+44 20.7946.0958", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
        ("(0049) 30-123456", "+4930123456"),
    ],
)
def test_phone_is_normalised_to_e164(cell, phone):
    assert mapped(Mobile=cell).phone == phone


def test_phone_is_not_among_the_fields():
    assert "phone" not in mapped(Mobile="+37061234567").fields


def test_custom_property_values_are_trimmed_and_empty_ones_absent():
    assert mapped(Tier=" gold ").custom_properties == {"tier": "gold"}
    assert mapped(Tier="  ").custom_properties == {}


def test_a_value_of_exactly_2048_characters_is_kept():
    assert mapped(City="c" * 2048).fields["city"] == "c" * 2048


# --- dropped values: the contact stays, the field goes, and dropped names it ----------------------------------------


@pytest.mark.parametrize(
    ("cells", "dropped"),
    [
        ({"CountryIso": "Lithuania"}, "countryCode"),
        ({"CountryIso": "UK"}, "countryCode"),  # not an ISO code (GB is)
        ({"CountryIso": "XX"}, "countryCode"),
        ({"DateOfBirth": "1990-02-30"}, "birthdate"),  # not a real date
        ({"DateOfBirth": "2023-02-29"}, "birthdate"),
        ({"DateOfBirth": "01/05/1990"}, "birthdate"),
        ({"DateOfBirth": "19900501"}, "birthdate"),
        ({"DateOfBirth": "1990-05-01Tnonsense"}, "birthdate"),
        ({"DateOfBirth": "1990-W01-1"}, "birthdate"),
        ({"Gender": "x"}, "gender"),
        ({"Gender": "unknown"}, "gender"),
        ({"Mobile": "061234567"}, "phone"),  # national number: country unknown
        ({"Mobile": "+0123456789"}, "phone"),  # country code cannot start with 0
        ({"Mobile": "+12345"}, "phone"),  # too short
        ({"Mobile": "+1234567890123456"}, "phone"),  # over 15 digits
        ({"Mobile": "+370 612 345 67 ext 9"}, "phone"),
        ({"Mobile": "+\u0669\u0667\u0661\u0665\u0660\u0661\u0662\u0663\u0664\u0665"}, "phone"),  # Arabic-Indic digits
        ({"Mobile": "+370\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17"}, "phone"),  # full-width digits
        ({"CountryIso": "\ufb01"}, "countryCode"),  # the "fi" ligature upper-cases to FI
        ({"CountryIso": "\u0131t"}, "countryCode"),  # dotless i upper-cases to IT
        ({"FirstName": "J" * 2049}, "firstName"),
        ({"Tier": "t" * 2049}, "customProperties.tier"),
    ],
)
def test_values_omnisend_would_refuse_are_dropped_and_named(cells, dropped):
    contact = mapped(**({"LastName": "Doe"} | cells))
    assert contact.dropped == (dropped,)
    assert contact.email == "jane@example.com"


def test_a_dropped_field_is_absent_from_the_contact():
    contact = mapped(CountryIso="Lithuania", Mobile="12", Tier="t" * 3000)
    assert "countryCode" not in contact.fields
    assert contact.phone is None
    assert contact.custom_properties == {}


def test_every_dropped_field_is_listed():
    contact = mapped(CountryIso="XX", Gender="?", Mobile="12", DateOfBirth="yesterday")
    assert sorted(contact.dropped) == ["birthdate", "countryCode", "gender", "phone"]


def test_the_same_bad_value_is_dropped_on_every_row():
    mapper = ContactMapper(FULL, COLUMNS)
    first = mapper.map("p.csv", 1, row(CountryIso="XX"))
    second = mapper.map("p.csv", 2, row(CountryIso="XX"))
    assert first.dropped == second.dropped == ("countryCode",)


def test_country_code_table_holds_the_249_iso_codes():
    assert len(COUNTRY_CODES) == 249
    assert all(len(code) == 2 and code.isupper() for code in COUNTRY_CODES)


# --- column resolution ----------------------------------------------------------------------------------------------


def test_missing_column_names_export_field_column_and_closest_match():
    export = export_with({"email": "Email", "firstName": "FristName"})
    with pytest.raises(ConfigError) as caught:
        ContactMapper(export, ["CustomerId", "EMail", "FirstName"])
    assert caught.value.source == 'export "vip"'
    assert caught.value.problems == [
        'mapping.email: column "Email" is not in the snapshot (did you mean "EMail"?); '
        "available columns: CustomerId, EMail, FirstName",
        'mapping.firstName: column "FristName" is not in the snapshot (did you mean "FirstName"?); '
        "available columns: CustomerId, EMail, FirstName",
    ]


def test_missing_custom_property_and_consent_columns_are_reported_together():
    export = export_with(
        {"email": "EMail", "customProperties": {"tier": "Level"}},
        consent={"column": "OptIn", "timestampColumn": "OptInAt", "values": {"subscribed": ["yes"]}},
    )
    with pytest.raises(ConfigError) as caught:
        ContactMapper(export, ["EMail"])
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "mapping.customProperties.tier",
        "consent.column",
        "consent.timestampColumn",
    ]


def test_a_mapped_column_present_twice_is_ambiguous():
    with pytest.raises(ConfigError) as caught:
        ContactMapper(export_with({"email": "EMail"}), ["EMail", "City", "EMail"])
    assert caught.value.problems == [
        'mapping.email: column "EMail" appears 2 times in the snapshot (positions 1, 3); '
        "which one is meant is ambiguous"
    ]


def test_unmapped_duplicate_columns_do_not_matter():
    mapper = ContactMapper(export_with({"email": "EMail"}), ["Extra", "EMail", "Extra"])
    assert mapper.map("p.csv", 1, ["a", "jane@example.com", "b"]).email == "jane@example.com"


def test_long_column_lists_are_cut_in_the_message():
    columns = [f"Col{i}" for i in range(100)]
    with pytest.raises(ConfigError) as caught:
        ContactMapper(export_with({"email": "EMail"}), columns)
    assert caught.value.problems[0].endswith("Col59 (and 40 more)")


def test_columns_are_found_by_name_whatever_their_position():
    mapper = ContactMapper(export_with({"email": "EMail", "city": "City"}), ["City", "Other", "EMail"])
    contact = mapper.map("p.csv", 1, ["Kaunas", "x", "jane@example.com"])
    assert (contact.email, contact.fields) == ("jane@example.com", {"city": "Kaunas"})


# --- consent --------------------------------------------------------------------------------------------------------


def test_without_a_consent_mapping_no_status_is_set():
    contact = mapped(EmailOptIn="yes")
    assert (contact.consent_status, contact.consent_changed_at) == (None, None)


@pytest.mark.parametrize(
    ("cell", "status"),
    [
        ("yes", "subscribed"),
        ("YES", "subscribed"),
        (" 1 ", "subscribed"),
        ("True", "subscribed"),
        ("no", "unsubscribed"),
    ],
)
def test_consent_cell_maps_to_a_status_ignoring_case_and_spaces(cell, status):
    contact = consent_contact(cell)
    assert contact.consent_status == status
    assert contact.dropped == ()


@pytest.mark.parametrize(
    ("cell", "changed_at"),
    [
        ("2026-08-24T10:15:00Z", "2026-08-24T10:15:00Z"),
        ("2026-08-24T12:15:00+02:00", "2026-08-24T10:15:00Z"),
        ("2026-08-24T10:15:00.1234567Z", "2026-08-24T10:15:00Z"),
        ("2026-08-24 10:15:00", "2026-08-24T10:15:00Z"),  # no offset: UTC, as CDM dateTime values are
        ("2026-08-24", "2026-08-24T00:00:00Z"),
        (" 2026-08-24T10:15Z ", "2026-08-24T10:15:00Z"),
    ],
)
def test_consent_timestamp_is_normalised_to_rfc3339_utc(cell, changed_at):
    assert consent_contact("yes", cell).consent_changed_at == changed_at


@pytest.mark.parametrize("cell", ["maybe", "", "  ", "subscribed"])
def test_unknown_or_empty_consent_value_sets_no_status_and_is_counted_as_dropped(cell):
    contact = consent_contact(cell)
    assert (contact.consent_status, contact.consent_changed_at) == (None, None)
    assert contact.dropped == ("consent",)


@pytest.mark.parametrize("cell", ["", "24/08/2026 10:15", "yesterday", "2026-13-01T00:00:00Z"])
def test_unreadable_consent_timestamp_drops_the_consent_for_that_row(cell):
    contact = consent_contact("yes", cell)
    assert (contact.consent_status, contact.consent_changed_at) == (None, None)
    assert contact.dropped == ("consent",)
    assert contact.email == "jane@example.com"


def test_consent_without_a_timestamp_column_sets_status_only():
    export = export_with(
        {"email": "EMail"}, consent={"column": "EmailOptIn", "values": {"unsubscribed": ["N"], "subscribed": ["Y"]}}
    )
    contact = ContactMapper(export, consent_columns()).map("p.csv", 1, ["jane@example.com", "n", ""])
    assert (contact.consent_status, contact.consent_changed_at) == ("unsubscribed", None)


# --- keys and fingerprints --------------------------------------------------------------------------------------


def test_email_key_is_a_stable_64_bit_number_of_the_normalised_email():
    key = email_key("jane@example.com")
    assert 0 <= key < 2**64
    assert email_key(" Jane@Example.COM ") == key
    assert email_key("john@example.com") != key


def test_fingerprint_is_64_bits_and_changes_with_any_byte():
    payload = b'{"identifiers":[{"type":"email","id":"jane@example.com"}]}'
    assert 0 <= fingerprint(payload) < 2**64
    assert fingerprint(payload) == fingerprint(bytes(payload))
    assert fingerprint(payload) != fingerprint(payload.replace(b"jane", b"Jane"))


# --- log helpers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "masked"),
    [
        ("john@example.com", "j***@example.com"),
        (" Jane.Doe@Example.com ", "J***@Example.com"),
        ("x@y.io", "x***@y.io"),
        ("not-an-email", "***"),
        ("@example.com", "***"),
        ("", "***"),
    ],
)
def test_mask_email_keeps_only_the_first_character_and_the_domain(email, masked):
    assert mask_email(email) == masked


def test_event_line_quotes_values_with_spaces_and_skips_none():
    line = event("plan.done", export="vip", rows=3, dryRun=False, note="two words", skipped=None)
    assert line == 'plan.done export=vip rows=3 dryRun=false note="two words"'


def test_mask_email_is_linear_and_cut_on_a_megabyte_cell():
    masked = mask_email("x" * 500_000 + "@" + "d" * 500_000)
    assert masked.startswith("x***@") and len(masked) < 300
