"""Per-contact validation following reference §2.6. Returns every problem at once, as (field, code, message)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from .errors import FieldError
from .util import parse_ts

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
E164_RE = re.compile(r"^\+[1-9]\d{6,14}$")
COUNTRY_CODE_RE = re.compile(r"^[A-Za-z]{2}$")
BIRTHDATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PROPERTY_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,128}$")

STATUSES = ("subscribed", "unsubscribed", "nonSubscribed")
V3_STATUS_ALIASES = {"nonsubscribed": "nonSubscribed"}  # v3 error texts list the lowercase alias
CHANNEL_FOR_TYPE = {"email": "email", "phone": "sms"}
STRING_FIELDS = ("firstName", "lastName", "address", "city", "state", "postalCode", "country")
MAX_TAGS = 100
MAX_PROPERTIES = 200
MAX_PROPERTY_STRING = 2048
REQUIRED_MSG = "field required but not found in Json"


def date_field(v3: bool) -> str:
    return "statusDate" if v3 else "statusChangedAt"


def normalise_status(status: str, v3: bool) -> str:
    return V3_STATUS_ALIASES.get(status, status) if v3 else status


def validate_contact(body: Any, v3: bool) -> list[FieldError]:
    if not isinstance(body, dict):
        return [("", "invalid_type", "contact must be a JSON object")]
    errors: list[FieldError] = []
    _check_identifiers(body.get("identifiers"), v3, errors)
    _check_fields(body, v3, errors)
    _check_tags(body.get("tags"), errors)
    _check_properties(body.get("customProperties"), errors)
    return errors


def _check_identifiers(idents: Any, v3: bool, errors: list[FieldError]) -> None:
    if idents is None:
        errors.append(("identifiers", "required", REQUIRED_MSG))
        return
    if not isinstance(idents, list) or not idents:
        errors.append(("identifiers", "invalid_value", "must be a non-empty array"))
        return
    has_email = False
    for i, ident in enumerate(idents):
        path = f"identifiers[{i}]"
        if not isinstance(ident, dict):
            errors.append((path, "invalid_type", "must be an object"))
            continue
        kind = ident.get("type")
        if kind not in CHANNEL_FOR_TYPE:
            code = "required" if kind is None else "invalid_value"
            errors.append((f"{path}.type", code, "must be one of: email, phone"))
        has_email = has_email or kind == "email"
        _check_identifier_id(path, kind, ident.get("id"), errors)
        _check_channels(path, kind, ident.get("channels"), v3, errors)
        welcome = ident.get("sendWelcomeMessage")
        if welcome is not None and not isinstance(welcome, bool):
            errors.append((f"{path}.sendWelcomeMessage", "invalid_type", "must be a boolean"))
    if not has_email:
        errors.append(("identifiers", "required", "an identifier of type email is required"))


def _check_identifier_id(path: str, kind: Any, value: Any, errors: list[FieldError]) -> None:
    if not isinstance(value, str) or not value:
        errors.append((f"{path}.id", "required", REQUIRED_MSG))
    elif kind == "email" and not EMAIL_RE.match(value):
        errors.append((f"{path}.id", "invalid_format", "must be a valid email address"))
    elif kind == "phone" and not E164_RE.match(value):
        errors.append((f"{path}.id", "invalid_format", "must be an E.164 phone number, e.g. +14155550123"))


def _check_channels(path: str, kind: Any, channels: Any, v3: bool, errors: list[FieldError]) -> None:
    if channels is None:
        if v3:  # v3 schema: channels required on every identifier (recorded per-item 400, reference §3.3)
            errors.append((f"{path}.channels", "required", REQUIRED_MSG))
        return
    if not isinstance(channels, dict):
        errors.append((f"{path}.channels", "invalid_type", "must be an object"))
        return
    expected = CHANNEL_FOR_TYPE.get(kind)
    for name, entry in channels.items():
        cpath = f"{path}.channels.{name}"
        if expected and name != expected:
            errors.append((cpath, "invalid_value", f"channel must be '{expected}' for a {kind} identifier"))
            continue
        if not isinstance(entry, dict):
            errors.append((cpath, "invalid_type", "must be an object"))
            continue
        status = entry.get("status")
        if status is None:
            if not v3:  # 2026: status required; v3 has the schema default "subscribed"
                errors.append((f"{cpath}.status", "required", REQUIRED_MSG))
        elif not isinstance(status, str) or normalise_status(status, v3) not in STATUSES:
            errors.append((f"{cpath}.status", "invalid_value", "must be one of: " + ", ".join(STATUSES)))
        stamp = entry.get(date_field(v3))
        if stamp is not None and parse_ts(stamp) is None:
            errors.append((f"{cpath}.{date_field(v3)}", "invalid_format", "must be an RFC 3339 date-time"))


def _check_fields(body: dict, v3: bool, errors: list[FieldError]) -> None:
    for name in STRING_FIELDS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors.append((name, "invalid_type", "must be a string"))
    code = body.get("countryCode")
    if code is not None and (not isinstance(code, str) or not COUNTRY_CODE_RE.match(code)):
        errors.append(("countryCode", "invalid_format", "must be a 2-letter ISO 3166-1 alpha-2 code"))
    gender = body.get("gender")
    if gender is not None and gender not in ("m", "f"):
        errors.append(("gender", "invalid_value", "must be one of: m, f"))
    birthdate = body.get("birthdate")
    if birthdate is not None and not _is_date(birthdate):
        errors.append(("birthdate", "invalid_format", "must be a date in YYYY-MM-DD format"))
    created = body.get("createdAt")
    if not v3 and created is not None and parse_ts(created) is None:
        errors.append(("createdAt", "invalid_format", "must be an RFC 3339 date-time"))


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or not BIRTHDATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _check_tags(tags: Any, errors: list[FieldError]) -> None:
    if tags is None:
        return
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        errors.append(("tags", "invalid_type", "must be an array of non-empty strings"))
    elif len(tags) > MAX_TAGS:
        errors.append(("tags", "too_many", f"at most {MAX_TAGS} tags are allowed"))


def _check_properties(props: Any, errors: list[FieldError]) -> None:
    if props is None:
        return
    if not isinstance(props, dict):
        errors.append(("customProperties", "invalid_type", "must be an object"))
        return
    if len(props) > MAX_PROPERTIES:
        errors.append(("customProperties", "too_many", f"at most {MAX_PROPERTIES} custom properties are allowed"))
    for name, value in props.items():
        path = f"customProperties.{name}"
        if not PROPERTY_NAME_RE.match(name):
            errors.append((path, "invalid_format", "name must match ^[A-Za-z0-9_]{1,128}$"))
        elif not _valid_property_value(value):
            message = f"must be a scalar or an array of strings; strings <= {MAX_PROPERTY_STRING} chars"
            errors.append((path, "invalid_value", message))


def _valid_property_value(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return len(value) <= MAX_PROPERTY_STRING
    if isinstance(value, list):
        return all(isinstance(v, str) and len(v) <= MAX_PROPERTY_STRING for v in value)
    return False  # nested objects are not supported (reference §2.6)


def validate_tag_request(body: Any) -> list[FieldError]:
    """2026 ``/contacts/tags``: tags 1..100, at least one selector, each selector <= 250 entries."""
    if not isinstance(body, dict):
        return [("", "invalid_type", "body must be a JSON object")]
    errors: list[FieldError] = []
    tags = body.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t for t in tags):
        errors.append(("tags", "required" if tags is None else "invalid_value", "1..100 non-empty strings required"))
    elif len(tags) > MAX_TAGS:
        errors.append(("tags", "too_many", f"at most {MAX_TAGS} tags are allowed"))
    selectors = [name for name in ("emails", "contactIDs", "phones", "segmentID") if body.get(name)]
    if not selectors:
        errors.append(("emails", "required", "one of emails, contactIDs, phones or segmentID is required"))
    for name in ("emails", "contactIDs", "phones"):
        values = body.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            errors.append((name, "invalid_type", "must be an array of strings"))
        elif len(values) > 250:
            errors.append((name, "too_many", "at most 250 entries are allowed"))
        elif name == "phones" and not all(E164_RE.match(v) for v in values):
            errors.append((name, "invalid_format", "phones must be E.164"))
    return errors
