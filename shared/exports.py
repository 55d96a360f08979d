"""Export definitions: which segment goes where, how columns map to Omnisend fields, and the policies.

Contract: ARCHITECTURE §3. Loaded from a JSON file ({"connections": [...], "exports": [...]}) and validated as a
whole: every problem is reported at once, with where it is. Unknown keys are errors, not ignored. Connections (which
Omnisend brand an export goes to) are checked by shared/connections.py, driven from the one validator here.

Format, defaults and rules for users: docs/exports.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.connections import (
    DEFAULT_CONNECTION,
    IMPLICIT_DEFAULT,
    Connection,
    ConnectionRules,
    Definitions,
    find_connection,
)
from shared.errors import ConfigError, FailRun
from shared.storage import BadName, check_name
from shared.suggest import closest, did_you_mean
from shared.suggest import type_name as _type_name

ChannelStatus = Literal["subscribed", "unsubscribed", "nonSubscribed"]
OnExit = Literal["untag", "ignore"]

# Omnisend contact fields an export may map a column to (besides "customProperties").
CONTACT_FIELDS = (
    "email",
    "firstName",
    "lastName",
    "address",
    "city",
    "state",
    "postalCode",
    "country",
    "countryCode",
    "phone",
    "birthdate",
    "gender",
)

CHANNEL_STATUSES: tuple[ChannelStatus, ...] = ("subscribed", "unsubscribed", "nonSubscribed")
ON_EXIT_POLICIES: tuple[OnExit, ...] = ("untag", "ignore")

# Export names end up in blob paths (runs/<export>/...) and URLs (/api/exports/{name}/runs): keep them to
# lower-case letters, digits and hyphens so they need no escaping anywhere.
EXPORT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Omnisend's official client only sends tags matching this (omnisend-api.md §2.6, §5).
TAG_RE = re.compile(r"[A-Za-z0-9_\- ]{1,128}")
MAX_TAGS = 100  # Omnisend: tags[] maxItems 100 per contact request.
# Omnisend custom property names: latin letters, digits, underscore, ≤128, case-sensitive (omnisend-api.md §2.6).
CUSTOM_PROPERTY_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,128}")
MAX_CUSTOM_PROPERTIES = 200  # Omnisend: at most 200 custom properties per contact.
# Azure Blob container names: 3-63 chars, lower-case letters, digits and single hyphens, no hyphen at either end.
CONTAINER_NAME_RE = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")

DEFAULT_MAX_EXIT_FRACTION = 0.2
# Mapping guard: a run that rejects more than this share of its rows sends nothing and fails. Half the rows
# unusable almost always means a wrong column mapping or a broken snapshot, not dirty data.
DEFAULT_MAX_REJECTED_FRACTION = 0.5

TOP_KEYS = ("connections", "exports")
EXPORT_KEYS = (
    "name",
    "source",
    "mapping",
    "tags",
    "onExit",
    "dataTransferAcknowledged",
    "enabled",
    "newContactStatus",
    "sendWelcomeMessage",
    "maxExitFraction",
    "maxRejectedFraction",
    "consent",
    "tagsVia",
    "connection",
)
# How the export's tags reach Omnisend: in each contact upsert (one request per batch; relies on upsert tags being
# merged, which Omnisend does not document: the probe checks it), or with POST /contacts/tags after the batches are
# confirmed (documented as additive; 250 emails per request at 54 requests/min; API 2026-03-15 only).
TAGS_VIA = ("upsert", "tagsEndpoint")
SOURCE_KEYS = ("container", "path", "table", "file", "prefix")
SOURCE_KINDS = ("table", "file", "prefix")
MAPPING_KEYS = (*CONTACT_FIELDS, "customProperties")
CONSENT_KEYS = ("column", "timestampColumn", "values")


@dataclass(frozen=True)
class Source:
    """Where the snapshot lives. Exactly one of ``table`` (CDM folder at ``path``), ``file`` or ``prefix``."""

    container: str
    path: str = ""
    table: str | None = None
    file: str | None = None
    prefix: str | None = None


@dataclass(frozen=True)
class ConsentMapping:
    """Opt-in: statuses come from the data. ``values`` maps a status to the cell values that mean it.

    Values are stored normalised (trimmed, case-folded) so a mapper compares ``cell.strip().casefold()``.
    """

    column: str
    timestamp_column: str | None
    values: dict[ChannelStatus, tuple[str, ...]]


@dataclass(frozen=True)
class ExportDefinition:
    name: str
    source: Source
    mapping: dict[str, str]  # Omnisend field -> column; always has "email"
    custom_properties: dict[str, str] = field(default_factory=dict)  # property name -> column
    tags: tuple[str, ...] = ()
    on_exit: OnExit = "untag"
    data_transfer_acknowledged: bool = False
    enabled: bool = True
    new_contact_status: ChannelStatus = "nonSubscribed"
    send_welcome_message: bool = False
    max_exit_fraction: float = DEFAULT_MAX_EXIT_FRACTION
    consent: ConsentMapping | None = None
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION
    tags_via: str = "upsert"
    connection: str = DEFAULT_CONNECTION  # the name of the Omnisend brand it goes to (shared/connections.py)
    # That connection as the same document defined it, attached when the file is loaded, so that whoever holds the
    # export (a stage, a queue handler) uses the brand of the same version of the definitions. None: not loaded from
    # a document (then only the implicit default connection can be meant).
    connection_definition: Connection | None = field(default=None, compare=False, repr=False)

    @property
    def resolved_connection(self) -> Connection:
        """The connection this export uses; ConfigError when it was built by hand naming another than "default"."""
        if self.connection_definition is not None:
            return self.connection_definition
        if self.connection == DEFAULT_CONNECTION:
            return IMPLICIT_DEFAULT
        raise ConfigError(f'export "{self.name}" names connection "{self.connection}" but was not loaded with it')

    @property
    def tags_in_payload(self) -> bool:
        """The export's tags go in every contact's upsert payload (rather than through the tags endpoint)."""
        return bool(self.tags) and self.tags_via == "upsert"

    @property
    def transfer_acknowledged(self) -> bool:
        """Whether sending this export's personal data to Omnisend was acknowledged: once for its connection, or on
        the export itself (files written before connections existed)."""
        owner = self.connection_definition
        return self.data_transfer_acknowledged or (owner is not None and owner.data_transfer_acknowledged)


class ExportNotRunnable(FailRun):
    """The export is valid but must not run yet (privacy review not acknowledged, or disabled). Fix the file."""

    exit_code = 2

    def __init__(self, export: str, reasons: list[str]) -> None:
        self.export = export
        self.reasons = list(reasons)
        super().__init__(f'export "{export}" cannot run: ' + "; ".join(self.reasons))


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def load_exports(text: str, source: str) -> list[ExportDefinition]:
    """Parse and validate an export-definition file; raise one ConfigError listing every problem."""
    return load_definitions(text, source).exports


def load_definitions(text: str, source: str) -> Definitions:
    """Parse and validate a whole definitions document (connections and exports); one ConfigError for every
    problem. A document without "connections" gets the implicit "default" connection (the app settings' key)."""
    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})", source=source) from None
    except RecursionError:
        raise ConfigError("JSON nested too deeply to read (an export definition is a few levels deep: "
                          "check the brackets)", source=source) from None
    v = _Validator()
    definitions = v.document(data)
    if v.problems:
        raise ConfigError(v.problems, source=source)
    return definitions


def load_exports_file(path: str | Path) -> list[ExportDefinition]:
    """Read a local export-definition file (UTF-8, a BOM is tolerated) and validate it."""
    return load_definitions_file(path).exports


def read_definitions_text(path: str | Path) -> str:
    """The text of a local definitions file (UTF-8, a BOM is tolerated), or a ConfigError saying why not."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"export-definition file {where} not found; the EXPORTS_CONFIG setting (or --config on the command line) "
            "chooses which file is read",
            source=where,
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{where} is a folder; EXPORTS_CONFIG / --config must name a JSON file", source=where
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"byte {exc.start}: not UTF-8 text; save the file as UTF-8", source=where) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}", source=where) from None
    return text


def load_definitions_file(path: str | Path) -> Definitions:
    """Read and validate a local definitions file."""
    return load_definitions(read_definitions_text(path), source=str(path))


def find_export(exports: Sequence[ExportDefinition], name: str) -> ExportDefinition:
    """The export called ``name``, or a ConfigError that lists the known names."""
    for export in exports:
        if export.name == name:
            return export
    known = [e.name for e in exports]
    near = closest(name, known)
    hint = f' (did you mean "{near}"?)' if near else ""
    listing = ", ".join(known) if known else "(none defined)"
    raise ConfigError(f'no export named "{name}"{hint}; known exports: {listing}')


def ensure_runnable(export: ExportDefinition) -> None:
    """Raise ExportNotRunnable unless the export is enabled and its data transfer was acknowledged."""
    reasons = []
    if not export.enabled:
        reasons.append('it is disabled; set "enabled": true to run it')
    if not export.transfer_acknowledged:
        reasons.append(
            "data transfer not acknowledged: as with Microsoft's Omnisend connector, running it sends personal data "
            "out of the Customer Insights boundary to Omnisend; after the data-privacy review, set "
            '"dataTransferAcknowledged": true on its connection (or on the export)'
        )
    if reasons:
        raise ExportNotRunnable(export.name, reasons)


# Re-exported: callers import definitions from here (contract of the definitions document).
__all__ = [
    "DEFAULT_CONNECTION",
    "IMPLICIT_DEFAULT",
    "Connection",
    "ConsentMapping",
    "Definitions",
    "ExportDefinition",
    "ExportNotRunnable",
    "Source",
    "closest",
    "did_you_mean",
    "ensure_runnable",
    "find_connection",
    "find_export",
    "load_definitions",
    "load_definitions_file",
    "load_exports",
    "load_exports_file",
]

# ---------------------------------------------------------------------------------------------------------------
# Validation


class _JsonObject(dict):
    """A JSON object that remembers keys given twice (json.loads silently keeps the last one)."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
        return obj


def _at(where: str, key: str) -> str:
    """Path of ``key`` inside the object at ``where`` ("" is the top level)."""
    return f"{where}.{key}" if where else key


class _Validator:
    """Walks the parsed document, collecting problems as "<where>: <what>; <how to fix>"."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{where or '(top level)'}: {what}")

    # -- generic helpers --

    def obj(self, value: Any, where: str, allowed: Sequence[str], what: str = "field",
            refused: Mapping[str, str] | None = None) -> dict | None:
        """Check ``value`` is an object whose keys are all in ``allowed``; report unknown and repeated keys.
        ``refused`` gives keys that are not allowed a message of their own (what to do instead)."""
        if not isinstance(value, dict):
            self.problem(where, f"expected an object, got {_type_name(value)}")
            return None
        for key in value:
            if refused and key in refused:
                self.problem(_at(where, key), refused[key])
            elif key not in allowed:
                hint = did_you_mean(key, allowed)
                self.problem(_at(where, key), f"unknown {what}{hint} (use one of: {', '.join(allowed)})")
        for key in getattr(value, "duplicates", ()):
            self.problem(_at(where, key), "given more than once; JSON keeps only the last, so remove the others")
        return value

    def text(self, obj: dict, key: str, where: str, *, required: bool) -> str | None:
        if key not in obj:
            if required:
                self.problem(where, f'"{key}" is required')
            return None
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else _type_name(value)
            self.problem(f"{where}.{key}", f"expected a non-empty string, got {got}")
            return None
        return value

    def flag(self, obj: dict, key: str, where: str, default: bool) -> bool:
        value = obj.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{where}.{key}", f"expected true or false, got {json.dumps(value)}")
            return default
        return value

    def choice(self, obj: dict, key: str, where: str, choices: Sequence[str], default: str) -> str:
        value = obj.get(key, default)
        if value not in choices:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            allowed = ", ".join(choices)
            self.problem(f"{where}.{key}", f"{json.dumps(value)} is not allowed{hint} (use one of: {allowed})")
            return default
        return value

    # -- document structure --

    def document(self, data: Any) -> Definitions:
        rules = ConnectionRules(self, EXPORT_NAME_RE)
        self.rules = rules
        top = self.obj(data, "", TOP_KEYS, what="key")
        if top is None:
            return Definitions(connections=rules.connections, exports=[])
        rules.section(top)
        return Definitions(connections=rules.connections, exports=self.exports(top))

    def exports(self, top: dict) -> list[ExportDefinition]:
        if "exports" not in top:
            self.problem("(top level)", '"exports" is required: {"exports": [ ... ]}')
            return []
        items = top["exports"]
        if not isinstance(items, list):
            self.problem("exports", f"expected a list of export definitions, got {_type_name(items)}")
            return []
        if not items:
            self.problem("exports", "the list is empty; define at least one export")
        exports = []
        first_index: dict[str, int] = {}
        for i, item in enumerate(items):
            where = f"exports[{i}]"
            export = self.export(item, where)
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                if name in first_index:
                    first = first_index[name]
                    self.problem(f"{where}.name", f'"{name}" is already used by exports[{first}]; names must be unique')
                else:
                    first_index[name] = i
            if export is not None:
                exports.append(export)
        return exports

    def export(self, item: Any, where: str) -> ExportDefinition | None:
        obj = self.obj(item, where, EXPORT_KEYS)
        if obj is None:
            return None
        before = len(self.problems)
        name = self.text(obj, "name", where, required=True)
        if name is not None and not EXPORT_NAME_RE.fullmatch(name):
            self.problem(
                f"{where}.name",
                f'"{name}" is not allowed: use 1-63 lower-case letters, digits and hyphens, starting with a letter or '
                "digit (the name is used in blob paths and URLs)",
            )
        source = self.source(obj.get("source"), f"{where}.source") if "source" in obj else None
        if "source" not in obj:
            self.problem(where, '"source" is required')
        mapping, custom = self.mapping(obj, where)
        tags = self.tags(obj, where)
        on_exit = self.choice(obj, "onExit", where, ON_EXIT_POLICIES, "untag")
        acknowledged = self.flag(obj, "dataTransferAcknowledged", where, False)
        enabled = self.flag(obj, "enabled", where, True)
        status = self.choice(obj, "newContactStatus", where, CHANNEL_STATUSES, "nonSubscribed")
        welcome = self.flag(obj, "sendWelcomeMessage", where, False)
        fraction = self.fraction(obj, where)
        rejected_fraction = self.fraction(
            obj, where, "maxRejectedFraction", DEFAULT_MAX_REJECTED_FRACTION,
            "the largest share of a snapshot's rows that may be rejected before the run sends nothing and fails",
        )
        consent = self.consent(obj["consent"], f"{where}.consent") if "consent" in obj else None
        tags_via = self.choice(obj, "tagsVia", where, TAGS_VIA, "upsert")
        connection = self.rules.export_connection(obj, where)
        if len(self.problems) > before or name is None or source is None or mapping is None or connection is None:
            return None
        owner = self.rules.connections.get(connection)
        return ExportDefinition(
            name=name,
            source=source,
            mapping=mapping,
            custom_properties=custom,
            tags=tags,
            on_exit=on_exit,  # type: ignore[arg-type]
            data_transfer_acknowledged=acknowledged,
            enabled=enabled,
            new_contact_status=status,  # type: ignore[arg-type]
            send_welcome_message=welcome,
            max_exit_fraction=fraction,
            consent=consent,
            max_rejected_fraction=rejected_fraction,
            tags_via=tags_via,
            connection=connection,
            connection_definition=owner,
        )

    def source(self, value: Any, where: str) -> Source | None:
        obj = self.obj(value, where, SOURCE_KEYS)
        if obj is None:
            return None
        before = len(self.problems)
        container = self.text(obj, "container", where, required=True)
        if container is not None and not CONTAINER_NAME_RE.fullmatch(container):
            self.problem(
                f"{where}.container",
                f'"{container}" is not a valid blob container name: 3-63 lower-case letters, digits and single '
                "hyphens, starting and ending with a letter or digit",
            )
        texts = {key: self.text(obj, key, where, required=False) for key in ("path", "table", "file", "prefix")}
        for key in ("path", "file", "prefix"):
            if texts[key] is not None and texts[key].startswith("/"):
                self.problem(f"{where}.{key}", "blob names do not start with '/'; remove the leading slash")
            elif texts[key] is not None:
                try:  # the stores refuse such names anyway; say so here, with the field, before any access
                    check_name(texts[key], prefix=key != "file")
                except BadName as exc:
                    self.problem(f"{where}.{key}", f"{exc}: give the blob name as it is, without '..' or '//'")
        if texts["table"] is not None and ("/" in texts["table"] or texts["table"] in (".", "..")):
            self.problem(f"{where}.table", "a table name, as model.json lists it (no '/')")
        kinds = [k for k in SOURCE_KINDS if k in obj]
        if len(kinds) != 1:
            got = f"got {', '.join(kinds)}" if kinds else "got none"
            self.problem(
                where,
                f"give exactly one of table (a CDM folder with model.json), file (one CSV with a header) or "
                f"prefix (CSVs with a header under a prefix); {got}",
            )
        elif kinds == ["table"] and "path" not in obj:
            self.problem(where, '"path" is required with "table": the folder holding model.json')
        elif kinds != ["table"] and "path" in obj:
            self.problem(f"{where}.path", f'only used with "table"; put the full blob name in "{kinds[0]}"')
        if len(self.problems) > before:
            return None
        return Source(
            container=container or "",
            path=texts["path"] or "",
            table=texts["table"],
            file=texts["file"],
            prefix=texts["prefix"],
        )

    def mapping(self, obj: dict, where: str) -> tuple[dict[str, str] | None, dict[str, str]]:
        where = f"{where}.mapping"
        if "mapping" not in obj:
            self.problem(where.rsplit(".", 1)[0], '"mapping" is required, with at least "email"')
            return None, {}
        m = self.obj(obj["mapping"], where, MAPPING_KEYS)
        if m is None:
            return None, {}
        mapping: dict[str, str] = {}
        for key in CONTACT_FIELDS:
            if key in m:
                column = self.text(m, key, where, required=False)
                if column is not None:
                    mapping[key] = column
        if "email" not in m:
            self.problem(where, '"email" is required: the column holding the email address')
        custom: dict[str, str] = {}
        if "customProperties" in m:
            custom = self.custom_properties(m["customProperties"], f"{where}.customProperties")
        return mapping, custom

    def custom_properties(self, value: Any, where: str) -> dict[str, str]:
        if not isinstance(value, dict):
            self.problem(where, f"expected an object {{property name: column}}, got {_type_name(value)}")
            return {}
        for key in getattr(value, "duplicates", ()):
            self.problem(f"{where}.{key}", "given more than once; JSON keeps only the last, so remove the others")
        if len(value) > MAX_CUSTOM_PROPERTIES:
            self.problem(where, f"{len(value)} properties; Omnisend allows at most {MAX_CUSTOM_PROPERTIES} per contact")
        custom = {}
        for name in value:
            if not CUSTOM_PROPERTY_NAME_RE.fullmatch(name):
                self.problem(
                    f"{where}.{name}",
                    "Omnisend property names use only latin letters, digits and _ (1-128 characters)",
                )
            column = self.text(value, name, where, required=False)
            if column is not None:
                custom[name] = column
        return custom

    def tags(self, obj: dict, where: str) -> tuple[str, ...]:
        if "tags" not in obj:
            return ()
        where = f"{where}.tags"
        value = obj["tags"]
        if not isinstance(value, list):
            self.problem(where, f"expected a list of strings, got {_type_name(value)}")
            return ()
        if len(value) > MAX_TAGS:
            self.problem(where, f"{len(value)} tags; Omnisend allows at most {MAX_TAGS}")
        seen: set[str] = set()
        for i, tag in enumerate(value):
            if not isinstance(tag, str):
                self.problem(f"{where}[{i}]", f"expected a string, got {_type_name(tag)}")
            elif not TAG_RE.fullmatch(tag):
                self.problem(
                    f"{where}[{i}]",
                    f"{json.dumps(tag)}: tags use only letters, digits, _, - and spaces (1-128 characters)",
                )
            elif tag in seen:
                self.problem(f"{where}[{i}]", f"{json.dumps(tag)} is listed twice")
            else:
                seen.add(tag)
        return tuple(t for t in value if isinstance(t, str))

    def fraction(
        self, obj: dict, where: str, key: str = "maxExitFraction", default: float = DEFAULT_MAX_EXIT_FRACTION,
        meaning: str = "the largest share of the previous segment that may leave in one run",
    ) -> float:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            self.problem(f"{where}.{key}", f"expected a number from 0 to 1 ({meaning}), got {json.dumps(value)}")
            return default
        return float(value)

    def consent(self, value: Any, where: str) -> ConsentMapping | None:
        obj = self.obj(value, where, CONSENT_KEYS)
        if obj is None:
            return None
        before = len(self.problems)
        column = self.text(obj, "column", where, required=True)
        timestamp_column = self.text(obj, "timestampColumn", where, required=False)
        values: dict[ChannelStatus, tuple[str, ...]] = {}
        if "values" not in obj:
            self.problem(where, '"values" is required: {"subscribed": [...], "unsubscribed": [...], ...}')
        else:
            values = self.consent_values(obj["values"], f"{where}.values")
        if len(self.problems) > before or column is None:
            return None
        return ConsentMapping(column=column, timestamp_column=timestamp_column, values=values)

    def consent_values(self, value: Any, where: str) -> dict[ChannelStatus, tuple[str, ...]]:
        obj = self.obj(value, where, CHANNEL_STATUSES, what="status")
        if obj is None:
            return {}
        result: dict[ChannelStatus, tuple[str, ...]] = {}
        owner: dict[str, str] = {}  # normalised cell value -> status that claimed it first
        for status in CHANNEL_STATUSES:
            if status not in obj:
                continue
            items = obj[status]
            if not isinstance(items, list) or not items:
                self.problem(f"{where}.{status}", f"expected a non-empty list of strings, got {_type_name(items)}")
                continue
            normalised = []
            for i, item in enumerate(items):
                if not isinstance(item, str) or not item.strip():
                    self.problem(
                        f"{where}.{status}[{i}]",
                        f"expected a non-empty string, got {_type_name(item)} (empty cells never set a status)",
                    )
                    continue
                key = normalise_consent_value(item)
                if key in owner and owner[key] != status:
                    self.problem(
                        f"{where}.{status}[{i}]",
                        f"{json.dumps(item)} is also listed under {owner[key]}; a value can mean only one status "
                        "(values are compared ignoring case and surrounding spaces)",
                    )
                    continue
                if key not in owner:
                    owner[key] = status
                    normalised.append(key)
            result[status] = tuple(normalised)
        if not any(k in obj for k in CHANNEL_STATUSES):
            self.problem(where, f"list the cell values for at least one status ({', '.join(CHANNEL_STATUSES)})")
        return result


def normalise_consent_value(value: str) -> str:
    """How consent cells and configured values are compared: trimmed and case-folded."""
    return value.strip().casefold()
