"""Contact payloads: exact shapes per API version and consent case (the consent promise, ARCHITECTURE §4 rule 4)."""

from __future__ import annotations

import pytest

from shared.contacts import Contact
from shared.exports import ConsentMapping, ExportDefinition, Source
from shared.omnisend import OLD_STATUS_DATE, build_contact_payload

CONSENT = ConsentMapping(column="Consent", timestamp_column="ConsentAt", values={"subscribed": ("yes",)})


def export(**overrides) -> ExportDefinition:
    base = {"name": "vip", "source": Source(container="ciexports"), "mapping": {"email": "EMail"}, "tags": ("ci-vip",)}
    return ExportDefinition(**(base | overrides))


def contact(**overrides) -> Contact:
    return Contact(**({"email": "jane@example.com"} | overrides))


# ---- API 2026-03-15 ----------------------------------------------------------------------------------------------


def test_2026_default_export_sends_no_channels_and_no_welcome():
    payload = build_contact_payload(contact(), export(), "2026-03-15")

    assert payload == {
        "identifiers": [{"type": "email", "id": "jane@example.com", "sendWelcomeMessage": False}],
        "tags": ["ci-vip"],
    }


def test_2026_new_contact_status_subscribed_is_sent_with_the_old_status_date():
    payload = build_contact_payload(contact(), export(new_contact_status="subscribed"), "2026-03-15")

    assert payload["identifiers"] == [
        {
            "type": "email",
            "id": "jane@example.com",
            "sendWelcomeMessage": False,
            "channels": {"email": {"status": "subscribed", "statusChangedAt": "1970-01-01T00:00:00Z"}},
        }
    ]
    assert OLD_STATUS_DATE == "1970-01-01T00:00:00Z"


def test_2026_mapped_consent_is_sent_with_its_timestamp():
    c = contact(consent_status="unsubscribed", consent_changed_at="2026-10-01T08:30:00Z")

    payload = build_contact_payload(c, export(consent=CONSENT, new_contact_status="subscribed"), "2026-03-15")

    assert payload["identifiers"][0]["channels"] == {
        "email": {"status": "unsubscribed", "statusChangedAt": "2026-10-01T08:30:00Z"}
    }


def test_2026_mapped_consent_without_timestamp_applies_to_new_contacts_only():
    c = contact(consent_status="subscribed")

    payload = build_contact_payload(c, export(consent=CONSENT), "2026-03-15")

    # Dated "now" it would re-subscribe, on every run, someone who unsubscribed in Omnisend since.
    channel = payload["identifiers"][0]["channels"]["email"]
    assert channel == {"status": "subscribed", "statusChangedAt": OLD_STATUS_DATE}


def test_2026_full_contact_with_phone_fields_and_custom_properties():
    c = contact(
        fields={"firstName": "Jane", "lastName": "Doe", "countryCode": "LT", "birthdate": "1990-02-03", "gender": "f"},
        phone="+37060012345",
        custom_properties={"loyalty_tier": "gold"},
    )

    payload = build_contact_payload(c, export(send_welcome_message=True, tags=("ci-vip", "q4")), "2026-03-15")

    assert payload == {
        "identifiers": [
            {"type": "email", "id": "jane@example.com", "sendWelcomeMessage": True},
            {"type": "phone", "id": "+37060012345", "sendWelcomeMessage": True},
        ],
        "firstName": "Jane",
        "lastName": "Doe",
        "countryCode": "LT",
        "birthdate": "1990-02-03",
        "gender": "f",
        "tags": ["ci-vip", "q4"],
        "customProperties": {"loyalty_tier": "gold"},
    }


def test_2026_phone_identifier_never_carries_channels_even_with_consent():
    c = contact(phone="+37060012345", consent_status="subscribed", consent_changed_at="2026-10-01T08:30:00Z")

    payload = build_contact_payload(c, export(consent=CONSENT), "2026-03-15")

    assert payload["identifiers"][1] == {"type": "phone", "id": "+37060012345", "sendWelcomeMessage": False}


def test_export_without_tags_sends_no_tags_key():
    payload = build_contact_payload(contact(), export(tags=()), "2026-03-15")

    assert "tags" not in payload and "customProperties" not in payload


# ---- API v3 ------------------------------------------------------------------------------------------------------


def test_v3_default_export_states_nonsubscribed_explicitly_with_the_old_date():
    payload = build_contact_payload(contact(), export(), "v3")

    assert payload == {
        "identifiers": [
            {
                "type": "email",
                "id": "jane@example.com",
                "sendWelcomeMessage": False,
                "channels": {"email": {"status": "nonSubscribed", "statusDate": "1970-01-01T00:00:00Z"}},
            }
        ],
        "tags": ["ci-vip"],
    }


def test_v3_mapped_consent_is_sent_with_its_timestamp_on_email_only():
    c = contact(phone="+37060012345", consent_status="subscribed", consent_changed_at="2026-10-01T08:30:00Z")

    payload = build_contact_payload(c, export(consent=CONSENT), "v3")

    assert payload["identifiers"] == [
        {
            "type": "email",
            "id": "jane@example.com",
            "sendWelcomeMessage": False,
            "channels": {"email": {"status": "subscribed", "statusDate": "2026-10-01T08:30:00Z"}},
        },
        {
            "type": "phone",
            "id": "+37060012345",
            "sendWelcomeMessage": False,
            "channels": {"sms": {"status": "nonSubscribed", "statusDate": "1970-01-01T00:00:00Z"}},
        },
    ]


def test_v3_phone_is_never_subscribed_to_sms_by_email_settings():
    c = contact(phone="+37060012345")

    payload = build_contact_payload(c, export(new_contact_status="subscribed"), "v3")

    assert payload["identifiers"][1]["channels"] == {
        "sms": {"status": "nonSubscribed", "statusDate": "1970-01-01T00:00:00Z"}
    }


def test_unknown_api_version_is_refused():
    with pytest.raises(ValueError, match="v4"):
        build_contact_payload(contact(), export(), "v4")


def test_payload_does_not_share_mutable_state_with_the_export():
    payload = build_contact_payload(contact(), export(), "2026-03-15")
    payload["tags"].append("changed")

    assert build_contact_payload(contact(), export(), "2026-03-15")["tags"] == ["ci-vip"]
