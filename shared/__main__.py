"""Command line: ``python -m shared export NAME`` and friends. Run ``python -m shared --help``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from typing import Any

from shared.errors import ConfigError, ExporterError
from shared.progress import plural as _plural
from shared.settings import Settings
from shared.stopping import Interrupted, StopSignal

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_CONFIG = 2
EXIT_RUN_FAILED = 3
EXIT_SNAPSHOT = 4
EXIT_KEY = 5
EXIT_HELD = 6
EXIT_BUSY = 7
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    every valid contact was delivered (or nothing had changed; also a dry run)
       a snapshot already exported exits with the code of the run that exported it (0, 1 or 6)
  1    partial delivery: some contacts failed or are unconfirmed; see rejected.csv in the run folder
  2    configuration error: settings, export definitions, or an export that is disabled / not acknowledged
  3    the run failed for another reason (message says which); run the same command again to resume it
  4    the segment snapshot cannot be read (no model.json, unknown table, not UTF-8, no partitions, ...)
  5    Omnisend refused the API key (or it lacks a permission), or no key could be read from Key Vault
       (unreachable, access denied, or no such secret: the message says which)
  6    held: more members left the segment than maxExitFraction allows; confirm with --allow-mass-exit
  7    another run of this export is active (another process, or the Functions app); wait, or --supersede
  130  interrupted (Ctrl-C / SIGTERM: the requests in flight finish; a second Ctrl-C abandons them);
       run the same command again to resume
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


VERBOSE_HELP = "log every stage, batch and retry to stderr (otherwise retries are summed up once per interval)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        # Also accepted after the subcommand; SUPPRESS keeps "-v COMMAND" from being reset to False here.
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        p.add_argument("--config", metavar="PATH", help="export definitions file (overrides EXPORTS_CONFIG)")
        p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = sub.add_parser(
        "export",
        help="export one segment to Omnisend",
        description="Export the newest snapshot of one export's segment. Re-running the same command resumes the "
        "newest unfinished run of that snapshot (whatever options started it: stopped, interrupted or crashed); a "
        "finished snapshot is not exported again unless --force or --new-run (a run that ended failed is retried, "
        "a held one is re-planned once its files changed). An unfinished run of an older snapshot is finished "
        "first. See README 'Run life cycle'.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="export name, as in the export definitions")
    common(p)
    p.add_argument("--dry-run", action="store_true",
                   help="read only: show what would be sent, untagged and rejected; nothing is written")
    p.add_argument("--force", action="store_true",
                   help="export this snapshot again as a new run (an unfinished run of it is resumed instead)")
    p.add_argument("--new-run", action="store_true",
                   help="start a new run of this snapshot instead of resuming its unfinished one (which is then "
                   "superseded; if another process or the Functions app runs it, add --supersede)")
    p.add_argument("--supersede", action="store_true",
                   help="replace the export's unfinished run (another snapshot's, or the one in the way of "
                   "--new-run): it is marked superseded and never untags nor commits the state")
    p.add_argument("--full-resync", action="store_true",
                   help="send every contact, not only the changed ones, and rebuild the export's state")
    p.add_argument("--allow-mass-exit", action="store_true",
                   help="untag leavers even when more than maxExitFraction of the members left")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = sub.add_parser(
        "check-config",
        help="check settings, export definitions, snapshots, mapped columns and the key; list every problem",
        description="Check everything a run would trip over, without writing anything: settings, the export "
        "definitions, each enabled export's newest snapshot and its mapped and consent columns, the request budget "
        "(1-400/min) and, online, the key (Key Vault read + one read-only Omnisend request). Every problem is "
        "listed; the exit code is that of the first one (2 configuration, 3 Omnisend unreachable or wrong URL, "
        "4 snapshot, 5 key).",
    )
    common(p)
    p.add_argument("--no-snapshots", action="store_true", help="do not look for the snapshots")
    online = p.add_mutually_exclusive_group()
    online.add_argument("--online", action="store_true",
                        help="check the key with Omnisend (the default when a key or Key Vault is configured)")
    online.add_argument("--offline", action="store_true", help="make no request to Omnisend or Key Vault")

    p = sub.add_parser("health", help="check storage, queues, export definitions, the key and Omnisend",
                       description="The same checks as GET /api/health: each ok or ERROR with a reason. "
                       "Exit 0 when all pass, 3 otherwise.")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = sub.add_parser("runs", help="list an export's runs, newest first")
    p.add_argument("name")
    common(p)

    p = sub.add_parser("report", help="show a run's report (default: the newest run) or its progress")
    p.add_argument("name")
    p.add_argument("run_id", nargs="?", help="run id (see 'runs')")
    common(p)

    p = sub.add_parser(
        "prune",
        help="delete finished runs older than RUN_RETENTION_DAYS and payloads left in finished runs",
        description="Delete every file of runs that finished more than RUN_RETENTION_DAYS (default 30) days ago, "
        "and the payload files (batches, change lists) still left in finished runs. Unfinished runs and the "
        "membership state are never touched. The Azure timer does the same after starting runs.",
    )
    common(p)
    p.add_argument("--dry-run", action="store_true", help="only show what would be deleted")

    p = sub.add_parser(
        "forget",
        help="erase people from every export's state and every kept run file",
        description="Remove the given people (emails, normalised like the planner does) from every export's "
        "membership state and from every run file still kept (rejected.csv rows, markers). Refuses while a run "
        "is under way. Deleting them in Omnisend is the brand's own action, in Omnisend; remove them in Customer "
        "Insights too, or the next snapshot exports them again.",
    )
    p.add_argument("emails", nargs="+", metavar="EMAIL")
    common(p)
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")

    p = sub.add_parser(
        "probe",
        help="check on your Omnisend brand the behaviours the exporter relies on but Omnisend does not document",
        description="Create three probe contacts (omnisend-exporter-probe-<n>-<stamp>@DOMAIN, welcome messages "
        "off) with the configured key and API version, and report each consent/tag assumption as confirmed or "
        "contradicted. The result is kept in the state container; check-config shows it, and an export relying "
        "on a contradicted assumption refuses to run. Without --yes it only explains what it would do.",
    )
    p.add_argument("--email-domain", required=True, metavar="DOMAIN", help="a domain you own, e.g. example.com")
    p.add_argument("--yes", action="store_true", help="really create the probe contacts")
    common(p)

    from shared.cli_definitions import add_commands

    add_commands(sub, common)
    return parser


def _out(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) ends the output quietly, not with a traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _err(text: str) -> None:
    """Print to stderr; a closed pipe there must not hide the exit code behind a traceback."""
    with contextlib.suppress(BrokenPipeError, ValueError):
        print(text, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "config", None):
        settings = dataclasses.replace(settings, exports_config=args.config)
    return settings


def _print_report(report: dict[str, Any]) -> None:
    from shared.report_text import dry_run_lines, report_lines

    _out("\n".join(dry_run_lines(report) if report.get("dryRun") else report_lines(report)))


def _exit_code_for(report: dict[str, Any]) -> int:
    return {"succeeded": EXIT_OK, "partial": EXIT_PARTIAL, "held": EXIT_HELD, "failed": EXIT_RUN_FAILED}.get(
        report.get("status", "succeeded"), EXIT_OK
    )


def _with_local_simulator(settings: Settings, connection, progress_note) -> tuple[Settings, Any, Any]:
    """No key configured for the export's connection and the default Omnisend URL: export to the bundled simulator
    instead, and say so. (settings, key provider replacing the connection's or None, simulator or None)."""
    from shared import brands

    if brands.has_key_source(settings, connection):
        return settings, None, None
    if not settings.omnisend_base_url_is_default:
        if not connection.implicit:
            brands.key_provider(settings, connection)  # raises the ConfigError saying what to set
        raise ConfigError(
            "no Omnisend API key: set OMNISEND_API_KEY, or KEY_VAULT_URL (+ OMNISEND_API_KEY_SECRET_NAME)",
            source="environment",
        )
    from devtools.omnisend_sim import SimConfig, Simulator  # dev-only; not part of the deployed app
    from shared.secrets import StaticKeyProvider

    key = "local-simulator-key"
    sim = Simulator(SimConfig(api_keys=(key,), batch_delay=0.05)).start()
    if connection.implicit:
        progress_note(
            f"No OMNISEND_API_KEY or KEY_VAULT_URL is set: exporting to the bundled Omnisend simulator at "
            f"{sim.base_url} (nothing leaves this machine). Set OMNISEND_API_KEY to export to your Omnisend brand."
        )
        settings = dataclasses.replace(settings, omnisend_api_key=key)
    else:
        progress_note(
            f'No key for connection "{connection.name}" ({brands.key_source(settings, connection)}): exporting to '
            f"the bundled Omnisend simulator at {sim.base_url} (nothing leaves this machine)."
        )
    return dataclasses.replace(settings, omnisend_base_url=sim.base_url), StaticKeyProvider(key), sim


def _cmd_export(args: argparse.Namespace) -> int:
    from shared.app import build_context, load_definitions_from_settings, make_stores
    from shared.exports import find_export
    from shared.local_runner import run_export
    from shared.pipeline import RunOptions
    from shared.progress import Progress, WarningSummary
    from shared.report_text import with_config

    progress = Progress(enabled=not args.quiet)
    if not args.verbose:
        logging.getLogger().addHandler(WarningSummary(progress))
    settings = _settings(args)
    stores = make_stores(settings)
    export = find_export(load_definitions_from_settings(settings, stores[0]).exports, args.name)
    connection = export.resolved_connection
    # A dry run makes no request to Omnisend, so it needs neither a key nor the bundled simulator.
    settings, key_provider, sim = ((settings, None, None) if args.dry_run
                                   else _with_local_simulator(settings, connection, progress.note))
    stop = StopSignal()
    _stop_on_signals(stop)
    try:
        # The client of the export's connection: its brand's key, API version and request share.
        ctx = build_context(settings, stop=stop, stores=stores, connection=connection, key_provider=key_provider)
        options = RunOptions(force=args.force, dry_run=args.dry_run, full_resync=args.full_resync,
                             allow_mass_exit=args.allow_mass_exit, supersede=args.supersede,
                             new_run=args.new_run)
        report = with_config(run_export(ctx, export, options, progress), args.config)
        if sim is not None and not args.dry_run:
            report = {**report, "target": f"Omnisend simulator {sim.base_url} (no key configured)"}
    finally:
        if sim is not None:
            sim.stop()
    if args.json:
        _out(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    # "Already exported" answers with the status of the run that exported it: never 0 for one that did not succeed.
    return EXIT_OK if report.get("dryRun") else _exit_code_for(report)


def _stop_on_signals(stop: StopSignal) -> None:
    """SIGINT / SIGTERM: stop submitting at once (the requests in flight finish, the run stays resumable, exit 130).
    A second one abandons the requests in flight: exit 130 at once; the same command resumes the run (a batch
    whose answer was abandoned is submitted again, which Omnisend's upsert-by-email makes harmless)."""

    def on_signal(signum: int, frame: object) -> None:
        if stop.stop(Interrupted()):
            return
        # os.write, not print: the main thread may be inside a write to stderr when the signal arrives.
        os.write(2, f"\nabandoning {stop.in_flight} request(s) in flight; run the same command again to resume\n"
                 .encode())
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from shared import brands
    from shared.app import load_definitions_from_settings, make_stores
    from shared.checks import EXIT_CONFIG, Problem, check_configuration

    problems: list[Problem] = []
    settings_ok = True
    try:
        settings = _settings(args)
    except ConfigError as exc:
        # Still check the export definitions so every problem is listed at once; snapshots and the key need
        # the real settings (storage root, URL), so those checks wait until the settings are fixed.
        problems += [Problem("settings", "environment", p, EXIT_CONFIG) for p in exc.problems]
        settings = Settings(exports_config=args.config or "exports.json")
        settings_ok = False
    exports, connections = [], None
    try:
        definitions = load_definitions_from_settings(settings)
        exports, connections = definitions.exports, definitions.connections
    except ConfigError as exc:
        problems += [Problem("exports", exc.source or settings.exports_config, p, EXIT_CONFIG) for p in exc.problems]
    result: dict[str, Any] = {"ok": False, "exportsConfig": settings.exports_config, "exports": []}
    if not problems or exports:
        _, source_store = make_stores(settings)
        keys = any(brands.has_key_source(settings, c) for c in (connections or {}).values())
        online = settings_ok and (args.online or (not args.offline and (settings.has_api_key_source or keys)))
        result, found = check_configuration(settings, exports, source_store=source_store,
                                            snapshots=settings_ok and not args.no_snapshots, online=online,
                                            connections=connections)
        if not settings_ok:  # what the default settings would say is not what the fixed ones will
            result.pop("storage"), result.pop("omnisend")
        problems += found
        problems += _probe_verdicts(settings, exports, result) if settings_ok else []
    result["ok"] = not problems
    result["problems"] = [dataclasses.asdict(p) for p in problems]
    if args.json:
        _out(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        _out("\n".join(_check_config_text(result, problems)))
    return problems[0].exit_code if problems else EXIT_OK


def _check_config_text(result: dict[str, Any], problems: list) -> list[str]:
    lines = [f"check-config: {result['exportsConfig']} ({_plural(len(result['exports']), 'export')})"]
    if "storage" in result:
        o = result["omnisend"]
        lines.append(f"  storage    {result['storage']}")
        key = {"accepted": "accepted by Omnisend", "refused": "REFUSED", "not checked": "not checked"}.get(
            o.get("keyCheck", ""), "not checked (offline)")
        connections = result.get("connections", [])
        if any(not c["implicit"] for c in connections):
            lines.append(f"  Omnisend   {o['baseUrl']}")
            for c in connections:
                check = {"accepted": "accepted by Omnisend", "refused": "REFUSED"}.get(c["keyCheck"], c["keyCheck"])
                used = ", ".join(c["exports"]) or "no export"
                lines.append(f"  connection {c['name']} ({c['displayName']}): API {c['apiVersion']}, "
                             f"{c['requestsPerMinute']} requests/min; key: {c['key']}, {check}; used by {used}")
        else:
            lines.append(f"  Omnisend   {o['baseUrl']} API {o['apiVersion']}, {o['requestsPerMinute']} requests/min; "
                         f"key: {o['key']}, {key}")
    for e in result["exports"]:
        if not e["enabled"]:
            lines.append(f"  - {e['name']}: disabled (not checked)")
        elif "snapshot" in e:
            columns = "a mapped column is missing" if e.get("columnProblems") else "every mapped column found"
            lines.append(f"  - {e['name']}: snapshot {e['snapshot']} ({_plural(len(e['columns']), 'column')}); "
                         f"{columns}")
        elif "snapshotError" in e:
            lines.append(f"  - {e['name']}: snapshot NOT FOUND")
        else:
            lines.append(f"  - {e['name']}: snapshot not checked")
        lines += [f"    warning: {w}" for w in e.get("probe", {}).get("warnings", [])]
    if problems:
        lines.append(f"FAILED: {_plural(len(problems), 'problem')}")
        for p in problems:
            text = p.message.replace("\n", "\n      ")
            lines.append(f"  - [{p.check}] {p.where}: {text}")
    else:
        lines.append("OK: no problems found")
    return lines


def _cmd_health(args: argparse.Namespace) -> int:
    from shared.health import format_text, run_from_settings

    report = run_from_settings()
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else format_text(report))
    return EXIT_OK if report.ok else EXIT_RUN_FAILED


def _probe_verdicts(settings: Settings, exports: list, result: dict[str, Any]) -> list:
    """The consent probe's verdicts per export (shared/probe.py): never probed is a warning; an assumption the probe
    contradicted is a problem, since the export refuses to run until its settings avoid it."""
    from shared import brands
    from shared.app import make_stores
    from shared.checks import EXIT_CONFIG, Problem
    from shared.probe import assess, read_result

    store = make_stores(settings)[0]
    by_name = {e.name: e for e in exports}
    problems = []
    for entry in result["exports"]:
        export = by_name.get(entry["name"])
        if export is None:
            continue
        version = brands.brand(settings, export.resolved_connection).api_version  # the API its brand is spoken to in
        verdict = assess(export, version, read_result(store, version))
        entry["probe"] = {"assumptions": verdict["assumptions"],
                          "warnings": [w for w in verdict["warnings"] if "CONTRADICTED" not in w]}
        problems += [Problem("probe", f'export "{export.name}"', w, EXIT_CONFIG)
                     for w in verdict["warnings"] if "CONTRADICTED" in w]
    return problems


def _cmd_runs(args: argparse.Namespace) -> int:
    from shared.app import build_context
    from shared.pipeline import list_runs
    from shared.report_text import runs_lines, with_config

    runs = list_runs(build_context(_settings(args)), args.name)
    if args.json:
        _out(json.dumps(runs, indent=2))
    else:
        shown = [with_config({**r, "export": args.name}, args.config) for r in runs]
        _out("\n".join(runs_lines(args.name, shown)))
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from shared.app import build_context
    from shared.pipeline import list_runs, run_status
    from shared.report_text import status_lines, with_config

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
    if "report" in status:
        status = {**status, "report": with_config(status["report"], args.config)}
    if args.json:
        _out(json.dumps(status.get("report", status), indent=2, ensure_ascii=False))
    else:
        _out("\n".join(status_lines(status)))
    return EXIT_OK


def _quiet_closed_pipes() -> None:
    """A reader that left (``| head``) must not turn into a traceback or exit 120 when Python flushes at exit."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _cmd_prune(args: argparse.Namespace) -> int:
    import time

    from shared.app import make_stores
    from shared.retention import prune, summary

    settings = _settings(args)
    state_store, _ = make_stores(settings)
    result = prune(state_store, now=time.time(), retention_days=settings.run_retention_days, dry_run=args.dry_run)
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return EXIT_OK


def _cmd_forget(args: argparse.Namespace) -> int:
    from shared.app import make_stores
    from shared.forget import forget, summary

    state_store, _ = make_stores(_settings(args))
    result = forget(state_store, args.emails, dry_run=args.dry_run)
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return EXIT_OK


def _cmd_definitions(args: argparse.Namespace) -> int:
    from shared.cli_definitions import run

    return run(args, _settings(args), _out)


def _cmd_probe(args: argparse.Namespace) -> int:
    from shared.app import build_context
    from shared.names import STATE_CONTAINER
    from shared.probe import plan_text, result_name, run_probe, summary

    settings = _settings(args)
    domain = args.email_domain.strip().lower()
    if not DOMAIN_RE.fullmatch(domain):
        raise ConfigError(f"--email-domain {args.email_domain!r}: give a domain name such as example.com",
                          source="probe")
    if not args.yes:
        print(plan_text(domain, settings.omnisend_api_version, settings.omnisend_base_url), file=sys.stderr)
        return EXIT_CONFIG
    if not settings.has_api_key_source:
        raise ConfigError("the probe needs your brand's key: set OMNISEND_API_KEY, or KEY_VAULT_URL",
                          source="environment")
    ctx = build_context(settings)
    result = run_probe(ctx.client, ctx.state_store, api_version=settings.omnisend_api_version,
                       base_url=settings.omnisend_base_url, domain=domain)
    where = ctx.state_store.describe(STATE_CONTAINER, result_name(settings.omnisend_api_version))
    print(json.dumps(result, indent=2) if args.json else summary(result, where))
    return EXIT_OK


# A host name: labels of letters, digits and hyphens, at least one dot (the probe addresses go to this domain).
DOMAIN_RE = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        # The product's dependencies live in the project's virtual environment; a bare python has none of them.
        print(
            f"error: the Python package {exc.name!r} is not installed for {sys.executable}: activate the project's "
            "virtual environment first (source .venv/bin/activate; ./dev sample creates it), or run "
            ".venv/bin/python -m shared ...",
            file=sys.stderr,
        )
        return EXIT_CONFIG


def _run(args: argparse.Namespace) -> int:
    # -v: every log line (stages, batches, each retry). Otherwise only errors as they come; warnings (retries) are
    # summed up once per interval by the export's progress output (shared/progress.py WarningSummary).
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.ERROR)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    commands = {"export": _cmd_export, "check-config": _cmd_check_config, "runs": _cmd_runs,
                "report": _cmd_report, "health": _cmd_health, "prune": _cmd_prune,
                "forget": _cmd_forget, "probe": _cmd_probe, "connections": _cmd_definitions,
                "exports": _cmd_definitions}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        _err("\ninterrupted: run the same command again to resume")
        return EXIT_INTERRUPTED
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ExporterError as exc:
        _err(f"error: {exc}")
        return getattr(exc, "exit_code", EXIT_RUN_FAILED)


if __name__ == "__main__":
    code = main()
    _quiet_closed_pipes()
    sys.exit(code)
