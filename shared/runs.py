"""Where a run keeps its state in the object store, and the run report.

Layout (container ``names.RUNS_CONTAINER``), one folder per run; every marker that must happen once is created
with if-none-match, so a redelivered message or a re-run changes nothing twice:

    <export>/runs/<runId>/started.json        created when the run starts (options, snapshot)
    <export>/runs/<runId>/manifest.json       created once by PLAN: counts and the number of batches
    <export>/runs/<runId>/batches/<layout>/<k>.seg   segment k: the contact payloads of up to 100 batches, with
                                              their source rows, read one batch at a time by byte range
    <export>/runs/<runId>/batches/<layout>/index.bin batch n -> (segment, offset, length); the manifest names the
                                              layout (shared/batch_store.py). Runs planned before segments
                                              have batches/<n>.json, one file per batch, still read.
    <export>/runs/<runId>/plan/<attempt>/changes.bin        email + fingerprint + batch of every contact to send,
                                              for the new state
    <export>/runs/<runId>/plan/<attempt>/planned-keys.bin   keys, fingerprints and raw-record hashes of every valid
                                              contact in the snapshot, to find leavers and write the new state
    <export>/runs/<runId>/plan/<attempt>/plan-rejected.csv  rows rejected or deduplicated while planning
                                              (each planning attempt writes its own three, created once; the
                                              manifest names the attempt. Runs planned before attempts had
                                              folders keep them in the run folder, still read.)
    <export>/runs/<runId>/sent/<n>.a<k>.json   attempt k of batch n was submitted: Omnisend's batchID
    <export>/runs/<runId>/outcome/<n>.a<k>.json what attempt k ended with (failed items)
    <export>/runs/<runId>/claims/<n>.g<k>.json  generation k of the send claim on batch n (expires; see send.py)
    <export>/runs/<runId>/results/<n>.json    the batch's final result, written exactly once
    <export>/runs/<runId>/requests/<stage>-<id>.json  requests one invocation made (created once, summed in the report)
    <export>/runs/<runId>/verify/<first>.r<round>.json  round marker of a verify group (one message per round)
    <export>/runs/<runId>/finalise/claim.<g>.json  finalisation claims: leases that expire (shared/leases.py)
    <export>/runs/<runId>/finalise/complete.<g>.json  claims of the last step (state commit, report)
    <export>/runs/<runId>/finalise/summary.json    finalisation prepared (leavers, decisions), written once
    <export>/runs/<runId>/finalise/entries.bin     the new state's members (without leavers)
    <export>/runs/<runId>/finalise/leavers.bin     the leavers to untag, cut in chunks of ≤ 250
    <export>/runs/<runId>/finalise/untag/<i>.json  chunk i untagged (or failed): done once
    <export>/runs/<runId>/report.json         the run report (ARCHITECTURE §3)
    <export>/runs/<runId>/failure.json        why the run stopped (bad key, unreadable snapshot); a re-run resumes
    <export>/runs/<runId>/superseded.json     an explicit start of a newer snapshot replaced this run (terminal)
    <export>/runs/<runId>/heartbeat.json      the CLI process working on the run is alive (stale: interrupted)
    <export>/runs/<runId>/rejected.csv        every row that did not reach Omnisend, and why

Once the report is written, batches/ and plan/ are deleted (the payloads; rejected.csv holds plan-rejected.csv's
rows), as are changes.bin and planned-keys.bin of a run planned before plan/ existed; the rest of the
folder is deleted RUN_RETENTION_DAYS after the run finished (shared/retention.py). The export's membership state is
not here: it lives in ``names.STATE_CONTAINER`` (shared/state.py), so run
artifacts can expire without ever touching it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from shared.storage import NotFound, ObjectStore

REJECTED_COLUMNS = ("bucket", "file", "line", "email", "reason", "httpStatus", "omnisendMessage")
# Report keys every consumer may rely on (ARCHITECTURE §3); tests check each report has them all.
REPORT_KEYS = (
    "runId",
    "export",
    "snapshot",
    "status",
    "rows",
    "valid",
    "rejected",
    "duplicates",
    "unchanged",
    "sent",
    "failed",
    "unconfirmed",
    "leavers",
    "untagged",
    "requests",
    "durationSeconds",
)
STATUSES = ("succeeded", "partial", "failed", "held")


def batch_label(n: int) -> str:
    return f"{n:05d}"


# What derive_run_id makes (tests/unit check that it matches): HTTP routes refuse any other run id before storage.
RUN_ID_RE = re.compile(r"r-[0-9a-f]{12}(?:-f[0-9]{1,12})?")


def derive_run_id(export: str, snapshot_id: str, further: int = 0) -> str:
    """Same export + snapshot → same run id, so a finished snapshot is not exported twice and a crashed run
    resumes. The k-th further run of the snapshot (forced, re-planned) is ``-fk``: never a wall-clock time, so two
    identical starts straddling a second boundary still name the same run."""
    digest = hashlib.blake2b(f"{export}\n{snapshot_id}".encode(), digest_size=6).hexdigest()
    return f"r-{digest}" + (f"-f{further}" if further else "")


@dataclass(frozen=True)
class RunPaths:
    export: str
    run_id: str

    @property
    def root(self) -> str:
        return f"{self.export}/runs/{self.run_id}"

    started = property(lambda self: f"{self.root}/started.json")
    manifest = property(lambda self: f"{self.root}/manifest.json")
    # Where runs planned before planning attempts had folders keep these; see plan_file.
    changes = property(lambda self: f"{self.root}/changes.bin")
    planned_keys = property(lambda self: f"{self.root}/planned-keys.bin")
    plan_rejected = property(lambda self: f"{self.root}/plan-rejected.csv")

    def plan_file(self, manifest: dict[str, Any] | None, name: str) -> str:
        """A planning attempt's ``changes.bin``, ``planned-keys.bin`` or ``plan-rejected.csv``: in the attempt's
        own folder, which the manifest names (so a twin planner that lost the manifest race never overwrites the
        files of the one that won), or in the run folder for a run planned before attempts had folders."""
        folder = (manifest or {}).get("planFiles")
        return f"{self.root}/{folder}{name}" if folder else f"{self.root}/{name}"
    report = property(lambda self: f"{self.root}/report.json")
    failure = property(lambda self: f"{self.root}/failure.json")
    superseded = property(lambda self: f"{self.root}/superseded.json")
    heartbeat = property(lambda self: f"{self.root}/heartbeat.json")
    # Finalising, step by step (shared/pipeline/finalise.py): claims, the prepared outcome, untag chunk markers.
    finalise_claims = property(lambda self: f"{self.root}/finalise/claim.")
    complete_claims = property(lambda self: f"{self.root}/finalise/complete.")
    finalise_summary = property(lambda self: f"{self.root}/finalise/summary.json")
    finalise_entries = property(lambda self: f"{self.root}/finalise/entries.bin")
    finalise_leavers = property(lambda self: f"{self.root}/finalise/leavers.bin")

    untag_prefix = property(lambda self: f"{self.root}/finalise/untag/")

    def untag_chunk(self, i: int) -> str:
        return f"{self.untag_prefix}{batch_label(i)}.json"
    rejected = property(lambda self: f"{self.root}/rejected.csv")

    def batch(self, n: int) -> str:
        return f"{self.root}/batches/{batch_label(n)}.json"

    def sent(self, n: int, attempt: int) -> str:
        return f"{self.root}/sent/{batch_label(n)}.a{attempt}.json"

    def sent_prefix(self, n: int) -> str:
        return f"{self.root}/sent/{batch_label(n)}.a"

    def outcome(self, n: int, attempt: int) -> str:
        return f"{self.root}/outcome/{batch_label(n)}.a{attempt}.json"

    def result(self, n: int) -> str:
        return f"{self.root}/results/{batch_label(n)}.json"

    @property
    def results_prefix(self) -> str:
        return f"{self.root}/results/"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_json(store: ObjectStore, container: str, name: str) -> Any | None:
    try:
        return json.loads(store.read(container, name))
    except NotFound:
        return None


# A spreadsheet opening rejected.csv runs any cell starting with one of these as a formula (=HYPERLINK(...) can
# send the neighbouring cells to another host; =cmd|... once ran programs). OWASP "CSV injection": prefix such a
# cell with an apostrophe so it opens as text. Only this file is changed; what is sent to Omnisend never is.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` as a spreadsheet shows it as text: a string starting with a formula trigger gets a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def rejected_csv(rows: list[dict[str, Any]]) -> bytes:
    # CRLF line ends (RFC 4180, what spreadsheets expect): the csv module quotes a cell only when it holds a
    # character of the line terminator, so with "\n" alone a bare CR inside a cell went out unquoted and broke the row.
    # A plan writes one line per rejected or duplicate row (~30k on the 1M-row benchmark): plain tuples through
    # writerows, and only the text cells a reader could take for a formula are looked at.
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REJECTED_COLUMNS)
    safe = spreadsheet_safe
    writer.writerows([safe(row.get(key, "")) for key in REJECTED_COLUMNS] for row in rows)
    return out.getvalue().encode("utf-8")


def check_accounting(report: dict[str, Any]) -> None:
    """Every row ends in exactly one bucket; a report that breaks this is a bug, so fail loudly."""
    total = (report["sent"] + report["failed"] + report.get("unconfirmed", 0) + report["rejected"]
             + report["duplicates"] + report["unchanged"])
    if report["rows"] != total:
        raise AssertionError(
            f"accounting broken for run {report['runId']}: rows={report['rows']} but "
            f"sent+failed+unconfirmed+rejected+duplicates+unchanged={total}"
        )
