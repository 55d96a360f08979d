"""Command line: ``python -m shared export NAME`` and friends. Run ``python -m shared --help``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from shared.errors import ConfigError, ExporterError, FailRun
from shared.settings import Settings

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_CONFIG = 2
EXIT_RUN_FAILED = 3
EXIT_SNAPSHOT = 4
EXIT_KEY = 5
EXIT_HELD = 6
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    every valid contact was delivered (or nothing had changed; also a dry run, or a snapshot already exported)
  1    partial delivery: some contacts failed or are unconfirmed; see rejected.csv in the run folder
  2    configuration error: settings, export definitions, or an export that is disabled / not acknowledged
  3    the run failed for another reason (message says which); run the same command again to resume it
  4    the segment snapshot cannot be read (no model.json, unknown table, not UTF-8, no partitions, ...)
  5    Omnisend refused the API key, or no key could be read (Key Vault)
  6    held: more members left the segment than maxExitFraction allows; confirm with --allow-mass-exit
  130  interrupted (Ctrl-C); run the same command again to resume
"""

DESCRIPTION = """\
Export Dynamics 365 Customer Insights segments to Omnisend.

Reads the newest segment snapshot (a CDM folder with model.json, or CSV files with a header), sends only the
contacts that changed since the last run, untags members who left the segment, and writes a report and
rejected.csv for every run. Without OMNISEND_API_KEY or KEY_VAULT_URL it exports to the bundled Omnisend
simulator on 127.0.0.1, so nothing leaves this machine.

settings (environment): EXPORTS_CONFIG (default exports.json), LOCAL_STORAGE_ROOT (default .data),
OMNISEND_API_KEY or KEY_VAULT_URL + OMNISEND_API_KEY_SECRET_NAME, OMNISEND_API_VERSION (2026-03-15 | v3),
OMNISEND_REQUESTS_PER_MINUTE (default 300 of the brand's 400), OMNISEND_BASE_URL. See README.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every stage and batch to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH", help="export definitions file (overrides EXPORTS_CONFIG)")
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = sub.add_parser(
        "export",
        help="export one segment to Omnisend",
        description="Export the newest snapshot of one export's segment. Re-running a finished snapshot does "
        "nothing unless --force; re-running after a crash resumes where it stopped.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="export name, as in the export definitions")
    common(p)
    p.add_argument("--dry-run", action="store_true",
                   help="read only: show what would be sent, untagged and rejected; nothing is written")
    p.add_argument("--force", action="store_true", help="export this snapshot again as a new run")
    p.add_argument("--full-resync", action="store_true",
                   help="send every contact, not only the changed ones, and rebuild the export's state")
    p.add_argument("--allow-mass-exit", action="store_true",
                   help="untag leavers even when more than maxExitFraction of the members left")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("check-config", help="validate settings and export definitions; find each snapshot")
    common(p)
    p.add_argument("--no-snapshots", action="store_true", help="do not look for the snapshots")

    p = sub.add_parser("runs", help="list an export's runs, newest first")
    p.add_argument("name")
    common(p)

    p = sub.add_parser("report", help="show a run's report (default: the newest run) or its progress")
    p.add_argument("name")
    p.add_argument("run_id", nargs="?", help="run id (see 'runs')")
    common(p)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "config", None):
        settings = dataclasses.replace(settings, exports_config=args.config)
    return settings


def _print_report(report: dict[str, Any]) -> None:
    if report.get("dryRun"):
        lines = [
            f"DRY RUN of export {report['export']} (snapshot {report['snapshot']}, API {report['apiVersion']}): "
            "nothing was sent or stored",
            f"  rows                   {report['rows']:>10,}",
            f"  would create/update    {report['wouldCreateOrUpdate']:>10,}  in {report['batches']:,} batches",
            f"  unchanged              {report['unchanged']:>10,}",
            f"  rejected               {report['rejected']:>10,}",
            f"  duplicates             {report['duplicates']:>10,}",
            f"  leavers                {report['leavers']:>10,}  would untag {report['wouldUntag']:,}"
            + ("  (mass-exit guard would hold the untag)" if report["massExitGuard"] else ""),
            f"  estimated              {report['estimatedRequests']:,} requests, "
            f"~{report['estimatedSeconds']:,.0f}s at {report['requestsPerMinute']} requests/min",
        ]
        if report["samplePayloads"]:
            lines.append("  sample payloads (emails masked):")
            lines += ["    " + json.dumps(p, ensure_ascii=False) for p in report["samplePayloads"]]
        print("\n".join(lines))
        return
    if "rows" not in report:
        print(f"run {report['runId']} of {report['export']}: {report['status']} — {report.get('message', '')}")
        return
    lines = [
        f"export {report['export']}  run {report['runId']}  snapshot {report['snapshot']}",
        f"status: {report['status'].upper()}" + (f" — {report['message']}" if report.get("message") else ""),
        f"  rows        {report['rows']:>10,}",
        f"  sent        {report['sent']:>10,}",
        f"  failed      {report['failed']:>10,}",
        *([f"  unconfirmed {report['unconfirmed']:>10,}  (fate unknown; the next run sends them again)"]
          if report.get("unconfirmed") else []),
        f"  rejected    {report['rejected']:>10,}",
        f"  duplicates  {report['duplicates']:>10,}",
        f"  unchanged   {report['unchanged']:>10,}",
        f"  leavers     {report['leavers']:>10,}  (untagged {report['untagged']:,})",
        f"  requests    {report['requests']:>10,}  in {report['durationSeconds']:,.1f}s",
    ]
    if report.get("droppedFields"):
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(report["droppedFields"].items()))
        lines.append(f"  optional fields dropped as invalid: {dropped}")
    if report.get("rejectedCsv") and (report["failed"] or report.get("unconfirmed") or report["rejected"]
                                      or report["duplicates"]):
        lines.append(f"  every row not sent, and why: {report['rejectedCsv']}")
    print("\n".join(lines))


def _exit_code_for(report: dict[str, Any]) -> int:
    return {"succeeded": EXIT_OK, "partial": EXIT_PARTIAL, "held": EXIT_HELD, "failed": EXIT_RUN_FAILED}.get(
        report.get("status", "succeeded"), EXIT_OK
    )


def _with_local_simulator(settings: Settings, progress_note) -> tuple[Settings, Any]:
    """No key configured and the default Omnisend URL: export to the bundled simulator instead, and say so."""
    if settings.has_api_key_source:
        return settings, None
    if not settings.omnisend_base_url_is_default:
        raise ConfigError(
            "no Omnisend API key: set OMNISEND_API_KEY, or KEY_VAULT_URL (+ OMNISEND_API_KEY_SECRET_NAME)",
            source="environment",
        )
    from devtools.omnisend_sim import SimConfig, Simulator  # dev-only; not part of the deployed app

    key = "local-simulator-key"
    sim = Simulator(SimConfig(api_keys=(key,), batch_delay=0.05)).start()
    progress_note(
        f"No OMNISEND_API_KEY or KEY_VAULT_URL is set: exporting to the bundled Omnisend simulator at {sim.base_url} "
        "(nothing leaves this machine). Set OMNISEND_API_KEY to export to your Omnisend brand."
    )
    return dataclasses.replace(settings, omnisend_base_url=sim.base_url, omnisend_api_key=key), sim


def _cmd_export(args: argparse.Namespace) -> int:
    from shared.app import build_context, load_export_definitions
    from shared.exports import find_export
    from shared.local_runner import run_export
    from shared.pipeline import RunOptions
    from shared.progress import Progress

    progress = Progress(enabled=not args.quiet)
    settings = _settings(args)
    settings, sim = _with_local_simulator(settings, progress.note)
    try:
        ctx = build_context(settings)
        export = find_export(load_export_definitions(settings, ctx.state_store), args.name)
        options = RunOptions(force=args.force, dry_run=args.dry_run, full_resync=args.full_resync,
                             allow_mass_exit=args.allow_mass_exit)
        report = run_export(ctx, export, options, progress)
        if sim is not None and not args.dry_run:
            report = {**report, "target": f"Omnisend simulator {sim.base_url} (no key configured)"}
    finally:
        if sim is not None:
            sim.stop()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return EXIT_OK if report.get("dryRun") or report.get("alreadyExported") else _exit_code_for(report)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from shared.app import load_export_definitions, make_stores
    from shared.segments import discover_snapshot

    settings = _settings(args)
    state_store, source_store = make_stores(settings)
    exports = load_export_definitions(settings, state_store)
    result: dict[str, Any] = {
        "exportsConfig": settings.exports_config,
        "storage": "Azure Blob Storage"
        if settings.uses_azure_storage
        else f"local folder {settings.local_storage_root}",
        "omnisend": {"baseUrl": settings.omnisend_base_url, "apiVersion": settings.omnisend_api_version,
                     "requestsPerMinute": settings.omnisend_requests_per_minute,
                     "key": "Key Vault " + settings.key_vault_url if settings.key_vault_url
                     else "OMNISEND_API_KEY" if settings.omnisend_api_key
                     else "none (exports go to the bundled simulator)"},
        "exports": [],
    }
    problems = 0
    for export in exports:
        entry: dict[str, Any] = {"name": export.name, "enabled": export.enabled,
                                 "dataTransferAcknowledged": export.data_transfer_acknowledged}
        if not args.no_snapshots:
            try:
                snap = discover_snapshot(source_store, export.source)
                entry["snapshot"] = snap.snapshot_id
                entry["columns"] = list(snap.columns)
                entry["bytes"] = snap.total_bytes
            except FailRun as exc:
                entry["snapshotError"] = str(exc)
                problems += 1
        result["exports"].append(entry)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"settings OK; {len(exports)} export(s) in {settings.exports_config}")
        print(f"  storage: {result['storage']}; Omnisend: {settings.omnisend_base_url} API "
              f"{settings.omnisend_api_version}, {settings.omnisend_requests_per_minute} requests/min; "
              f"key: {result['omnisend']['key']}")
        for e in result["exports"]:
            state = "enabled" if e["enabled"] else "DISABLED"
            ack = "" if e["dataTransferAcknowledged"] else ", NOT acknowledged (dataTransferAcknowledged)"
            snap = (f"snapshot {e['snapshot']} ({len(e['columns'])} columns)" if "snapshot" in e
                    else f"SNAPSHOT ERROR: {e['snapshotError']}" if "snapshotError" in e else "")
            print(f"  - {e['name']}: {state}{ack}; {snap}")
    return EXIT_SNAPSHOT if problems else EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from shared.app import build_context

    ctx = build_context(_settings(args))
    runs = __import__("shared.pipeline", fromlist=["list_runs"]).list_runs(ctx, args.name)
    if args.json:
        print(json.dumps(runs, indent=2))
    elif not runs:
        print(f"no runs of {args.name!r} yet")
    else:
        for r in runs:
            counts = f"sent {r['sent']:,} failed {r['failed']:,}" if r["sent"] is not None else ""
            print(f"{r['runId']:<28} {r['startedAt']}  {r['status']:<10} snapshot {r['snapshot']}  {counts}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from shared.app import build_context
    from shared.pipeline import list_runs, run_status

    ctx = build_context(_settings(args))
    run_id = args.run_id
    if run_id is None:
        runs = list_runs(ctx, args.name)
        if not runs:
            raise ConfigError(f"no runs of {args.name!r} yet", source="report")
        run_id = runs[0]["runId"]
    status = run_status(ctx, args.name, run_id)
    if status is None:
        raise ConfigError(f"no run {run_id!r} of {args.name!r}; see: python -m shared runs {args.name}",
                          source="report")
    shown = status.get("report", status)
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    elif "report" in status:
        _print_report(status["report"])
    else:
        print(json.dumps(status, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    commands = {"export": _cmd_export, "check-config": _cmd_check_config, "runs": _cmd_runs,
                "report": _cmd_report}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ExporterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_RUN_FAILED)


if __name__ == "__main__":
    sys.exit(main())
