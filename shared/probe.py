"""The consent probe: check on the real brand what Omnisend does not document (ARCHITECTURE §4 rule 12).

``python -m shared probe --email-domain DOMAIN --yes`` uses three probe contacts in a domain the operator owns,
``omnisend-exporter-probe-<n>-<stamp>@DOMAIN`` (a fresh stamp per probe, so "a new contact" really is new), and
reports each assumption the exporter relies on as *confirmed* or *contradicted* (or *notApplicable* on an API
version that cannot express it). Its result goes to ``exporter-state/_probe/<apiVersion>.json``; check-config shows
it, and an export relying on a contradicted assumption refuses to start (``ensure_assumptions``) until its settings
avoid it. Every probe contact carries ``sendWelcomeMessage: false``; the API cannot delete contacts, so the probe
prints them for the operator to delete in Omnisend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import names
from shared.errors import ConfigError, FailRun
from shared.exports import ExportDefinition
from shared.omnisend.limits import API_2026, API_V3
from shared.omnisend.payloads import OLD_STATUS_DATE
from shared.storage import NotFound, ObjectStore

CONFIRMED = "confirmed"
CONTRADICTED = "contradicted"
NOT_APPLICABLE = "notApplicable"
PROBE_PREFIX = "omnisend-exporter-probe"
TAG_A, TAG_B = "omnisend-exporter-probe-a", "omnisend-exporter-probe-b"
TAG_KEEP, TAG_DROP = "omnisend-exporter-probe-keep", "omnisend-exporter-probe-drop"
# /contacts/tags is asynchronous at Omnisend (202). The probe polls the contact until the untag shows, for at most
# this long: batches and tag operations normally finish within seconds.
ASYNC_WAIT_SECONDS = 60.0
ASYNC_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Assumption:
    id: str
    text: str
    avoid: str  # what an export changes to stop relying on it


NO_CHANNELS_KEEPS_STATUS = Assumption(
    "noChannelsKeepsStatus", "a contact posted without channels keeps an existing 'subscribed' status",
    "no export setting avoids it on API 2026-03-15 (every contact is posted without channels when newContactStatus "
    "is nonSubscribed); switch to OMNISEND_API_VERSION=v3, which always sends a status dated 1970, and probe v3",
)
NEW_WITHOUT_CHANNELS = Assumption(
    "newWithoutChannelsIsNonSubscribed", "a new contact posted without channels is created 'nonSubscribed'",
    "set the export's newContactStatus to 'unsubscribed', or switch to OMNISEND_API_VERSION=v3 (a dated status is "
    "then always sent)",
)
OLDER_DATE_IGNORED = Assumption(
    "olderStatusDateIgnored", "a status sent with an older date does not override a newer one",
    "on API 2026-03-15: use newContactStatus 'nonSubscribed' and no consent mapping (no status is sent at all); "
    "on v3 every contact carries a status, so no setting avoids it",
)
UPSERT_TAGS_MERGE = Assumption(
    "upsertTagsMerge", "tags in a contact upsert are added to the contact's tags, not replacing them",
    'set the export\'s "tagsVia": "tagsEndpoint" (tags applied with POST /contacts/tags after the batches, API '
    "2026-03-15), or remove its tags",
)
UNTAG_ONLY_GIVEN = Assumption(
    "untagRemovesOnlyGivenTags", "DELETE /contacts/tags removes only the tags it names",
    'set the export\'s "onExit": "ignore"',
)
ASSUMPTIONS = (NO_CHANNELS_KEEPS_STATUS, NEW_WITHOUT_CHANNELS, OLDER_DATE_IGNORED, UPSERT_TAGS_MERGE,
               UNTAG_ONLY_GIVEN)
BY_ID = {a.id: a for a in ASSUMPTIONS}


def result_name(api_version: str) -> str:
    return f"_probe/{api_version}.json"


# ------------------------------------------------------------------------------------------ what exports rely on


def relied_on(export: ExportDefinition, api_version: str) -> list[Assumption]:
    """The undocumented behaviours this export's payloads and steps depend on (see shared/omnisend/payloads.py)."""
    used: list[Assumption] = []
    sends_status = export.consent is not None or export.new_contact_status != "nonSubscribed"
    if api_version == API_2026 and export.new_contact_status == "nonSubscribed":
        used += [NO_CHANNELS_KEEPS_STATUS, NEW_WITHOUT_CHANNELS]
    if api_version == API_V3 or sends_status:
        used.append(OLDER_DATE_IGNORED)
    if export.tags_in_payload:
        used.append(UPSERT_TAGS_MERGE)
    if api_version == API_2026 and export.tags and export.on_exit == "untag":
        used.append(UNTAG_ONLY_GIVEN)
    return used


def read_result(store: ObjectStore, api_version: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.read(names.STATE_CONTAINER, result_name(api_version)))
    except NotFound:
        return None


def assess(export: ExportDefinition, api_version: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """For check-config: each assumption the export relies on with its probe verdict (or 'neverProbed'),
    plus warnings to print."""
    verdicts = {a.id: (result or {}).get("assumptions", {}).get(a.id, {}).get("result", "neverProbed")
                for a in relied_on(export, api_version)}
    warnings = []
    for aid, verdict in verdicts.items():
        if verdict == CONTRADICTED:
            warnings.append(f"relies on '{BY_ID[aid].text}', which the probe CONTRADICTED on API {api_version}: "
                            f"the export refuses to run; {BY_ID[aid].avoid}")
        elif verdict != CONFIRMED:
            warnings.append(f"relies on '{BY_ID[aid].text}', never probed on API {api_version}: run "
                            "python -m shared probe --email-domain YOUR-DOMAIN --yes")
    return {"assumptions": verdicts, "warnings": warnings}


def ensure_assumptions(store: ObjectStore, export: ExportDefinition, api_version: str) -> None:
    """Refuse to start a run of an export that relies on a behaviour the probe contradicted on this API version
    (or that asks for tags through an endpoint this API version does not have)."""
    if export.tags and export.tags_via == "tagsEndpoint" and api_version != API_2026:
        raise ConfigError(f"export {export.name!r}: tagsVia 'tagsEndpoint' needs OMNISEND_API_VERSION=2026-03-15; "
                          f"API {api_version} has no /contacts/tags endpoint (use tagsVia 'upsert')",
                          source="exports")
    result = read_result(store, api_version)
    if result is None:
        return
    contradicted = [a for a in relied_on(export, api_version)
                    if result.get("assumptions", {}).get(a.id, {}).get("result") == CONTRADICTED]
    if contradicted:
        reasons = "; ".join(f"'{a.text}' was contradicted ({a.avoid})" for a in contradicted)
        raise AssumptionContradicted(
            f"export {export.name!r} is not run: the consent probe of {result.get('probedAt')} on API {api_version} "
            f"found Omnisend behaving otherwise than this export relies on: {reasons}. Change the export, then run "
            f"it again (python -m shared check-config shows what it relies on)"
        )


class AssumptionContradicted(FailRun):
    """The brand's Omnisend does not behave as this export's settings need; running it could change consent."""

    exit_code = 2


# ------------------------------------------------------------------------------------------------- the probe


def probe_emails(domain: str, stamp: str) -> list[str]:
    return [f"{PROBE_PREFIX}-{n}-{stamp}@{domain}" for n in (1, 2, 3)]


def plan_text(domain: str, api_version: str, base_url: str) -> str:
    """What the probe will do, shown without --yes."""
    emails = probe_emails(domain, "<stamp>")
    return "\n".join([
        f"The probe checks, on the brand of the configured key ({base_url}, API {api_version}), the behaviours "
        "the exporter relies on but Omnisend does not document:",
        *[f"  - {a.text}" for a in ASSUMPTIONS],
        "It creates three contacts in your domain (welcome messages off), changes their status and tags, and "
        "leaves them there (Omnisend's API cannot delete contacts):",
        *[f"  {e}" for e in emails],
        "Use a domain you own; no email is sent to these addresses. Run again with --yes to do it.",
    ])


def _email_status(contact: dict[str, Any] | None) -> str | None:
    if not contact:
        return None
    for ident in contact.get("identifiers") or ():
        channel = ((ident.get("channels") or {}).get("email")) if isinstance(ident, dict) else None
        if channel and channel.get("status"):
            return channel["status"]
    return contact.get("status")


def _tags(contact: dict[str, Any] | None) -> list[str]:
    return list((contact or {}).get("tags") or [])


class _Probe:
    def __init__(self, client, api_version: str, emails: list[str], wait_seconds: float,
                 sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.client, self.v3, self.emails = client, api_version == API_V3, emails
        self.wait_seconds, self.sleep, self.clock = wait_seconds, sleep, clock
        self.now = datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.last: dict[str, dict[str, Any]] = {}  # email -> the answer to its last POST /contacts

    def post(self, email: str, status: str | None = None, date: str | None = None, tags: list[str] | None = None):
        ident: dict[str, Any] = {"type": "email", "id": email, "sendWelcomeMessage": False}
        if status is not None:
            ident["channels"] = {"email": {"status": status, ("statusDate" if self.v3 else "statusChangedAt"): date}}
        body: dict[str, Any] = {"identifiers": [ident]}
        if tags:
            body["tags"] = tags
        self.last[email] = self.client.post_contact(body)

    def read(self, email: str) -> dict[str, Any] | None:
        """The contact after the last write: the POST's own answer when it holds the contact (2026 answers with the
        stored contact, so no search-index lag can show an older state), else GET /contacts?email=."""
        answer = self.last.pop(email, None)
        if answer and "identifiers" in answer and "tags" in answer:
            return answer
        return self.client.find_contact(email)

    def wait_for(self, email: str, done: Callable[[dict[str, Any] | None], bool]) -> dict[str, Any] | None:
        """Tag operations are asynchronous: read until ``done`` or the wait is over; the last read is returned."""
        deadline = self.clock() + self.wait_seconds
        while True:
            contact = self.read(email)
            if done(contact) or self.clock() >= deadline:
                return contact
            self.sleep(ASYNC_POLL_SECONDS)


def _verdict(ok: bool, evidence: str) -> dict[str, str]:
    return {"result": CONFIRMED if ok else CONTRADICTED, "evidence": evidence}


def run_probe(client, store: ObjectStore, *, api_version: str, base_url: str, domain: str,
              clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
              wait_seconds: float = ASYNC_WAIT_SECONDS) -> dict[str, Any]:
    """Probe every assumption on the configured brand; write and return the result."""
    stamp = datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%d%H%M%S")
    emails = probe_emails(domain, stamp)
    p = _Probe(client, api_version, emails, wait_seconds, sleep, clock)
    first, second, third = emails
    out: dict[str, dict[str, str]] = {}

    # 1. subscribed now, then posted again the way an export posts an existing contact; tags A then B.
    p.post(first, "subscribed", p.now, [TAG_A])
    if p.v3:  # v3 cannot post without channels: the exporter sends nonSubscribed dated 1970
        p.post(first, "nonSubscribed", OLD_STATUS_DATE, [TAG_B])
        out[NO_CHANNELS_KEEPS_STATUS.id] = {"result": NOT_APPLICABLE, "evidence": "v3 requires channels"}
        out[NEW_WITHOUT_CHANNELS.id] = {"result": NOT_APPLICABLE, "evidence": "v3 requires channels"}
    else:
        p.post(first, tags=[TAG_B])
    one = p.read(first)
    if not p.v3:
        out[NO_CHANNELS_KEEPS_STATUS.id] = _verdict(
            _email_status(one) == "subscribed", f"{first}: status {_email_status(one)!r} after a post without channels")
    tags = _tags(one)
    out[UPSERT_TAGS_MERGE.id] = _verdict(
        TAG_A in tags and TAG_B in tags, f"{first}: tags {tags} after upserts with [{TAG_A}] then [{TAG_B}]")

    # 2. a new contact posted without channels.
    if not p.v3:
        p.post(second)
        status = _email_status(p.read(second))
        out[NEW_WITHOUT_CHANNELS.id] = _verdict(status == "nonSubscribed",
                                                f"{second}: created with status {status!r} (no channels)")

    # 3. subscribed now, then unsubscribed with the 1970 date the exporter uses; then untag one of two tags.
    p.post(third, "subscribed", p.now, [TAG_KEEP, TAG_DROP])
    p.post(third, "unsubscribed", OLD_STATUS_DATE)
    status = _email_status(p.read(third))
    out[OLDER_DATE_IGNORED.id] = _verdict(
        status == "subscribed", f"{third}: status {status!r} after 'unsubscribed' dated {OLD_STATUS_DATE}")
    if p.v3:
        out[UNTAG_ONLY_GIVEN.id] = {"result": NOT_APPLICABLE, "evidence": "v3 has no untag endpoint"}
    else:
        client.untag([third], [TAG_DROP])
        after = p.wait_for(third, lambda c: TAG_DROP not in _tags(c))
        tags = _tags(after)
        out[UNTAG_ONLY_GIVEN.id] = _verdict(
            TAG_KEEP in tags and TAG_DROP not in tags, f"{third}: tags {tags} after removing [{TAG_DROP}]")

    result = {
        "apiVersion": api_version,
        "baseUrl": base_url,
        "probedAt": datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "contacts": emails,
        "assumptions": {a.id: {"text": a.text, **out[a.id]} for a in ASSUMPTIONS},
        "cleanUp": "Omnisend's API cannot delete contacts: delete these contacts in Omnisend (Audience > Contacts, "
        f"search '{PROBE_PREFIX}'); they are tagged {TAG_A}/{TAG_B}/{TAG_KEEP} and were never subscribed by an "
        "export.",
    }
    store.write(names.STATE_CONTAINER, result_name(api_version),
                json.dumps(result, indent=2).encode("utf-8"))
    return result


def summary(result: dict[str, Any], where: str) -> str:
    lines = [f"consent probe on API {result['apiVersion']} ({result['baseUrl']}), {result['probedAt']}:"]
    for a in result["assumptions"].values():
        lines.append(f"  {a['result'].upper():<14} {a['text']}  [{a['evidence']}]")
    lines.append("created: " + ", ".join(result["contacts"]))
    lines.append(result["cleanUp"])
    lines.append(f"result written to {where}; python -m shared check-config shows what each export relies on")
    return "\n".join(lines)
