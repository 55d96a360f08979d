"""The compiled row function (shared/row_payloads.py) is the reference mapper and payload builder, unrolled: for every
kind of mapping and every messy cell it gives the same email, the same payload bytes, the same dropped names in the
same order, or the same rejection reason."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from shared.contacts import MAX_STRING_LENGTH, ContactMapper
from shared.errors import RejectRow
from shared.exports import ExportDefinition, load_exports
from shared.omnisend import build_contact_payload
from shared.pipeline.rowloop import _all_short
from shared.row_payloads import compile_row_payload

COLUMNS = ["CustomerId", "EMail", "FirstName", "City", "CountryIso", "Mobile", "DateOfBirth", "Gender", "Tier",
           "EmailOptIn", "OptInChangedOn"]
SOURCE = {"container": "ciexports", "path": "CI/Feed", "table": "Vip"}
LONG = "x" * (MAX_STRING_LENGTH + 1)

# Per column, the cells rows are drawn from: ordinary values, blanks, padding, and every kind of value a rule drops.
CELLS = {
    "EMail": ["jane@example.com", " Jane.Doe@Example.COM ", "", "   ", "not-an-email", "a@b", "a..b@example.com",
              ".a@example.com", "a.@example.com", "a+tag@sub.example.co", "o'brien@example.ie", "x@-bad.com",
              "x@bad-.com", "x@xn--p1ai", "x@example.c0m", "a@b@example.com", "é@example.com", "\u212a@example.com",
              "a" * 64 + "@example.com", "a" * 65 + "@example.com", "x@" + "a" * 64 + ".com",
              "x@" + ".".join(["abc"] * 70) + ".com", "first_last-1@mail.example", "UPPER@EXAMPLE.ORG",
              "a b@example.com", "\"q\"@example.com", "a@example.com.", "a@.example.com"],
    "FirstName": ["Jane", " Jane ", "", "  ", "Zoë", LONG, " " + LONG[:-2] + " "],
    "City": ["Vilnius", "", "\u00a0Oslo\u00a0", "Line\nBreak"],
    "CountryIso": ["LT", "lt", " de ", "XX", "", "\ufb01", "ZZ", "U S"],
    "Mobile": ["+37061234567", "+370 612 34567", "0037061234567", "(+370) 612-34-567", "12345", "", "+0123456789",
               "+١٢٣٤٥٦٧٨٩", "+123456", "+1234567", "+123456789012345", "+1234567890123456", " +37061234567 ",
               "+3706\u00a01234567", "+", "++37061234567"],
    "DateOfBirth": ["1980-05-01", "1980-05-01T10:00:00+02:00", "31/02/1990", "2023-02-29", "", "19800501",
                    " 1980-05-01 ", "1980-05-01 23:59:59"],
    "Gender": ["f", "M", "female", "Male", "x", "", " m "],
    "Tier": ["gold", "", " silver ", LONG],
    "EmailOptIn": ["Yes", "yes ", "1", "no", "FALSE", "maybe", ""],
    "OptInChangedOn": ["2025-01-02T03:04:05Z", "2025-01-02", "2025-01-02T03:04:05+02:00", "yesterday", ""],
}


def _export(settings: dict) -> ExportDefinition:
    definition = {"name": "vip", "source": SOURCE, "dataTransferAcknowledged": True} | settings
    return load_exports(json.dumps({"exports": [definition]}), source="test")[0]


FULL_MAPPING = {
    "email": "EMail",
    "firstName": "FirstName",
    "city": "City",
    "countryCode": "CountryIso",
    "phone": "Mobile",
    "birthdate": "DateOfBirth",
    "gender": "Gender",
    "customProperties": {"tier": "Tier", "customer_id_2": "CustomerId"},
}
CONSENT = {"column": "EmailOptIn", "values": {"subscribed": ["Yes", "1"], "unsubscribed": ["no", "false"]}}
EXPORTS = {
    "email only": {"mapping": {"email": "EMail"}},
    "every field": {"mapping": FULL_MAPPING, "tags": ["ci-vip", "gold members"]},
    "tags by the tags endpoint, welcome on": {"mapping": FULL_MAPPING, "tags": ["ci-vip"], "tagsVia": "tagsEndpoint",
                                   "sendWelcomeMessage": True},
    "new contacts subscribed": {"mapping": FULL_MAPPING, "newContactStatus": "subscribed"},
    "consent without a timestamp": {"mapping": FULL_MAPPING, "consent": CONSENT},
    "consent with a timestamp": {"mapping": FULL_MAPPING, "consent": CONSENT | {"timestampColumn": "OptInChangedOn"},
                                 "newContactStatus": "unsubscribed"},
}


def _reference(export: ExportDefinition, api_version: str, fields: list[str]):
    try:
        contact = ContactMapper(export, COLUMNS).map("part.csv", 1, fields)
    except RejectRow as exc:
        return ("rejected", exc.reason)
    return contact.email, orjson.dumps(build_contact_payload(contact, export, api_version)), contact.dropped


def _compiled(function, fields: list[str]):
    short = _all_short([",".join(fields).encode()])  # what the row loop knows of a one-line record
    try:
        email, body, dropped = (function.short if short else function.checked)(fields)
    except RejectRow as exc:
        return ("rejected", exc.reason)
    return email, body, tuple(dropped or ())


def _rows(count: int, seed: int) -> list[list[str]]:
    rnd = random.Random(seed)
    return [[rnd.choice(CELLS.get(column, ["cid-1", ""])) for column in COLUMNS] for _ in range(count)]


@pytest.mark.parametrize("api_version", ["2026-03-15", "v3"])
@pytest.mark.parametrize("kind", sorted(EXPORTS))
def test_every_messy_row_comes_out_as_the_reference_makes_it(kind, api_version):
    export = _export(EXPORTS[kind])
    function = compile_row_payload(ContactMapper(export, COLUMNS), api_version)
    rows = _rows(3000, seed=len(kind))
    differences = [
        (row, _reference(export, api_version, row), _compiled(function, row))
        for row in rows
        if _reference(export, api_version, row) != _compiled(function, row)
    ]
    assert differences == []
    outcomes = [_compiled(function, row) for row in rows]
    # The draw exercised both sides: rejected rows, many distinct payloads, dropped fields where any are mapped.
    assert any(o[0] == "rejected" for o in outcomes)
    assert len({o[1] for o in outcomes if o[0] != "rejected"}) > 100 or kind == "email only"
    assert any(o[2] for o in outcomes if o[0] != "rejected") or kind == "email only"


def test_a_field_past_the_length_limit_is_dropped_only_when_the_row_is_not_known_short():
    export = _export(EXPORTS["every field"])
    function = compile_row_payload(ContactMapper(export, COLUMNS), "2026-03-15")
    fields = _rows(1, seed=1)[0]
    fields[COLUMNS.index("EMail")], fields[COLUMNS.index("FirstName")] = "jane@example.com", LONG
    assert "firstName" in _compiled(function, fields)[2]
    assert _compiled(function, fields) == _reference(export, "2026-03-15", fields)


def test_the_memo_of_a_cleaned_cell_answers_the_second_time_as_the_first():
    export = _export(EXPORTS["every field"])
    function = compile_row_payload(ContactMapper(export, COLUMNS), "2026-03-15")
    rows = _rows(200, seed=3)
    first = [_compiled(function, row) for row in rows]
    assert [_compiled(function, row) for row in rows] == first


def test_generated_addresses_are_accepted_exactly_when_the_reference_regex_accepts_them():
    """The compiled check splits the address at its first "@" and remembers domains; the reference runs one regex."""
    export = _export(EXPORTS["email only"])
    function = compile_row_payload(ContactMapper(export, COLUMNS), "2026-03-15")
    rnd = random.Random(12)
    alphabet = "ab1.-@_+x!n" + "Z"
    parts = ["xn--", "..", ".", "@", "-", "example", "com", "a" * 30, "b" * 63, "c" * 64]
    mismatches = []
    for _ in range(20_000):
        pieces = [rnd.choice(parts) if rnd.random() < 0.3 else rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))]
        address = "".join(pieces)
        fields = [""] * len(COLUMNS)
        fields[COLUMNS.index("EMail")] = address
        expected = _reference(export, "2026-03-15", fields)
        if _compiled(function, fields) != expected:
            mismatches.append(address)
    assert mismatches == []


def test_a_compiled_row_function_refuses_an_unknown_api_version():
    export = _export(EXPORTS["email only"])
    with pytest.raises(ValueError, match="unknown Omnisend API version"):
        compile_row_payload(ContactMapper(export, COLUMNS), "2019-01-01")


def test_every_character_in_a_text_field_is_encoded_as_the_reference_encodes_it():
    """The compiled functions encode a msgspec Struct, the reference a dict with orjson: the bytes (the payload's
    fingerprint) must agree for every code point, controls, quotes, backslashes and line separators included."""
    export = _export(EXPORTS["every field"])
    function = compile_row_payload(ContactMapper(export, COLUMNS), "2026-03-15")
    fields = _rows(1, seed=5)[0]
    fields[COLUMNS.index("EMail")] = "jane@example.com"
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    differences = []
    for start in range(0, len(code_points), 97):
        # Framed by letters so that no run is blank after trimming; 97 per cell keeps it under the length limit.
        fields[COLUMNS.index("FirstName")] = "a" + "".join(map(chr, code_points[start : start + 97])) + "z"
        fields[COLUMNS.index("Tier")] = "b" + "".join(map(chr, reversed(code_points[start : start + 97]))) + "y"
        if _compiled(function, fields) != _reference(export, "2026-03-15", fields):
            differences.append(hex(code_points[start]))
    assert differences == []
