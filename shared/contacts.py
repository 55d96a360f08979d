"""Row → contact: column mapping, validation, normalisation, fingerprint.

``ContactMapper`` resolves the export's columns once per snapshot, then ``map()`` turns one row into a ``Contact``
or raises ``RejectRow``. Only the email can reject a row; any other value Omnisend would refuse is dropped from the
contact and named in ``Contact.dropped``, so one bad birthdate does not cost a whole contact.

``map()`` runs once per input row (a million per big run), so everything that can be decided per snapshot is done in
``__init__``: column indexes, compiled regexes, lookup tables. Rules for users: docs/exports.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from shared import hashing
from shared.errors import ConfigError, RejectRow
from shared.exports import CONTACT_FIELDS, ChannelStatus, ExportDefinition, closest, normalise_consent_value


@dataclass(slots=True)
class Contact:
    email: str  # trimmed, lower-cased, valid
    fields: dict[str, str] = field(default_factory=dict)  # Omnisend top-level fields except email/phone, cleaned
    phone: str | None = None  # E.164, when mapped and valid
    custom_properties: dict[str, str] = field(default_factory=dict)
    consent_status: ChannelStatus | None = None  # only when the export maps a consent column
    consent_changed_at: str | None = None  # RFC 3339, with consent_status
    dropped: tuple[str, ...] = ()  # optional fields dropped because Omnisend would refuse them
    file: str = ""
    line: int = 0


# Omnisend's documented limit for custom-property strings (omnisend-api.md §2.6). It documents none for the top-level
# text fields, so the same number is used there: a longer value is almost surely a data error, and is dropped rather
# than truncated, because a cut-off name or address is wrong data that would look right.
MAX_STRING_LENGTH = 2048

# Pragmatic email check, applied after trimming and lower-casing (Omnisend rejects what it cannot deliver to; a
# full RFC 5322 parser would accept addresses it refuses). It requires:
#   - a local part of 1-64 RFC 5322 "atext" characters, dots only between them (no leading, trailing or double dot);
#   - exactly one @ (the local part cannot contain one);
#   - a domain of dot-separated labels of letters, digits and inner hyphens (≤63 each), at least two labels;
#   - a top-level domain of ≥2 letters (or a punycode "xn--" TLD);
#   - no spaces, quotes or commas anywhere, and (checked separately) ≤254 characters in total.
# Not accepted: quoted local parts, IP-literal domains, non-ASCII (internationalised) addresses. Non-ASCII is refused
# on the cell as read, before lower-casing: Unicode case rules fold some characters into ASCII letters (the Kelvin
# sign U+212A lower-cases to "k"), which would turn a bogus address into a different, real person's address.
MAX_EMAIL_LENGTH = 254
MAX_LOCAL_LENGTH = 64
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL_RE = re.compile(
    rf"(?=[^@]{{1,64}}@){_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})"
)
# The same check in two halves, for planning's compiled rows (shared/row_payloads.py): neither half can match an "@",
# so an address passes _EMAIL_RE exactly when its local part (before the first "@", 1-64 characters) and its
# domain (the rest) pass these. tests/unit/test_row_payloads.py compares the two on generated addresses.
EMAIL_LOCAL_RE = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
EMAIL_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+(?:[a-z]{{2,63}}|xn--[a-z0-9-]{{1,59}})")

# E.164: "+", a country code not starting with 0, 7-15 digits in all (Omnisend 2026 requires E.164). ASCII digits
# only: ``\d`` would also accept Arabic-Indic and other Unicode digits, which no phone network dials.
_PHONE_RE = re.compile(r"\+[1-9][0-9]{6,14}")

_GENDERS = {"m": "m", "f": "f", "male": "m", "female": "f"}

# ISO 3166-1 alpha-2: the 249 officially assigned codes. Omnisend refuses anything else in countryCode.
_COUNTRY_CODES_TEXT = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC
    CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD
    GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH
    KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW
    MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC
    SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY
    UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""
COUNTRY_CODES = frozenset(_COUNTRY_CODES_TEXT.split())

# Mapped fields that need more than trimming; every other CONTACT_FIELDS entry except email/phone is plain text.
_SPECIAL_FIELDS = ("email", "phone", "countryCode", "birthdate", "gender")

# Country, gender and birthdate cells repeat a lot (a few hundred countries, ~40k birthdates in a century), so each
# mapper remembers its cleaning results; past this many distinct values per field it stops adding (bounded memory).
_MEMO_LIMIT = 50_000
_MISSING = object()

# Longest list of available columns quoted in an error; CI profiles can have hundreds.
_MAX_COLUMNS_LISTED = 60


def normalise_email(email: str) -> str:
    return email.strip().lower()


def is_valid_email(email: str) -> bool:
    """True for a normalised (trimmed, lower-case) address that passes the pragmatic check above."""
    return len(email) <= MAX_EMAIL_LENGTH and _EMAIL_RE.fullmatch(email) is not None


def non_ascii_reason(email: str) -> str:
    """The rejected.csv reason for an address holding a non-ASCII character: which one, by code point only (the
    reason must not repeat the address)."""
    bad = next(c for c in email if not c.isascii())
    return (f"invalid email address: non-ASCII character U+{ord(bad):04X} ({unicodedata.name(bad, 'unnamed')}); "
            "internationalised addresses are not supported")


def email_key(email: str) -> int:
    """64-bit key of the normalised email, for dedupe and per-export state (xxh3: see shared/hashing.py)."""
    return hashing.key_of_normalised(normalise_email(email))


def fingerprint(payload_json: bytes) -> int:
    """64-bit hash of the exact payload bytes sent: equal fingerprints mean nothing changed for that contact."""
    return hashing.fingerprint(payload_json)


def clean_country_code(value: str) -> str | None:
    if not value.isascii():  # "\ufb01" (the fi ligature) upper-cases to "FI": a code nobody wrote
        return None
    code = value.upper()
    return code if code in COUNTRY_CODES else None


def clean_gender(value: str) -> str | None:
    return _GENDERS.get(value.lower())


def clean_birthdate(value: str) -> str | None:
    """``YYYY-MM-DD``, or the date part of an ISO datetime (as written, not shifted to UTC: it is a calendar date)."""
    if len(value) < 10 or value[4] != "-" or value[7] != "-" or not value.isascii():
        return None
    try:
        if len(value) == 10:
            # Fast path (C): the dash positions above rule out the other forms fromisoformat accepts (20240501,
            # 2024-W01-1); it raises for non-digits and impossible dates such as 2023-02-29.
            date.fromisoformat(value)
            return value
        if value[10] in "T ":
            return datetime.fromisoformat(value).date().isoformat()
    except ValueError:
        return None
    return None


def clean_phone(value: str) -> str | None:
    """E.164 after removing separators; a leading international ``00`` becomes ``+``. National numbers are dropped."""
    # Spaces are by far the most common separator; after removing them most numbers are done. Chained replace is
    # several times faster than str.translate or re.sub for such short strings.
    number = value.replace(" ", "")
    if _PHONE_RE.fullmatch(number):
        return number
    number = number.replace("-", "").replace(".", "").replace("(", "").replace(")", "")
    number = number.replace("\t", "").replace("\u00a0", "")
    if number.startswith("00"):
        number = "+" + number[2:]
    return number if _PHONE_RE.fullmatch(number) else None


def to_rfc3339_utc(value: str) -> str | None:
    """An ISO 8601 date or datetime as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC; no offset means UTC (CDM dateTime is UTC)."""
    try:
        moment = datetime.fromisoformat(value)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_CLEANERS = {"countryCode": clean_country_code, "gender": clean_gender, "birthdate": clean_birthdate}


def _add(dropped: list[str] | None, name: str) -> list[str]:
    """Append to the dropped list, created only when needed (most rows drop nothing)."""
    if dropped is None:
        return [name]
    dropped.append(name)
    return dropped


class ContactMapper:
    """Maps rows of one snapshot (whose columns are ``columns``) to contacts for ``export``."""

    __slots__ = (
        "columns",
        "consent_index",
        "consent_timestamp_index",
        "consent_values",
        "custom_fields",
        "email_index",
        "export",
        "phone_index",
        "special_fields",
        "text_fields",
        "width",
    )

    def __init__(self, export: ExportDefinition, columns: Sequence[str]) -> None:
        self.export = export
        self.columns = tuple(columns)
        positions: dict[str, list[int]] = {}
        for i, name in enumerate(self.columns):
            positions.setdefault(name, []).append(i)
        problems: list[str] = []

        def index(where: str, column: str) -> int:
            found = positions.get(column)
            if found and len(found) == 1:
                return found[0]
            if found:
                problems.append(
                    f'{where}: column "{column}" appears {len(found)} times in the snapshot (positions '
                    f"{', '.join(str(p + 1) for p in found)}); which one is meant is ambiguous"
                )
            else:
                near = closest(column, self.columns)
                hint = f' (did you mean "{near}"?)' if near else ""
                problems.append(
                    f'{where}: column "{column}" is not in the snapshot{hint}; available columns: {self._listing()}'
                )
            return -1

        mapping = export.mapping
        self.email_index = index("mapping.email", mapping["email"])
        self.phone_index = index("mapping.phone", mapping["phone"]) if "phone" in mapping else None
        self.text_fields = tuple(
            (name, index(f"mapping.{name}", mapping[name]))
            for name in CONTACT_FIELDS
            if name in mapping and name not in _SPECIAL_FIELDS
        )
        self.special_fields = tuple(
            (name, index(f"mapping.{name}", mapping[name]), _CLEANERS[name], {})
            for name in _CLEANERS
            if name in mapping
        )
        self.custom_fields = tuple(
            (name, index(f"mapping.customProperties.{name}", column))
            for name, column in export.custom_properties.items()
        )
        consent = export.consent
        self.consent_index = index("consent.column", consent.column) if consent else None
        self.consent_timestamp_index = (
            index("consent.timestampColumn", consent.timestamp_column) if consent and consent.timestamp_column else None
        )
        self.consent_values: dict[str, ChannelStatus] = (
            {value: status for status, values in consent.values.items() for value in values} if consent else {}
        )
        if problems:
            raise ConfigError(problems, source=f'export "{export.name}"')
        used = [self.email_index, *(i for _, i in self.text_fields), *(i for _, i, _, _ in self.special_fields)]
        used += [i for _, i in self.custom_fields]
        used += [i for i in (self.phone_index, self.consent_index, self.consent_timestamp_index) if i is not None]
        self.width = max(used) + 1

    def _listing(self) -> str:
        shown = ", ".join(self.columns[:_MAX_COLUMNS_LISTED]) or "(none)"
        more = len(self.columns) - _MAX_COLUMNS_LISTED
        return f"{shown} (and {more} more)" if more > 0 else shown

    def map(self, file: str, line: int, fields: list[str]) -> Contact:
        """The contact in ``fields`` (one row's values, in snapshot column order), or RejectRow."""
        if len(fields) < self.width:
            raise RejectRow(f"row has {len(fields)} values; expected {len(self.columns)}")
        email = fields[self.email_index].strip()
        if not email:
            raise RejectRow("email is empty")
        if not email.isascii():
            raise RejectRow(non_ascii_reason(email))
        email = email.lower()
        if len(email) > MAX_EMAIL_LENGTH or _EMAIL_RE.fullmatch(email) is None:
            raise RejectRow("invalid email address")

        dropped: list[str] | None = None
        out: dict[str, str] = {}
        for name, i in self.text_fields:
            value = fields[i].strip()
            if value:
                if len(value) <= MAX_STRING_LENGTH:
                    out[name] = value
                else:
                    dropped = _add(dropped, name)
        for name, i, clean, memo in self.special_fields:
            value = fields[i].strip()
            if value:
                cleaned = memo.get(value, _MISSING)
                if cleaned is _MISSING:
                    cleaned = clean(value)
                    if len(memo) < _MEMO_LIMIT:
                        memo[value] = cleaned
                if cleaned is not None:
                    out[name] = cleaned
                else:
                    dropped = _add(dropped, name)

        phone = None
        if self.phone_index is not None:
            value = fields[self.phone_index].strip()
            if value:
                phone = clean_phone(value)
                if phone is None:
                    dropped = _add(dropped, "phone")

        custom: dict[str, str] = {}
        for name, i in self.custom_fields:
            value = fields[i].strip()
            if value:
                if len(value) <= MAX_STRING_LENGTH:
                    custom[name] = value
                else:
                    dropped = _add(dropped, f"customProperties.{name}")

        status = changed_at = None
        if self.consent_index is not None:
            status = self.consent_values.get(normalise_consent_value(fields[self.consent_index]))
            if status is not None and self.consent_timestamp_index is not None:
                changed_at = to_rfc3339_utc(fields[self.consent_timestamp_index].strip())
                if changed_at is None:
                    status = None
            if status is None:
                dropped = _add(dropped, "consent")

        return Contact(email, out, phone, custom, status, changed_at, tuple(dropped) if dropped else (), file, line)
