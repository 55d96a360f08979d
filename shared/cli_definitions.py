"""``python -m shared connections ...`` and ``python -m shared exports ...``: read and change the definitions.

They work on the same document the app reads (EXPORTS_CONFIG or --config: a local file, or ``blob:<container>/<name>``)
and validate the whole resulting document with the very rules the app applies (shared/exports.py,
shared/connections.py) before anything is written: an invalid change lists every problem and writes nothing.

A change is shown as a diff first. It is written after a "y" at the prompt; without a terminal to ask on (a script,
or the export read from standard input) only with ``--yes``. ``--dry-run`` shows the diff and writes nothing. The
document is written back as JSON with 2-space indentation, keys in their order. Nothing here ever sees a key: a
connection names where its key is (apiKeySecret / apiKeyEnv).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, FailRun
from shared.exports import EXPORT_NAME_RE, Definitions, find_connection, find_export, load_definitions
from shared.management.document import definitions_document, dumps
from shared.settings import Settings

EXIT_OK = 0
EXIT_CONFIG = 2


class NotConfirmed(FailRun):
    """A change was not confirmed (no terminal to ask on, and no --yes): nothing was written."""

    exit_code = EXIT_CONFIG


SET_HELP = """\
Create or replace one export. The export is a JSON object as in the definitions file (docs/exports.md), read from
--file or standard input; its "name" may be left out (NAME is used) but may not differ from NAME. The whole
resulting document is validated before anything is written, and the change is shown as a diff. Saving never starts
a run: the next timer fire or a start does.

examples:
  python -m shared exports set vip --file vip.json          # asks before writing (on a terminal)
  cat vip.json | python -m shared exports set vip --yes     # standard input: --yes is required
  python -m shared exports set vip --file vip.json --dry-run
"""
DELETE_HELP = """\
Remove one export from the definitions. Its runs and its membership state are kept (python -m shared prune and
forget manage those), so defining it again resumes from its state. The last export cannot be removed (a definitions
document needs at least one).
"""
CONFIRM_HELP = "write without asking (required when there is no terminal to ask on)"
DRY_RUN_HELP = "only show the diff; write nothing"


def add_commands(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``connections`` and ``exports`` commands, added to the CLI's subcommands."""
    p = sub.add_parser(
        "connections",
        help="list, show or check the connections (Omnisend brands)",
        description="The connections of the definitions: which Omnisend brand each export goes to, "
        "where its key is read from (never the key), its API version and request share. "
        "Connections are changed in the definitions file (docs/exports.md).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common(actions.add_parser("list", help="every connection and the exports using it"))
    q = actions.add_parser("show", help="one connection, with the settings' defaults filled in")
    q.add_argument("name")
    common(q)
    q = actions.add_parser(
        "check",
        help="read the connection's key and make one read-only request to its brand",
        description="The preflight of a run against that brand: the key is read (Key Vault or "
        "its environment variable) and one read-only authenticated request is made. Exit 0 "
        "accepted, 5 key refused or unreadable, 3 Omnisend unreachable, 2 configuration.",
    )
    q.add_argument("name")
    common(q)

    p = sub.add_parser(
        "exports",
        help="list, show, create/replace or delete export definitions",
        description="Read and change the export definitions without editing JSON by hand. Every "
        "change is validated as a whole document and shown as a diff before it is written.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common(actions.add_parser("list", help="every export with its connection, source and state"))
    q = actions.add_parser("show", help="one export as it is written in the definitions")
    q.add_argument("name")
    common(q)
    q = actions.add_parser(
        "set",
        help="create or replace one export from a JSON object",
        description=SET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("name")
    q.add_argument("--file", metavar="PATH", default="-", help="the export as a JSON object; - (default) reads stdin")
    q.add_argument("--yes", action="store_true", help=CONFIRM_HELP)
    q.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    common(q)
    q = actions.add_parser("delete", help="remove one export (its runs and state are kept)", description=DELETE_HELP)
    q.add_argument("name")
    q.add_argument("--yes", action="store_true", help=CONFIRM_HELP)
    q.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    common(q)


# ---------------------------------------------------------------------------------------------------- the document


class Document:
    """The definitions document as text where it lives (local file or blob), parsed keeping its keys' order, with
    the version it was read at: written back only over that version (shared/management/document.py, as the
    management API does), so someone else's change is never overwritten."""

    def __init__(self, settings: Settings) -> None:
        from shared.app import definitions_blob, make_stores

        self.settings = settings
        self.blob = definitions_blob(settings)
        store = make_stores(settings)[0] if self.blob else None
        self.stored = definitions_document(settings, store)  # type: ignore[arg-type]  # a file needs no store
        self.where = self.stored.source if self.blob else settings.exports_config
        self.original, self.version = self._read()
        try:
            self.data = json.loads(self.original)
        except json.JSONDecodeError:
            load_definitions(self.original, self.where)  # raises the ConfigError naming line and column
            raise
        self.definitions = load_definitions(self.original, self.where)

    def _read(self) -> tuple[str, str | None]:
        if not self.blob:
            from shared.exports import read_definitions_text

            read_definitions_text(self.settings.exports_config)  # a ConfigError saying why the file is unreadable
        data, version = self.stored.read()
        if data is None:
            raise ConfigError(
                f"no export definitions at {self.where}: upload exports.json there or point "
                "EXPORTS_CONFIG elsewhere",
                source="EXPORTS_CONFIG",
            )
        return data.decode("utf-8-sig"), version

    def validated(self, data: dict[str, Any]) -> tuple[str, Definitions]:
        """The text ``data`` would be written as, and what it loads as; ConfigError with every problem."""
        text = dumps(data).decode("utf-8")
        return text, load_definitions(text, self.where)

    def diff(self, text: str) -> str:
        before = dumps(self.data).decode("utf-8")
        lines = difflib.unified_diff(
            before.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{self.where} (now)",
            tofile=f"{self.where} (after)",
        )
        return "".join(lines)

    def write(self, text: str) -> None:
        """Write ``text`` if the document is still at the version read (an if-match upload on Blob; a locked
        compare-and-replace of a local file, atomic for readers)."""
        if not self.stored.write(text.encode("utf-8"), self.version):
            raise ConfigError(
                f"{self.where} changed since it was read (someone else saved it): run the command "
                "again to see the change on top of theirs",
                source=self.where,
            )


# ---------------------------------------------------------------------------------------------------- commands


def run(args: argparse.Namespace, settings: Settings, out: Callable[[str], None]) -> int:
    command = {
        ("connections", "list"): _connections_list,
        ("connections", "show"): _connections_show,
        ("connections", "check"): _connections_check,
        ("exports", "list"): _exports_list,
        ("exports", "show"): _exports_show,
        ("exports", "set"): _exports_set,
        ("exports", "delete"): _exports_delete,
    }[args.command, args.action]
    return command(args, settings, out)


def _connection_entry(settings: Settings, definitions: Definitions, name: str) -> dict[str, Any]:
    from shared import brands

    connection = definitions.connections[name]
    brand = brands.brand(settings, connection)
    return {
        "name": connection.name,
        "displayName": connection.display_name,
        "implicit": connection.implicit,
        "apiVersion": brand.api_version,
        "requestsPerMinute": brand.requests_per_minute,
        "apiKeySecret": connection.api_key_secret,
        "apiKeyEnv": connection.api_key_env,
        "key": brands.key_source(settings, connection),
        "dataTransferAcknowledged": connection.data_transfer_acknowledged,
        "allowedRoles": list(connection.allowed_roles),
        "operatorsMayForce": connection.operators_may_force,
        "exports": [e.name for e in definitions.exports if e.connection == name],
    }


def _connections_list(args, settings, out) -> int:
    doc = Document(settings)
    entries = [_connection_entry(settings, doc.definitions, n) for n in doc.definitions.connections]
    if args.json:
        out(json.dumps(entries, indent=2, ensure_ascii=False))
        return EXIT_OK
    out(f"connections in {doc.where}:")
    for e in entries:
        implicit = " (implicit: the file has no connections; the app settings' key)" if e["implicit"] else ""
        out(
            f"  {e['name']}{implicit}: {e['displayName']}; API {e['apiVersion']}, {e['requestsPerMinute']} "
            f"requests/min; key: {e['key']}; exports: {', '.join(e['exports']) or 'none'}"
        )
    return EXIT_OK


def _connections_show(args, settings, out) -> int:
    doc = Document(settings)
    find_connection(doc.definitions.connections, args.name)
    entry = _connection_entry(settings, doc.definitions, args.name)
    if args.json:
        out(json.dumps(entry, indent=2, ensure_ascii=False))
        return EXIT_OK
    width = max(len(k) for k in entry)
    for key, value in entry.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        out(f"{key:<{width}}  {'-' if shown in (None, '') else shown}")
    return EXIT_OK


def _connections_check(args, settings, out) -> int:
    from shared import brands
    from shared.checks import check_online

    doc = Document(settings)
    connection = find_connection(doc.definitions.connections, args.name)
    verdict, problems = check_online(settings, connection)
    result = {
        "connection": connection.name,
        "key": brands.key_source(settings, connection),
        "baseUrl": settings.omnisend_base_url,
        "apiVersion": brands.brand(settings, connection).api_version,
        "keyCheck": verdict,
        "problems": [p.message for p in problems],
    }
    if args.json:
        out(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        out(f"connection {connection.name}: {result['baseUrl']} API {result['apiVersion']}, key: {result['key']}")
        out("OK: the brand accepts the key" if not problems else f"FAILED ({verdict}):")
        for p in problems:
            out(f"  - [{p.check}] {p.where}: {p.message}")
    return problems[0].exit_code if problems else EXIT_OK


def _exports_list(args, settings, out) -> int:
    doc = Document(settings)
    entries = []
    for e in doc.definitions.exports:
        source = e.source.table or e.source.file or e.source.prefix or ""
        entries.append(
            {
                "name": e.name,
                "connection": e.connection,
                "enabled": e.enabled,
                "dataTransferAcknowledged": e.transfer_acknowledged,
                "source": f"{e.source.container}/{source}",
                "tags": list(e.tags),
            }
        )
    if args.json:
        out(json.dumps(entries, indent=2, ensure_ascii=False))
        return EXIT_OK
    out(f"exports in {doc.where}:")
    for e in entries:
        state = ("enabled" if e["enabled"] else "disabled") + (
            "" if e["dataTransferAcknowledged"] else ", NOT acknowledged"
        )
        out(f"  {e['name']} -> {e['connection']}: {e['source']} ({state})")
    return EXIT_OK


def _raw_export(doc: Document, name: str) -> tuple[int, dict[str, Any]]:
    find_export(doc.definitions.exports, name)  # ConfigError with the known names
    for i, item in enumerate(doc.data["exports"]):
        if item.get("name") == name:
            return i, item
    raise AssertionError("a loaded export is in the document")  # pragma: no cover


def _exports_show(args, settings, out) -> int:
    _, item = _raw_export(Document(settings), args.name)
    out(json.dumps(item, indent=2, ensure_ascii=False))
    return EXIT_OK


def _read_export(path: str) -> Any:
    where = "standard input" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}", source=where) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})", source=where) from None


def _exports_set(args, settings, out) -> int:
    if not EXPORT_NAME_RE.fullmatch(args.name):
        raise ConfigError(
            f'"{args.name}" is not an export name: use 1-63 lower-case letters, digits and hyphens',
            source="exports set",
        )
    doc = Document(settings)
    item = _read_export(args.file)
    where = "standard input" if args.file == "-" else args.file
    if not isinstance(item, dict):
        raise ConfigError("expected one export as a JSON object", source=where)
    if "name" in item and item["name"] != args.name:
        raise ConfigError(
            f'the export is named {json.dumps(item["name"])}, not "{args.name}": give the same name '
            "(renaming is delete + set, and starts the new name's state afresh)",
            source=where,
        )
    item = {"name": args.name, **{k: v for k, v in item.items() if k != "name"}}
    data = json.loads(json.dumps(doc.data))  # a deep copy keeping key order
    exports = data["exports"]
    index = next((i for i, e in enumerate(exports) if isinstance(e, dict) and e.get("name") == args.name), None)
    if index is None:
        exports.append(item)
    else:
        exports[index] = item
    what = f'export "{args.name}" {"replaced" if index is not None else "created"}'
    return _apply(args, doc, data, what, out, stdin_used=args.file == "-")


def _exports_delete(args, settings, out) -> int:
    doc = Document(settings)
    index, _ = _raw_export(doc, args.name)
    data = json.loads(json.dumps(doc.data))
    del data["exports"][index]
    what = f'export "{args.name}" deleted (its runs and state are kept)'
    return _apply(args, doc, data, what, out, stdin_used=False)


def _apply(args, doc: Document, data: dict[str, Any], what: str, out, *, stdin_used: bool) -> int:
    text, _ = doc.validated(data)  # every problem of the whole document, or nothing is written
    diff = doc.diff(text)
    if not diff:
        out(f"no change: {doc.where} already says that")
        return EXIT_OK
    out(diff.rstrip("\n"))
    if args.dry_run:
        out(f"dry run: {doc.where} not changed")
        return EXIT_OK
    if not args.yes:
        if stdin_used or not sys.stdin.isatty():
            raise NotConfirmed(
                f"{doc.where} not written: there is no terminal to confirm on; add --yes to write it (or --dry-run "
                "to only see the diff)"
            )
        print(f"write this to {doc.where}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            out("not written")
            return EXIT_CONFIG
    doc.write(text)
    out(f"{what} in {doc.where}; nothing was run (the next timer fire or a start runs it)")
    return EXIT_OK
