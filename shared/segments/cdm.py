"""Find the newest complete snapshot of one table in a CI data-out CDM folder (model.json + run folders).

Layout (CI docs, "export to Azure Blob Storage"):
``<path>/model.json`` and ``<path>/<Table>/<YYYY>/<MM>/<DD>/<HHMM>/<Table>_<n>.csv``.
Partitions listed in model.json win; otherwise the newest run folder. Runs are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from urllib.parse import unquote, urlsplit

from shared.errors import SnapshotError
from shared.storage import BadName, NotFound, ObjectStore, StoredObject, check_name, excerpt

from .model import CsvFormat, Partition, Snapshot

# CDM defaults for a partition without fileFormatSettings: no header, comma, quoted text, UTF-8.
CDM_DEFAULT_FORMAT = CsvFormat()
_UTF8_NAMES = {"utf8", "utf-8", "utf_8", "utf-8-sig", "utf_8_sig", "utf8-sig", "utf8bom", "utf-8-bom"}
_QUOTE_STYLES = {"quotestyle.csv": '"', "csv": '"', "quotestyle.none": "", "none": ""}
_CSV_STYLES = {"csvstyle.quotealways", "quotealways", "csvstyle.quoteafterdelimiter", "quoteafterdelimiter"}
# A CI model.json is a few hundred KB even for wide tables with many partitions; 16 MiB is far above any real one
# and keeps a wrong or hostile file from being read whole into memory.
MAX_MODEL_JSON_BYTES = 16 * 1024 * 1024


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def load_model(store: ObjectStore, container: str, path: str) -> tuple[str, dict]:
    """model.json's blob name and parsed content; SnapshotError when absent or not JSON."""
    name = _join(path, "model.json")
    where = store.describe(container, name)
    try:
        with store.open(container, name) as stream:
            # Read one byte past the cap, never more: a huge model.json must not fill the memory.
            raw = stream.read(MAX_MODEL_JSON_BYTES + 1)
    except NotFound:
        raise SnapshotError(
            f"no model.json at {where}: the source path must be the export destination folder "
            "(CustomerInsights_<id>/<ExportName>) and the export must have run at least once; "
            "for a plain CSV use source.file or source.prefix instead of source.table"
        ) from None
    if len(raw) > MAX_MODEL_JSON_BYTES:
        raise SnapshotError(
            f"{where} is larger than {MAX_MODEL_JSON_BYTES // (1024 * 1024)} MiB; a Customer Insights model.json "
            "holds a few hundred KB: check that source.path names the export folder"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SnapshotError(f"{where} is not valid UTF-8 (byte offset {e.start}); re-run the export") from None
    try:
        model = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotError(
            f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; "
            "the file may be truncated or still being written: re-run the export, or wait and run again"
        ) from None
    except RecursionError:
        raise SnapshotError(f"{where} is nested too deeply to read; it is not a CDM model.json") from None
    if not isinstance(model, dict) or not isinstance(model.get("entities"), list):
        raise SnapshotError(f'{where} has no "entities" list: it is not a CDM model.json')
    return name, model


def find_entity(model: dict, table: str, where: str) -> dict:
    entities = [e for e in model["entities"] if isinstance(e, dict)]
    for entity in entities:
        if entity.get("name") == table:
            return entity
    names = [str(e.get("name")) for e in entities]
    hint = [n for n in names if n.lower() == table.lower()]
    did_you_mean = f" (did you mean {hint[0]!r}? names are case-sensitive)" if hint else ""
    listed = ", ".join(names) if names else "none"
    raise SnapshotError(
        f"table {table!r} is not in {where}{did_you_mean}; tables there: {listed}. "
        "Set source.table to one of them, or add the segment to the CI export"
    )


def entity_columns(entity: dict, table: str, where: str) -> tuple[str, ...]:
    attributes = entity.get("attributes")
    names = tuple(a.get("name") for a in attributes if isinstance(a, dict)) if isinstance(attributes, list) else ()
    if not names or not all(isinstance(n, str) and n for n in names):
        raise SnapshotError(
            f'table {table!r} in {where} has no attribute names ("attributes" missing, empty or unnamed); '
            "without them the CSV columns cannot be named: check the export in CI"
        )
    return names


def csv_format(settings: object, where: str) -> CsvFormat:
    """CsvFormatSettings -> CsvFormat, with the CDM defaults for what is absent."""
    if settings is None:
        return CDM_DEFAULT_FORMAT
    if not isinstance(settings, dict):
        raise SnapshotError(f"{where}: fileFormatSettings is not an object")
    kind = settings.get("$type", "CsvFormatSettings")
    if kind != "CsvFormatSettings":
        raise SnapshotError(f"{where}: fileFormatSettings $type {kind!r} is not supported (only CsvFormatSettings)")
    headers = settings.get("columnHeaders", False)
    if isinstance(headers, str):
        headers = headers.strip().lower() == "true"
    delimiter = settings.get("delimiter", ",")
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise SnapshotError(f"{where}: delimiter {delimiter!r} is not supported (one character, not a quote)")
    quote_style = str(settings.get("quoteStyle", "QuoteStyle.Csv")).lower()
    if quote_style not in _QUOTE_STYLES:
        raise SnapshotError(f"{where}: quoteStyle {settings.get('quoteStyle')!r} is not supported")
    # QuoteAlways / QuoteAfterDelimiter only differ for writers: the reader treats a quote as special
    # only at the start of a field either way.
    csv_style = str(settings.get("csvStyle", "CsvStyle.QuoteAlways")).lower()
    if csv_style not in _CSV_STYLES:
        raise SnapshotError(f"{where}: csvStyle {settings.get('csvStyle')!r} is not supported")
    encoding = str(settings.get("encoding", "UTF-8"))
    if encoding.strip().lower() not in _UTF8_NAMES:
        raise SnapshotError(
            f"{where}: encoding {encoding!r} is not supported; only UTF-8 (with or without BOM) is: "
            "change the export's encoding to UTF-8"
        )
    return CsvFormat(delimiter=delimiter, quotechar=_QUOTE_STYLES[quote_style], column_headers=bool(headers))


def location_to_name(location: str, container: str, model_folder: str) -> str | None:
    """A partition location (absolute URL or relative to model.json) -> blob name in ``container``, or None.

    A location with a ``..`` segment (plain or percent-encoded) is refused with a SnapshotError: it could only
    point outside the folder Customer Insights writes to.
    """
    parsed = urlsplit(location)
    if ".." in unquote(parsed.path).split("/"):
        raise SnapshotError(
            f"partition location {excerpt(location)} has a '..' segment; the exporter reads only the files "
            "Customer Insights wrote under the export folder"
        )
    if parsed.scheme in ("abfs", "abfss", "wasb", "wasbs"):  # <container>@<account>.dfs.core.windows.net/<name>
        if parsed.netloc.split("@", 1)[0] != container:
            return None
        return posixpath.normpath(unquote(parsed.path)).lstrip("/") or None
    if parsed.scheme in ("http", "https"):
        segments = [s for s in unquote(parsed.path).split("/") if s]
        # https://<account>.blob.core.windows.net/<container>/<name>, or path-style (Azurite, IP hosts):
        # http://127.0.0.1:10000/<account>/<container>/<name>.
        for skip in (0, 1):
            if len(segments) > skip + 1 and segments[skip] == container:
                return posixpath.normpath("/".join(segments[skip + 1 :]))
        return None
    if parsed.scheme:
        return None
    name = posixpath.normpath(posixpath.join(model_folder, unquote(location)))
    return None if name.startswith("..") else name.lstrip("/")


def _stat(store: ObjectStore, container: str, names: list[str]) -> dict[str, StoredObject]:
    """Size and etag of each named object, listing each folder once."""
    found: dict[str, StoredObject] = {}
    for folder in sorted({posixpath.dirname(n) for n in names}):
        for obj in store.list(container, f"{folder}/" if folder else ""):
            found[obj.name] = obj
    return found


def digest(objects: list[StoredObject]) -> str:
    """Identity of a set of objects: names and etags, so rewritten data gets a new id."""
    h = hashlib.sha256()
    for o in objects:
        h.update(f"{o.name}\0{o.etag}\n".encode())
    return h.hexdigest()[:16]


def _run_folder_pattern(table: str) -> re.Pattern[str]:
    t = re.escape(table)
    return re.compile(rf"^{t}/(\d{{4}})/(\d{{1,2}})/(\d{{1,2}})/(\d{{3,4}})/{t}_(\d+)\.csv$")


def _listed_partitions(store, container, path, table, entity, where) -> tuple[list[StoredObject], CsvFormat] | None:
    listed = entity.get("partitions")
    if not isinstance(listed, list) or not listed:
        return None
    names: list[str] = []
    formats: set[CsvFormat] = set()
    for i, p in enumerate(listed, start=1):
        label = f"{where}: table {table!r} partition {i}"
        if not isinstance(p, dict) or not isinstance(p.get("location"), str):
            raise SnapshotError(f'{label} has no "location"')
        label = f"{label} ({excerpt(str(p.get('name') or p['location']))})"
        try:
            name = location_to_name(p["location"], container, path)
            if name is not None:
                check_name(name)
        except (SnapshotError, BadName) as exc:
            raise SnapshotError(f"{label}: {exc}") from None
        if name is None:
            raise SnapshotError(
                f"{label}: location {p['location']!r} is not in container {container!r}; "
                "the exporter reads only the source container"
            )
        names.append(name)
        formats.add(csv_format(p.get("fileFormatSettings"), label))
    if len(formats) > 1:
        raise SnapshotError(f"{where}: table {table!r} partitions declare different fileFormatSettings; not supported")
    found = _stat(store, container, names)
    missing = [n for n in names if n not in found]
    if missing:
        raise SnapshotError(
            f"{where} lists partition {store.describe(container, missing[0])} for table {table!r}, but it does not "
            f"exist ({len(missing)} of {len(names)} missing); the export may still be running or was cleaned up: "
            "wait for it to finish and run again"
        )
    return [found[n] for n in names], formats.pop()


def _newest_run(store, container, path, table) -> tuple[str, list[StoredObject]] | None:
    """The newest ``<Table>/YYYY/MM/DD/HHMM/`` folder holding ``<Table>_<n>.csv`` files, sorted by n."""
    base = _join(path, table)
    pattern = _run_folder_pattern(table)
    runs: dict[tuple[int, ...], tuple[str, list[tuple[int, StoredObject]]]] = {}
    for obj in store.list(container, f"{base}/"):
        m = pattern.match(obj.name[len(path) + 1 :] if path else obj.name)
        if m is None:
            continue
        key = tuple(int(g) for g in m.groups()[:4])
        folder = "/".join(m.groups()[:4])
        runs.setdefault(key, (folder, []))[1].append((int(m.group(5)), obj))
    if not runs:
        return None
    folder, parts = runs[max(runs)]
    parts.sort(key=lambda item: item[0])
    return f"{table}/{folder}", [obj for _n, obj in parts]


def discover_cdm(store: ObjectStore, container: str, path: str, table: str) -> Snapshot:
    path = path.strip("/")
    model_name, model = load_model(store, container, path)
    where = store.describe(container, model_name)
    entity = find_entity(model, table, where)
    columns = entity_columns(entity, table, where)

    listed = _listed_partitions(store, container, path, table, entity, where)
    if listed is not None:
        objects, fmt = listed
        run_folders = {posixpath.dirname(o.name) for o in objects}
        run = None
        if len(run_folders) == 1:
            m = _run_folder_pattern(table).match(objects[0].name[len(path) + 1 :] if path else objects[0].name)
            if m is not None:
                run = f"{table}/" + "/".join(m.groups()[:4])
        snapshot_id = run or f"{table}@{digest(objects)}"
        how = f"{len(objects)} partition(s) listed in {where}"
    else:
        newest = _newest_run(store, container, path, table)
        if newest is None:
            raise SnapshotError(
                f"table {table!r} has no partitions: {where} lists none and there is no run folder "
                f"{store.describe(container, _join(path, table))}/<YYYY>/<MM>/<DD>/<HHMM>/ holding {table}_<n>.csv; "
                "has the export run since the segment was added?"
            )
        snapshot_id, objects = newest
        fmt = CDM_DEFAULT_FORMAT
        how = f"{len(objects)} partition(s) in run folder {store.describe(container, _join(path, snapshot_id))}"

    partitions = tuple(Partition(o.container, o.name, o.size, o.etag) for o in objects)
    return Snapshot(
        snapshot_id=snapshot_id,
        columns=columns,
        partitions=partitions,
        csv_format=fmt,
        description=f"table {table!r}: {how} (schema: {where})",
        total_bytes=sum(p.size for p in partitions),
    )
