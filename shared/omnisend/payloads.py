"""Contact payloads per API version, and the batch body. The consent rules live here (ARCHITECTURE §4 rule 4).

- Welcome messages: ``sendWelcomeMessage`` is false on every identifier unless the export asks for them
  (API 2026-03-15 defaults it to TRUE, so leaving it out would fire welcome automations on import).
- 2026-03-15, consent mapped     -> channels.email = {status, statusChangedAt: the row's timestamp}. Without a
                                    timestamp column the date is OLD_STATUS_DATE: the data then sets the status of
                                    NEW contacts only. Sending "now" instead would re-subscribe someone who
                                    unsubscribed in Omnisend after CI last saw them, on every run.
- 2026-03-15, nonSubscribed      -> no channels at all: Omnisend creates new contacts as nonSubscribed and never
                                    touches an existing contact's status.
- 2026-03-15, other new status   -> that status with statusChangedAt = OLD_STATUS_DATE, so an existing contact's
                                    newer status wins and only new contacts get it.
- v3 (channels required on every identifier, schema default "subscribed": never leave it implicit)
                                 -> channels.email = {status, statusDate}: the mapped consent and its timestamp,
                                    else new_contact_status with OLD_STATUS_DATE (an older date never overrides a
                                    newer one, so existing contacts keep their status). Phone: channels.sms is always
                                    nonSubscribed with OLD_STATUS_DATE: email consent is not SMS consent.

This runs once per contact (a million times in the benchmark): plain dict literals, no per-call validation.
"""

from __future__ import annotations

import json

from shared.contacts import Contact
from shared.exports import ExportDefinition
from shared.omnisend.limits import API_2026, API_V3

# A status date older than any real one: Omnisend keeps the newer of two status dates, so a status sent with this
# date applies to new contacts only and never overrides what an existing contact already has.
OLD_STATUS_DATE = "1970-01-01T00:00:00Z"
# v3: a phone identifier's SMS channel (email consent is not SMS consent).
V3_PHONE_SMS_CHANNEL = {"status": "nonSubscribed", "statusDate": OLD_STATUS_DATE}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def build_contact_payload(contact: Contact, export: ExportDefinition, api_version: str) -> dict:
    """One item of a contacts batch (the body POST /contacts would take) for ``api_version``."""
    welcome = export.send_welcome_message
    email_id: dict = {"type": "email", "id": contact.email, "sendWelcomeMessage": welcome}
    phone_id: dict | None = None
    if contact.phone:
        phone_id = {"type": "phone", "id": contact.phone, "sendWelcomeMessage": welcome}

    consent = contact.consent_status
    if api_version == API_2026:
        if consent is not None:
            email_id["channels"] = {
                "email": {"status": consent, "statusChangedAt": contact.consent_changed_at or OLD_STATUS_DATE}
            }
        elif export.new_contact_status != "nonSubscribed":
            email_id["channels"] = {"email": {"status": export.new_contact_status, "statusChangedAt": OLD_STATUS_DATE}}
    elif api_version == API_V3:
        if consent is not None:
            channel = {"status": consent, "statusDate": contact.consent_changed_at or OLD_STATUS_DATE}
        else:
            channel = {"status": export.new_contact_status, "statusDate": OLD_STATUS_DATE}
        email_id["channels"] = {"email": channel}
        if phone_id is not None:
            phone_id["channels"] = {"sms": dict(V3_PHONE_SMS_CHANNEL)}
    else:
        raise ValueError(f"unknown Omnisend API version {api_version!r}")

    payload: dict = {"identifiers": [email_id, phone_id] if phone_id is not None else [email_id]}
    if contact.fields:
        payload.update(contact.fields)
    if export.tags_in_payload:
        payload["tags"] = list(export.tags)
    if contact.custom_properties:
        payload["customProperties"] = dict(contact.custom_properties)
    return payload


def encode_batch_body(items: list[dict]) -> bytes:
    """The POST /batches body: compact UTF-8 JSON (non-ASCII kept as UTF-8, not \\u escapes: smaller batches)."""
    return _dumps({"method": "POST", "endpoint": "contacts", "items": items}).encode("utf-8")
