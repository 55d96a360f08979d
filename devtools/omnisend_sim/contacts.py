"""Contact store: upsert keyed on exact-case email, tag merge, channel-status rules, welcome counting.

Callers hold the simulator lock. Contacts use __slots__ and keep only what was written, so 100k+ contacts
stay cheap; every response shape is rendered on demand.
"""

from __future__ import annotations

from typing import Any

from .util import IdMaker, now_iso, parse_ts
from .validation import STRING_FIELDS, date_field, normalise_status

V3 = "v3"
PROFILE_FIELDS = (*STRING_FIELDS, "countryCode", "gender", "birthdate")


class Contact:
    __slots__ = (
        "created", "custom", "email", "email_date", "email_status", "fields", "id", "phone", "sms_date",
        "sms_status", "tags", "updated", "version", "welcome",
    )  # fmt: skip

    def __init__(self, cid: str, email: str, now: str, version: str) -> None:
        self.id = cid
        self.email = email
        self.created = self.updated = now
        self.version = version  # API version of the last write, for the inspection endpoint
        self.fields: dict[str, Any] | None = None
        self.tags: list[str] = []
        self.custom: dict[str, Any] | None = None
        self.email_status: str | None = None
        self.email_date: str | None = None
        self.phone: str | None = None
        self.sms_status: str | None = None
        self.sms_date: str | None = None
        self.welcome = 0


class ContactStore:
    def __init__(self, config: Any = None) -> None:
        # The simulator's SimConfig (read at each write, so configure() takes effect at once); None: the defaults.
        self.config = config
        self.by_email: dict[str, Contact] = {}
        self.by_id: dict[str, Contact] = {}
        self.by_phone: dict[str, Contact] = {}
        self.welcome_messages = 0
        self._ids = IdMaker()

    # ---- writes -------------------------------------------------------------------------------------------
    def upsert(self, item: dict[str, Any], version: str) -> tuple[Contact, bool]:
        """Apply a validated contact body. Returns (contact, created)."""
        v3 = version == V3
        now = now_iso()
        email_ident = next(i for i in item["identifiers"] if i.get("type") == "email")
        phone_ident = next((i for i in item["identifiers"] if i.get("type") == "phone"), None)
        email = email_ident["id"]
        contact = self.by_email.get(email)
        created = contact is None
        if contact is None:
            contact = Contact(self._ids.new(), email, now, version)
            self.by_email[email] = contact
            self.by_id[contact.id] = contact
        contact.updated = now
        contact.version = version

        became_subscribed = self._apply_email_channel(contact, email_ident, v3, created, now)
        # 2026 default for sendWelcomeMessage is true, v3 default false (reference §6.1).
        wants_welcome = email_ident.get("sendWelcomeMessage", not v3)
        if wants_welcome and (created or became_subscribed):
            contact.welcome += 1
            self.welcome_messages += 1
        if phone_ident is not None:
            self._apply_phone(contact, phone_ident, v3, now)
        self._apply_profile(contact, item, v3)
        return contact, created

    def _switch(self, name: str) -> bool:
        return bool(getattr(self.config, name, False))

    def _apply_email_channel(self, contact: Contact, ident: dict, v3: bool, created: bool, now: str) -> bool:
        before = contact.email_status
        if not v3 and not (ident.get("channels") or {}).get("email"):
            if created and self._switch("no_channels_new_subscribed"):
                contact.email_status, contact.email_date = "subscribed", now
                return False
            if not created and self._switch("no_channels_resets_status"):
                contact.email_status, contact.email_date = "nonSubscribed", now
                return False
        status, stamp = _resolve_status(ident, "email", v3, created, now, contact.email_status, contact.email_date,
                                        older_overrides=self._switch("older_status_date_overrides"))
        if status is not None:
            contact.email_status, contact.email_date = status, stamp
        return not created and before != "subscribed" and contact.email_status == "subscribed"

    def _apply_phone(self, contact: Contact, ident: dict, v3: bool, now: str) -> None:
        phone = ident["id"]
        owner = self.by_phone.get(phone)
        if owner is not None and owner is not contact:
            return  # identifier owned by another contact: silently dropped (reference §2.3)
        if contact.phone != phone:
            if contact.phone is not None:
                self.by_phone.pop(contact.phone, None)
            contact.phone, contact.sms_status, contact.sms_date = phone, None, None
            self.by_phone[phone] = contact
        is_new = contact.sms_status is None
        status, stamp = _resolve_status(ident, "sms", v3, is_new, now, contact.sms_status, contact.sms_date,
                                        older_overrides=self._switch("older_status_date_overrides"))
        if status is not None:
            contact.sms_status, contact.sms_date = status, stamp

    def _apply_profile(self, contact: Contact, item: dict, v3: bool) -> None:
        for name in PROFILE_FIELDS:
            value = item.get(name)
            if value is not None:
                if contact.fields is None:
                    contact.fields = {}
                contact.fields[name] = value
        tags = item.get("tags")
        if tags:
            if self._switch("upsert_tags_replace"):
                contact.tags = []
            merge_tags(contact, tags)
        props = dict(item.get("customProperties") or {})
        if not v3 and item.get("createdAt") is not None:
            props["externalCreated"] = item["createdAt"]  # reference §2.1
        if props:
            if contact.custom is None:
                contact.custom = {}
            contact.custom.update(props)

    def seed(self, spec: dict[str, Any]) -> Contact:
        """Create or update a contact directly (inspection API), bypassing the status rules; tags are merged."""
        email = spec["email"]
        version = spec.get("api_version") or V3
        now = now_iso()
        contact = self.by_email.get(email)
        if contact is None:
            contact = Contact(spec.get("contact_id") or self._ids.new(), email, spec.get("created_at") or now, version)
            self.by_email[email] = contact
            self.by_id[contact.id] = contact
        # A new contact defaults to subscribed/now; an existing one keeps its status unless one is given.
        if spec.get("status") or spec.get("status_date") or contact.email_status is None:
            contact.email_status = spec.get("status") or contact.email_status or "subscribed"
            contact.email_date = spec.get("status_date") or now
        if spec.get("tags"):
            merge_tags(contact, spec["tags"])
        if spec.get("fields"):
            contact.fields = {**(contact.fields or {}), **spec["fields"]}
        if spec.get("custom_properties"):
            contact.custom = {**(contact.custom or {}), **spec["custom_properties"]}
        if spec.get("phone"):
            self.by_phone[spec["phone"]] = contact
            contact.phone = spec["phone"]
            contact.sms_status = spec.get("sms_status") or "nonSubscribed"
            contact.sms_date = spec.get("status_date") or now
        return contact

    def tag_operation(self, body: dict[str, Any], add: bool) -> int:
        """Apply a 2026 /contacts/tags request; unknown selectors are silently ignored. Returns contacts touched."""
        targets: dict[str, Contact] = {}  # union of selectors, each contact once
        for email in body.get("emails") or ():
            if (c := self.by_email.get(email)) is not None:
                targets[c.id] = c
        for cid in body.get("contactIDs") or ():
            if (c := self.by_id.get(cid)) is not None:
                targets[c.id] = c
        for phone in body.get("phones") or ():
            if (c := self.by_phone.get(phone)) is not None:
                targets[c.id] = c
        now = now_iso()
        for contact in targets.values():
            if add:
                merge_tags(contact, body["tags"])
            elif self._switch("untag_removes_all"):
                contact.tags = []
            else:
                drop = set(body["tags"])
                contact.tags = [t for t in contact.tags if t not in drop]
            contact.updated = now
        return len(targets)


def merge_tags(contact: Contact, tags: list[str]) -> None:
    present = set(contact.tags)
    for tag in tags:
        if tag not in present:
            contact.tags.append(tag)
            present.add(tag)


def _resolve_status(
    ident: dict, channel: str, v3: bool, is_new: bool, now: str, stored: str | None, stored_date: str | None,
    older_overrides: bool = False,
) -> tuple[str | None, str | None]:
    """New (status, date) for one channel, or (None, None) to leave it unchanged. Rules: reference §2.2/§7."""
    entry = (ident.get("channels") or {}).get(channel)
    if entry is None and not v3:
        # 2026: no channel given -> a new contact is nonSubscribed, an existing one keeps its status.
        return ("nonSubscribed", now) if is_new else (None, None)
    entry = entry or {}
    # v3 pitfall: the schema default for an omitted status is "subscribed".
    status = normalise_status(entry.get("status") or "subscribed", v3)
    stamp = entry.get(date_field(v3)) or now
    if is_new or stored is None or stored_date is None:
        return status, stamp
    new_ts, old_ts = parse_ts(stamp), parse_ts(stored_date)
    if old_ts is None or older_overrides:
        return status, stamp
    if v3 and new_ts <= old_ts:
        return None, None  # v3: last write by statusDate wins; older or equal changes nothing
    if not v3 and new_ts < old_ts:
        return None, None  # 2026: a statusChangedAt older than the stored one is ignored
    return status, stamp


# ---- rendering ----------------------------------------------------------------------------------------------
def _identifiers(contact: Contact, date_key: str | tuple[str, ...]) -> list[dict[str, Any]]:
    keys = (date_key,) if isinstance(date_key, str) else date_key
    out = [{
        "id": contact.email, "type": "email",
        "channels": {"email": {"status": contact.email_status, **{k: contact.email_date for k in keys}}},
    }]  # fmt: skip
    if contact.phone:
        out.append({
            "id": contact.phone, "type": "phone",
            "channels": {"sms": {"status": contact.sms_status, **{k: contact.sms_date for k in keys}}},
        })  # fmt: skip
    return out


def render_2026(contact: Contact) -> dict[str, Any]:
    fields = contact.fields or {}
    statuses = [{"channel": "email", "status": contact.email_status, "statusChangedAt": contact.email_date}]
    if contact.phone:
        statuses.append({"channel": "sms", "status": contact.sms_status, "statusChangedAt": contact.sms_date})
    return {
        "id": contact.id,
        "email": contact.email,
        "phone": [contact.phone] if contact.phone else [],
        **{name: fields.get(name) for name in PROFILE_FIELDS},
        "tags": list(contact.tags),
        "customProperties": dict(contact.custom or {}),
        "identifiers": _identifiers(contact, "statusChangedAt"),
        "status": contact.email_status,
        "statuses": statuses,
        "optIns": [],
        "consents": [],
        "segments": [],
        "createdAt": contact.created,
        "updatedAt": contact.updated,
    }


def render_v3(contact: Contact) -> dict[str, Any]:
    fields = contact.fields or {}
    statuses = [{"channel": "email", "status": contact.email_status, "date": contact.email_date}]
    if contact.phone:
        statuses.append({"channel": "sms", "status": contact.sms_status, "date": contact.sms_date})
    body = {"email": contact.email, "contactID": contact.id, "createdAt": contact.created}
    body.update({name: fields.get(name, "") for name in PROFILE_FIELDS})
    body.update({
        "phone": contact.phone,
        "status": contact.email_status,
        "tags": list(contact.tags),
        "segments": [],
        "statuses": statuses,
        "optIns": [],
        "consents": None,
        "customProperties": dict(contact.custom) if contact.custom else None,
        "identifiers": _identifiers(contact, "statusDate"),
    })  # fmt: skip
    return body


def render_state(contact: Contact) -> dict[str, Any]:
    """Inspection view: both date names, so tests can read either."""
    return {
        "id": contact.id,
        "email": contact.email,
        "status": contact.email_status,
        "statusDate": contact.email_date,
        "statusChangedAt": contact.email_date,
        "phone": contact.phone,
        "identifiers": _identifiers(contact, ("statusDate", "statusChangedAt")),
        "tags": list(contact.tags),
        "fields": dict(contact.fields or {}),
        "customProperties": dict(contact.custom or {}),
        "createdAt": contact.created,
        "updatedAt": contact.updated,
        "apiVersion": contact.version,
        "welcomeMessages": contact.welcome,
    }
