"""An export's mapping compiled into Python functions: a row's fields → (email, payload bytes, dropped field names).

Planning runs this once per row that is not recognised unchanged (a million times on a first run). The reference
is ``ContactMapper.map`` (shared/contacts.py) followed by ``build_contact_payload`` (shared/omnisend/payloads.py):
same checks, same cleaning, same reasons, the same payload key for key and in the same order (the payload's bytes
are its fingerprint), the same dropped names in the same order. The planner's equivalence test
(tests/integration/test_plan_fast_path.py) plans with both and compares every byte; tests/unit/test_row_payloads.py
compares them row by row over messy rows for every kind of mapping.

Why generated source: the reference walks tuples of (name, column, cleaner) per row and builds a ``Contact`` that is
then copied into a dict. Unrolled for one export's mapping (columns as constants) the same work costs about 40 %
less. Why msgspec Structs instead of a dict: the reference's ``if value: payload[key] = value`` per field is most of
what is left; a Struct per export, built with every value at once and encoded with its defaults left out, does the
same in C (payload and encoding ≈ 23.7k instead of 29.9k instructions per row on the benchmark's rows; the bytes are
the same, which the tests check). Together they bring a full plan near its target (issue 12).

The same technique as ``dataclasses`` and ``collections.namedtuple``: only trusted text goes into the source (field
names from CONTACT_FIELDS, column positions, generated local names); every value that comes from the definition file
(custom property names, tags, consent values) is passed in the namespace, never spliced into the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from shared.contacts import (
    _MEMO_LIMIT,
    EMAIL_DOMAIN_RE,
    EMAIL_LOCAL_RE,
    MAX_EMAIL_LENGTH,
    MAX_LOCAL_LENGTH,
    MAX_STRING_LENGTH,
    ContactMapper,
    _add,
    clean_phone,
    non_ascii_reason,
    to_rfc3339_utc,
)
from shared.errors import RejectRow
from shared.exports import ExportDefinition, normalise_consent_value
from shared.omnisend.limits import API_2026, API_V3
from shared.omnisend.payloads import OLD_STATUS_DATE, V3_PHONE_SMS_CHANNEL

# fields -> (email, payload JSON, dropped names or None), or RejectRow. Two per export: see RowPayloads.
RowPayload = Callable[[list[str]], tuple[str, bytes, "list[str] | None"]]


def _cleaned(memo: dict, clean: Callable[[str], str | None], cell: str) -> str | bool:
    """What a special field's cell becomes, remembered by the cell as read: the cleaned value, "" for an empty cell
    (nothing sent, nothing dropped) or False for a value the cleaner refuses (the field is dropped)."""
    value = cell.strip()
    result = (clean(value) or False) if value else ""
    if len(memo) < _MEMO_LIMIT:
        memo[cell] = result
    return result


FUNCTIONS = (("row_payload_short", True), ("row_payload", False))


class RowPayloads(NamedTuple):
    """The compiled pair: ``short`` for a row known to hold no field longer than MAX_STRING_LENGTH (its length checks
    left out), ``checked`` for any row. Both take the row's fields."""

    short: RowPayload
    checked: RowPayload
    source: str  # to read when debugging: a traceback names "<row payload of export ...>", no file on disk


def compile_row_payload(mapper: ContactMapper, api_version: str) -> RowPayloads:
    """The functions for ``mapper``'s export and columns: they raise RejectRow exactly where ``mapper.map`` does."""
    export: ExportDefinition = mapper.export
    if api_version not in (API_2026, API_V3):
        raise ValueError(f"unknown Omnisend API version {api_version!r}")
    ns: dict = {
        "RejectRow": RejectRow,
        "non_ascii_reason": non_ascii_reason,
        "local_match": EMAIL_LOCAL_RE.fullmatch,
        "domain_match": EMAIL_DOMAIN_RE.fullmatch,
        "DOMAINS": {},
        "_add": _add,
        "clean_phone": clean_phone,
        "to_rfc3339_utc": to_rfc3339_utc,
        "normalise_consent_value": normalise_consent_value,
        "WELCOME": export.send_welcome_message,
        "OLD": OLD_STATUS_DATE,
        "NEW_STATUS": export.new_contact_status,
        "TAGS": list(export.tags),
        "cleaned": _cleaned,
        "CONSENT_VALUES": mapper.consent_values,
        "WIDTH_REASON": f"row has {{}} values; expected {len(mapper.columns)}",
        "SMS": {"sms": V3_PHONE_SMS_CHANNEL},  # one dict for every payload: encoded, never changed
        "encode": msgspec.json.encode,
        **_structs(mapper),
    }
    for k, (_, _, clean, _) in enumerate(mapper.special_fields):
        # Its own memo (not the mapper's), keyed by the cell as read: one get() per row and no strip (see _cleaned).
        ns[f"clean{k}"], ns[f"memo{k}"] = clean, {}
    for k, (name, _) in enumerate(mapper.custom_fields):
        ns[f"DROPPED_PROP{k}"] = f"customProperties.{name}"
    short, checked = (_function(name, mapper, api_version, known_short) for name, known_short in FUNCTIONS)
    source = f"{short}\n\n{checked}"
    exec(compile(source, f"<row payload of export {export.name!r}>", "exec"), ns)
    return RowPayloads(ns[FUNCTIONS[0][0]], ns[FUNCTIONS[1][0]], source)


def _text(i: int, short: bool, var: str, dropped: str) -> list[str]:
    """A plain text field into ``var``: trimmed, "" (left out of the payload) when empty or, unless the row is
    known short, too long (then dropped)."""
    if short:
        return [f"    {var} = f[{i}].strip()"]
    return [
        f"    {var} = f[{i}].strip()",
        f"    if len({var}) > {MAX_STRING_LENGTH}:",
        f"        d = _add(d, {dropped})",
        f"        {var} = ''",
    ]


def _function(fname: str, mapper: ContactMapper, api_version: str, short: bool) -> str:
    export = mapper.export
    code = [
        f"def {fname}(f):",
        f"    if len(f) < {mapper.width}:",
        "        raise RejectRow(WIDTH_REASON.format(len(f)))",
        f"    email = f[{mapper.email_index}].strip()",
        "    if not email:",
        '        raise RejectRow("email is empty")',
        "    if not email.isascii():",
        "        raise RejectRow(non_ascii_reason(email))",
        "    email = email.lower()",
        # _EMAIL_RE in two halves (its local part holds no "@" and its domain none either): the local part by a
        # check in C for the common all-alphanumeric-and-dots case, else the regex; the domain remembered per
        # snapshot (a few domains cover most rows). The regex over the whole address cost ~0.6 µs a row.
        "    local, _, domain = email.partition('@')",
        f"    if len(email) > {MAX_EMAIL_LENGTH} or len(local) > {MAX_LOCAL_LENGTH}:",
        '        raise RejectRow("invalid email address")',
        "    if not (local.replace('.', '').isalnum() and local[0] != '.' and local[-1] != '.' and '..' not in local):",
        "        if local_match(local) is None:",
        '            raise RejectRow("invalid email address")',
        "    ok = DOMAINS.get(domain)",
        "    if ok is None:",
        "        ok = domain_match(domain) is not None",
        f"        if len(DOMAINS) < {_MEMO_LIMIT}:",
        "            DOMAINS[domain] = ok",
        "    if not ok:",
        '        raise RejectRow("invalid email address")',
        "    d = None",
        "    ch = None",
    ]
    # The values in the reference's order (which is also the order of the dropped names): fields, phone, custom
    # properties, consent. An empty value is "" and the encoder leaves it out, as the reference leaves the key out.
    for k, (name, i) in enumerate(mapper.text_fields):
        code += _text(i, short, f"t{k}", repr(name))
    for k, (name, i, _, _) in enumerate(mapper.special_fields):
        code += [
            f"    s{k} = memo{k}.get(f[{i}])",
            f"    if s{k} is None:",
            f"        s{k} = cleaned(memo{k}, clean{k}, f[{i}])",
            f"    if s{k} is False:",
            f"        d = _add(d, {name!r})",
            f"        s{k} = ''",
        ]
    if mapper.phone_index is not None:
        # Most numbers are already E.164 (the _PHONE_RE of shared/contacts.py: "+", then 7-15 ASCII digits not
        # starting with 0); checked in C here, the others go through clean_phone.
        code += [
            "    phone = None",
            f"    v = f[{mapper.phone_index}].strip()",
            "    if v:",
            "        n = v[1:]",
            "        if v[0] == '+' and n.isdigit() and n.isascii() and 7 <= len(n) <= 15 and n[0] != '0':",
            "            phone = v",
            "        else:",
            "            phone = clean_phone(v)",
            "            if phone is None:",
            "                d = _add(d, 'phone')",
        ]
    for k, (_, i) in enumerate(mapper.custom_fields):
        code += _text(i, short, f"u{k}", f"DROPPED_PROP{k}")
    status = "statusChangedAt" if api_version == API_2026 else "statusDate"
    new_status = f"    ch = {{'email': {{'status': NEW_STATUS, '{status}': OLD}}}}"
    if mapper.consent_index is not None:
        code += [
            "    ca = None",
            f"    st = CONSENT_VALUES.get(normalise_consent_value(f[{mapper.consent_index}]))",
        ]
        if mapper.consent_timestamp_index is not None:
            code += [
                "    if st is not None:",
                f"        ca = to_rfc3339_utc(f[{mapper.consent_timestamp_index}].strip())",
                "        if ca is None:",
                "            st = None",
            ]
        code += [
            "    if st is not None:",
            f"        ch = {{'email': {{'status': st, '{status}': ca or OLD}}}}",
            "    else:",
            "        d = _add(d, 'consent')",
        ]
        # 2026: without a mapped status, channels only when new contacts get another status than nonSubscribed;
        # v3: channels always (shared/omnisend/payloads.py).
        if api_version == API_V3 or export.new_contact_status != "nonSubscribed":
            code += ["    if ch is None:", "    " + new_status]
    elif api_version == API_V3 or export.new_contact_status != "nonSubscribed":
        code.append(new_status)
    # The identifiers: the email (with its channels), then the phone; v3 gives the phone its SMS channel.
    # A tuple encodes as the same JSON array as the reference's list, and costs less to build.
    email_id = "EmailId('email', email, WELCOME, ch)"
    if mapper.phone_index is not None:
        sms = ", SMS" if api_version == API_V3 else ""
        code.append(f"    ids = ({email_id}, PhoneId('phone', phone, WELCOME{sms})) if phone else ({email_id},)")
    else:
        code.append(f"    ids = ({email_id},)")
    values = ["ids"]
    values += [f"t{k}" for k in range(len(mapper.text_fields))]
    values += [f"s{k}" for k in range(len(mapper.special_fields))]
    if export.tags_in_payload:
        values.append("TAGS")
    if mapper.custom_fields:
        props = [f"u{k}" for k in range(len(mapper.custom_fields))]
        values.append(f"(Props({', '.join(props)}) if {' or '.join(props)} else None)")
    code.append(f"    return email, encode(Payload({', '.join(values)})), d")
    return "\n".join(code)


def _structs(mapper: ContactMapper) -> dict[str, type]:
    """The payload's shape for ``mapper``'s export: msgspec Structs whose fields are the reference's keys in its
    order, each defaulting to "" (or None) and left out when it holds its default: what the reference's ``if v:
    p[name] = v`` does, done by the encoder in C. Custom property names travel as renames (never as source).
    ``gc=False``: a payload never takes part in a reference cycle, so the collector need not track a million of them
    (~3 % fewer instructions per row)."""
    identifier = [("type", str), ("id", str), ("sendWelcomeMessage", bool), ("channels", object, None)]
    fields: list = [("identifiers", tuple)]
    fields += [(name, str, "") for name, _ in mapper.text_fields]
    fields += [(name, str, "") for name, _, _, _ in mapper.special_fields]
    if mapper.export.tags_in_payload:
        fields.append(("tags", object, None))
    names = {f"p{k}": name for k, (name, _) in enumerate(mapper.custom_fields)}
    if names:
        fields.append(("customProperties", object, None))
    return {
        "EmailId": msgspec.defstruct("EmailId", identifier, omit_defaults=True, gc=False),
        "PhoneId": msgspec.defstruct("PhoneId", identifier, omit_defaults=True, gc=False),
        "Props": msgspec.defstruct("Props", [(n, str, "") for n in names], omit_defaults=True, rename=names, gc=False),
        "Payload": msgspec.defstruct("Payload", fields, omit_defaults=True, gc=False),
    }
