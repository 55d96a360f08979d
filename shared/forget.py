"""Erasing people on request: ``python -m shared forget EMAIL...`` and ``POST /api/forget``.

Removes the given people from every export's membership state and from every run artifact still kept:
rejected.csv and plan-rejected.csv rows, the ``emails`` of sent markers, the failures of outcome markers, the
failed rows of results, and any payload file a finished run still holds (deleted whole: the run no longer needs it).
Emails are matched after the planner's normalisation (``contacts.normalise_email``), so ``" John@X.com"`` in a
rejected.csv row matches ``john@x.com``.

The rule for runs in flight (a started.json without a report.json): forget refuses while there is one and names
it. Its batch files, change list and planned keys hold the people it is sending, and its finalise would write them
back into the state; dropping them from a half-sent run would also break its accounting identity. A run in flight
ends within the hour (or is resumed by the same command); forget then succeeds, and finalise has already deleted
that run's payloads.

Not done here, on purpose: deleting the person in Omnisend (the brand does that in Omnisend's app: the API has no
contact deletion), and removing them from Customer Insights (while the segment still holds them, the next snapshot
exports them again).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from typing import Any

from shared import names
from shared.contacts import normalise_email
from shared.errors import ConfigError, FailRun
from shared.logs import mask_email
from shared.retention import RunFolder, is_payload, run_folders
from shared.state import MemberState, decode_state, encode_members
from shared.storage import ObjectStore

RUNS = names.RUNS_CONTAINER
STATE = names.STATE_CONTAINER
log = logging.getLogger("exporter")
STATE_FILE = "members.bin"
LEGACY_STATE_SUFFIX = "/state/members.bin"
# Cells the "safe" rejected.csv writer prefixes with ' so a spreadsheet shows them as text.
_FORMULA_GUARD = "'"


class RunsInFlight(FailRun):
    """A run is still under way: its payloads hold the people it sends. Retry forget once it has finished."""


def _key(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if text.startswith(_FORMULA_GUARD):
        text = text[1:]
    return normalise_email(text)


class _Tally:
    """What was removed where: ``{place: count}``, in the order the places were visited."""

    def __init__(self) -> None:
        self.places: dict[str, int] = {}
        self.found: set[str] = set()

    def add(self, place: str, count: int) -> None:
        if count:
            self.places[place] = self.places.get(place, 0) + count


def forget(store: ObjectStore, emails: Iterable[str], *, dry_run: bool = False) -> dict[str, Any]:
    """Remove these people from every state and every kept run artifact. Raises RunsInFlight (nothing changed)
    while a run is under way."""
    targets = {normalise_email(e) for e in emails if isinstance(e, str) and e.strip()}
    if not targets:
        raise ConfigError("name at least one email address to forget", source="forget")
    folders = run_folders(store)
    in_flight = [f for f in folders if not any(f.relative(o) == "report.json" for o in f.objects)]
    if in_flight:
        listed = ", ".join(f"{f.export} {f.run_id}" for f in in_flight)
        raise RunsInFlight(
            f"{len(in_flight)} run(s) still under way ({listed}): their batch files hold the people they send and "
            "their finalise would write them back into the state. Let them finish (or resume them with the same "
            "export command), then run forget again; nothing was changed"
        )
    tally = _Tally()
    for name in _state_files(store):
        _forget_in_state(store, *name, targets, tally, dry_run)
    for folder in folders:
        _forget_in_run(store, folder, targets, tally, dry_run)
    # An audit line without the people: how many were asked for, found, and in how many places.
    log.info("forget emails=%d found=%d places=%d removed=%d dryRun=%s", len(targets), len(tally.found),
             len(tally.places), sum(tally.places.values()), dry_run)
    return {
        "emails": sorted(mask_email(e) for e in targets),
        "found": len(tally.found),
        "removed": tally.places,
        "dryRun": dry_run,
        "notInOmnisend": "this removed them from the exporter's own storage only: delete them in Omnisend "
        "yourself (the brand's action), and in Customer Insights, or the next snapshot exports them again",
    }


def _state_files(store: ObjectStore) -> list[tuple[str, str]]:
    found = [(STATE, o.name) for o in store.list(STATE) if o.name.endswith("/" + STATE_FILE)]
    found += [(RUNS, o.name) for o in store.list(RUNS) if o.name.endswith(LEGACY_STATE_SUFFIX)]
    return found


def _forget_in_state(store: ObjectStore, container: str, name: str, targets: set[str], tally: _Tally,
                     dry_run: bool) -> None:
    state = decode_state(store.read(container, name), store.describe(container, name))
    kept = [entry for entry in state.entries() if entry[0] not in targets]
    removed = len(state) - len(kept)
    if removed:
        tally.found.update(e for e in state.emails if e in targets)
        if not dry_run:
            # The state keeps what it describes and the kind of fingerprints it holds (shared/state.py).
            store.write(container, name, encode_members(MemberState.build(kept, state.meta, legacy=state.legacy)))
        tally.add(f"{container}/{name}", removed)


def _forget_in_run(store: ObjectStore, folder: RunFolder, targets: set[str], tally: _Tally, dry_run: bool) -> None:
    for obj in folder.objects:
        rel = folder.relative(obj)
        place = f"{RUNS}/{obj.name}"
        if is_payload(rel):
            # A finished run whose payload deletion was cut short: it does not need them any more.
            if not dry_run:
                store.delete(RUNS, obj.name)
            tally.add(f"{RUNS}/{folder.paths.root}/payload files deleted", 1)
        elif rel.endswith(".csv"):
            _rewrite(store, obj.name, place, _without_csv_rows, targets, tally, dry_run)
        elif rel.startswith(("sent/", "outcome/", "results/")) and rel.endswith(".json"):
            _rewrite(store, obj.name, place, _without_marker_emails, targets, tally, dry_run)


def _rewrite(store: ObjectStore, name: str, place: str, edit, targets: set[str], tally: _Tally,
             dry_run: bool) -> None:
    data = store.read(RUNS, name)
    new, removed = edit(data, targets, tally.found)
    if removed:
        if not dry_run:
            store.write(RUNS, name, new)
        tally.add(place, removed)


def _without_csv_rows(data: bytes, targets: set[str], found: set[str]) -> tuple[bytes, int]:
    text = data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or "email" not in rows[0]:
        return data, 0
    col = rows[0].index("email")
    kept = [rows[0]]
    for row in rows[1:]:
        key = _key(row[col]) if col < len(row) else ""
        if key in targets:
            found.add(key)
        else:
            kept.append(row)
    if len(kept) == len(rows):
        return data, 0
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(kept)
    return out.getvalue().encode("utf-8"), len(rows) - len(kept)


def _without_marker_emails(data: bytes, targets: set[str], found: set[str]) -> tuple[bytes, int]:
    """sent markers: ``emails`` (re-submitted items); outcomes: ``failures[].email``; results: ``failed[].email``."""
    marker = json.loads(data)
    removed = 0
    if isinstance(marker.get("emails"), list):
        kept = [e for e in marker["emails"] if _key(e) not in targets]
        found.update(_key(e) for e in marker["emails"] if _key(e) in targets)
        removed += len(marker["emails"]) - len(kept)
        marker["emails"] = kept
    for field in ("failures", "failed"):
        if isinstance(marker.get(field), list):
            kept_rows = [r for r in marker[field] if _key(r.get("email")) not in targets]
            found.update(_key(r.get("email")) for r in marker[field] if _key(r.get("email")) in targets)
            removed += len(marker[field]) - len(kept_rows)
            marker[field] = kept_rows
    if not removed:
        return data, 0
    return json.dumps(marker, separators=(",", ":"), ensure_ascii=False).encode("utf-8"), removed


def summary(result: dict[str, Any]) -> str:
    verb = "would remove" if result["dryRun"] else "removed"
    lines = [f"forget {', '.join(result['emails'])}: found in {len(result['removed'])} place(s)"]
    lines += [f"  {verb} {n:>6} from {place}" for place, n in result["removed"].items()]
    if not result["removed"]:
        lines.append("  nothing held about them in the exporter's storage")
    lines.append(result["notInOmnisend"])
    return "\n".join(lines)
