"""The management API's handlers: connections and exports read, saved and deleted over HTTP, each change checked
against the caller's roles, validated as a whole document, written with optimistic concurrency and audited.

- Every object has an ETag (a digest of its stored JSON). Changing or deleting an existing object needs
  ``If-Match`` with it (428 without, 412 when stale); creating needs none (or ``If-None-Match: *``).
- The document is validated whole, with the same rules and messages as the file (shared/exports.py), every
  problem at once (400); nothing is written unless it is valid.
- The write itself is conditional on the document's version (shared/management/document.py): if another writer
  got in between, the document is read again and the request decided again, so a stale If-Match then gets 412.
- Saving never starts a run. Keys are never accepted nor returned: connections hold a Key Vault secret name
  (apiKeySecret) or an environment variable name (apiKeyEnv).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import names
from shared.errors import ConfigError
from shared.exports import EXPORT_NAME_RE
from shared.management import document as docs
from shared.management.access import ADMIN, OPERATOR, READ_ROLES, Caller, Forbidden
from shared.management.audit import AUDIT_ID_RE, DEFAULT_LIMIT, MAX_LIMIT, SECRET_FIELD_RE, SECRET_NAME_FIELDS, AuditLog
from shared.settings import Settings
from shared.storage import ObjectStore

DEFAULT_CONNECTION = "default"
# A conditional write that keeps losing to other writers is tried this many times before answering 503: each loss
# means another change landed, so more than a few in a row only happens under a storm of edits.
WRITE_ATTEMPTS = 5
# A definition body is a few hundred bytes; 64 KiB is far above any real one and refuses junk before parsing.
MAX_BODY_BYTES = 64 * 1024
KINDS = {"connections": "connection", "exports": "export"}
# Fields a GET answer adds to an object; a body that sends them back (GET, edit, PUT) has them dropped, not refused.
READ_ONLY_FIELDS = ("etag", "implicit", "auditId")
# Run options an operator may use only on connections with "operatorsMayForce": true.
FORCE_OPTIONS = {"allow_mass_exit": "allowMassExit", "full_resync": "fullResync"}


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def _validate(text: str, source: str) -> None:
    """The file's own validation of the whole document (raises ConfigError listing every problem)."""
    from shared.exports import load_definitions

    load_definitions(text, source)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


class Management:
    def __init__(
        self,
        settings: Settings,
        state_store: ObjectStore,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
        list_runs: Callable[[str], list] | None = None,
        document: docs.Document | None = None,
    ) -> None:
        self.settings = settings
        self.state_store = state_store
        self.document = document or docs.definitions_document(settings, state_store)
        self.audit_log = AuditLog(state_store, clock, self.document.key)
        self.on_change = on_change or (lambda: None)
        self.list_runs = list_runs

    # ---------------------------------------------------------------------------------------------- dispatch

    def handle(
        self,
        caller: Caller,
        method: str,
        collection: str,
        name: str | None,
        headers: Mapping[str, str],
        body: bytes,
        params: Mapping[str, str],
    ) -> Answer:
        try:
            if name is not None and not EXPORT_NAME_RE.fullmatch(name):
                raise Refused(
                    400,
                    f"{name[:80]!r} is not a {KINDS[collection]} name (1-63 lower-case letters, digits and hyphens)",
                )
            if method == "GET" and name is None:
                return self._list(caller, collection)
            if method == "GET":
                return self._get(caller, collection, name)
            if method == "PUT":
                return self._put(caller, collection, name, headers, body)
            if method == "DELETE":
                return self._delete(caller, collection, name, headers, params)
            raise Refused(405, f"{method} is not supported here")
        except Forbidden as exc:
            return Answer(403, {"error": str(exc)})
        except Refused as exc:
            return Answer(exc.status, {"error": str(exc), **exc.extra})
        except ConfigError as exc:
            return Answer(
                409, {"error": "the stored definitions cannot be read", "problems": exc.problems, "source": exc.source}
            )

    # ---------------------------------------------------------------------------------------------- reading

    def _read(self) -> tuple[dict[str, Any], str | None]:
        data, version = self.document.read()
        return docs.parse(data, self.document.source), version

    def _implicit_default(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": DEFAULT_CONNECTION,
            "displayName": "Default (from the app settings)",
            "implicit": True,
            "apiVersion": s.omnisend_api_version,
            "apiKeySecret": s.omnisend_api_key_secret_name,
            "requestsPerMinute": s.omnisend_requests_per_minute,
            "dataTransferAcknowledged": False,
            "allowedRoles": [],
            "operatorsMayForce": False,
        }

    def _objects(self, doc: dict[str, Any], collection: str) -> list[dict[str, Any]]:
        items = doc.get(collection)
        return [o for o in items if isinstance(o, dict)] if isinstance(items, list) else []

    def _find(self, doc: dict[str, Any], collection: str, name: str) -> dict[str, Any] | None:
        return next((o for o in self._objects(doc, collection) if o.get("name") == name), None)

    def _view(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in obj.items() if k in SECRET_NAME_FIELDS or not SECRET_FIELD_RE.search(k)}
        if collection == "connections":
            shown.setdefault("implicit", False)
        return {**shown, "etag": docs.object_etag(obj)}

    def _list(self, caller: Caller, collection: str) -> Answer:
        caller.require(*READ_ROLES, what=f"listing {collection}")
        doc, _ = self._read()
        items = [self._view(collection, o) for o in self._objects(doc, collection)]
        if collection == "connections" and "connections" not in doc:
            items = [self._implicit_default()]
        return Answer(200, {collection: items})

    def _get(self, caller: Caller, collection: str, name: str) -> Answer:
        caller.require(*READ_ROLES, what=f"reading {KINDS[collection]} {name!r}")
        doc, _ = self._read()
        obj = self._find(doc, collection, name)
        if obj is None:
            if collection == "connections" and "connections" not in doc and name == DEFAULT_CONNECTION:
                return Answer(200, self._implicit_default())
            raise Refused(
                404,
                f"no {KINDS[collection]} named {name!r}",
                known=[o.get("name") for o in self._objects(doc, collection)],
            )
        view = self._view(collection, obj)
        return Answer(200, view, {"ETag": view["etag"]})

    # ---------------------------------------------------------------------------------------------- access

    def connection_of(self, doc: dict[str, Any], export: dict[str, Any] | None) -> str:
        connection = export.get("connection") if export else None
        return connection if isinstance(connection, str) else DEFAULT_CONNECTION

    def _connection_grants(self, doc: dict[str, Any], connection: str, flag: str | None = None) -> bool:
        """Does this connection let operators use it (and, with ``flag``, also that option)? The implicit default
        connection is for admins only."""
        obj = self._find(doc, "connections", connection)
        if obj is None:
            return False
        roles = obj.get("allowedRoles")
        allowed = isinstance(roles, list) and OPERATOR in roles
        return allowed and (flag is None or obj.get(flag) is True)

    def _require_export_access(self, caller: Caller, doc: dict[str, Any], connections: list[str], what: str) -> None:
        if caller.is_admin:
            return
        caller.require(ADMIN, OPERATOR, what=what)
        for connection in connections:
            if not self._connection_grants(doc, connection):
                raise Forbidden(
                    f"{what} needs the role {ADMIN}: connection {connection!r} does not list "
                    f"{OPERATOR} in its allowedRoles; {caller.describe()}"
                )

    def authorize_run(self, caller: Caller, export_name: str, options: Any) -> None:
        """Forbidden unless the caller may start this run (an unknown export is left to the orchestrator's 404)."""
        if caller.is_admin:
            return
        caller.require(ADMIN, OPERATOR, what="starting a run")
        doc, _ = self._read()
        export = self._find(doc, "exports", export_name)
        if export is None:
            return
        connection = self.connection_of(doc, export)
        self._require_export_access(caller, doc, [connection], f"running export {export_name!r}")
        for attr, option in FORCE_OPTIONS.items():
            if getattr(options, attr, False) and not self._connection_grants(doc, connection, "operatorsMayForce"):
                raise Forbidden(
                    f'"{option}" needs the role {ADMIN}: connection {connection!r} does not set '
                    f'"operatorsMayForce": true; {caller.describe()}'
                )

    # ---------------------------------------------------------------------------------------------- writing

    def _body(self, collection: str, name: str, body: bytes) -> dict[str, Any]:
        if len(body) > MAX_BODY_BYTES:
            raise Refused(400, f"the body is {len(body)} bytes; a {KINDS[collection]} is at most {MAX_BODY_BYTES}")
        try:
            obj = json.loads(body or b"null", object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            raise Refused(400, f"the key {str(exc)[:60]!r} is given twice in the body; give it once") from None
        except (ValueError, RecursionError):
            raise Refused(400, f"the body must be one {KINDS[collection]} as a JSON object") from None
        if not isinstance(obj, dict):
            raise Refused(400, f"the body must be one {KINDS[collection]} as a JSON object")
        for read_only in READ_ONLY_FIELDS:
            obj.pop(read_only, None)
        keyish = sorted(k[:40] for k in obj if k not in SECRET_NAME_FIELDS and SECRET_FIELD_RE.search(k))
        if keyish:
            raise Refused(
                400,
                f"refused field(s) {', '.join(keyish)}: this API never takes a key. Store the key in "
                'Key Vault and give its secret name as "apiKeySecret" (or, locally, the name of an '
                'environment variable holding it as "apiKeyEnv")',
            )
        obj = {"name": name, **obj}  # the name first, as in a hand-written file
        if obj["name"] != name:
            raise Refused(
                400,
                f"the body names {str(obj['name'])[:80]!r} but the URL names {name!r}; they must agree "
                "(a rename is a PUT of the new name and a DELETE of the old)",
            )
        return obj

    def _preconditions(
        self, existing: dict[str, Any] | None, headers: Mapping[str, str], kind: str, name: str, creating_allowed: bool
    ) -> None:
        if_match = _header(headers, "if-match")
        if existing is None:
            if if_match is not None:
                raise Refused(412, f"no {kind} named {name!r} exists (any more): If-Match cannot match")
            if not creating_allowed:
                raise Refused(404, f"no {kind} named {name!r}")
            return
        if _header(headers, "if-none-match") == "*":
            raise Refused(412, f"{kind} {name!r} exists already (If-None-Match: *)")
        etag = docs.object_etag(existing)
        if if_match is None:
            raise Refused(
                428,
                f"{kind} {name!r} exists: send If-Match with its ETag (from GET) so a change made "
                "meanwhile is not overwritten",
                etag=etag,
            )
        if not _etag_matches(if_match, etag):
            raise Refused(
                412,
                f"{kind} {name!r} was changed since you read it: GET it again, re-apply your change "
                "and send the new ETag",
                etag=etag,
            )

    def _commit(self, edit: Callable[[dict[str, Any]], tuple[Answer, dict[str, Any]]]) -> Answer:
        """Read, edit, validate and write conditionally; on a lost race read again and decide again."""
        for _ in range(WRITE_ATTEMPTS):
            data, version = self.document.read()
            doc = docs.parse(data, self.document.source)
            answer, audit = edit(copy.deepcopy(doc))
            new_doc = audit.pop("document")
            text = docs.dumps(new_doc)
            try:
                _validate(text.decode(), self.document.source)
            except ConfigError as exc:
                raise Refused(
                    400, "the change was not saved: the definitions would be invalid", problems=exc.problems
                ) from None
            if self.document.write(text, version):
                record = self.audit_log.append(**audit)
                answer.body = {**answer.body, "auditId": record["id"]} if isinstance(answer.body, dict) else answer.body
                self.on_change()
                return answer
        raise Refused(503, "the definitions kept changing while this change was being saved; try again")

    def _put(self, caller: Caller, collection: str, name: str, headers: Mapping[str, str], body: bytes) -> Answer:
        kind = KINDS[collection]
        if collection == "connections":
            caller.require(ADMIN, what="changing a connection")
        else:
            caller.require(ADMIN, OPERATOR, what="changing an export")
        obj = self._body(collection, name, body)

        def edit(doc: dict[str, Any]) -> tuple[Answer, dict[str, Any]]:
            existing = self._find(doc, collection, name)
            if collection == "exports":
                used = {self.connection_of(doc, obj)} | ({self.connection_of(doc, existing)} if existing else set())
                self._require_export_access(caller, doc, sorted(used), f"changing export {name!r}")
                acknowledged = (existing or {}).get("dataTransferAcknowledged")
                if not caller.is_admin and obj.get("dataTransferAcknowledged") != acknowledged:
                    # The privacy acknowledgement is the admin's, given on the connection (or, in old files, here).
                    raise Forbidden(
                        f'changing "dataTransferAcknowledged" of export {name!r} needs the role {ADMIN}; '
                        f"{caller.describe()}"
                    )
            # Roles first: a caller who may not change the object learns that, not its ETag.
            self._preconditions(existing, headers, kind, name, creating_allowed=True)
            if collection not in doc or not isinstance(doc[collection], list):
                doc = _with_list_first(doc, collection) if collection == "connections" else {**doc, collection: []}
            items = doc[collection]
            if existing is None:
                items.append(obj)
            else:
                items[next(i for i, o in enumerate(items) if isinstance(o, dict) and o.get("name") == name)] = obj
            view = self._view(collection, obj)
            answer = Answer(200 if existing else 201, view, {"ETag": view["etag"]})
            return answer, {
                "who": caller.audit(),
                "action": "put",
                "kind": kind,
                "name": name,
                "before": existing,
                "after": obj,
                "document": doc,
            }

        return self._commit(edit)

    def _delete(
        self, caller: Caller, collection: str, name: str, headers: Mapping[str, str], params: Mapping[str, str]
    ) -> Answer:
        kind = KINDS[collection]
        caller.require(ADMIN, what=f"deleting a {kind}")
        purge = (params.get("purgeState") or "").lower() == "true"
        if collection == "exports" and purge and self.list_runs is not None:
            running = [r["runId"] for r in self.list_runs(name) if r.get("status") == "running"]
            if running:
                raise Refused(
                    409,
                    f"export {name!r} has a run under way ({', '.join(running)}): let it finish "
                    "before purging its state; nothing was deleted",
                )

        def edit(doc: dict[str, Any]) -> tuple[Answer, dict[str, Any]]:
            existing = self._find(doc, collection, name)
            self._preconditions(existing, headers, kind, name, creating_allowed=False)
            if collection == "connections":
                users = [e.get("name") for e in self._objects(doc, "exports") if self.connection_of(doc, e) == name]
                if users:
                    raise Refused(
                        409,
                        f"connection {name!r} is used by export(s) {', '.join(map(str, users))}: "
                        "move or delete them first",
                        exports=users,
                    )
            doc[collection] = [o for o in doc[collection] if not (isinstance(o, dict) and o.get("name") == name)]
            answer = Answer(
                200, {"deleted": name, "kind": kind, **({"purgedState": purge} if kind == "export" else {})}
            )
            return answer, {
                "who": caller.audit(),
                "action": "delete",
                "kind": kind,
                "name": name,
                "before": existing,
                "after": None,
                "document": doc,
                **({"purgeState": purge} if kind == "export" else {}),
            }

        answer = self._commit(edit)
        if collection == "exports" and purge:
            answer.body["purgedObjects"] = self._purge(name)
        return answer

    def _purge(self, export: str) -> int:
        """Delete the export's runs and membership state (after its definition is gone, so no new run starts)."""
        count = 0
        for container in (names.RUNS_CONTAINER, names.STATE_CONTAINER):
            for obj in list(self.state_store.list(container, f"{export}/")):
                self.state_store.delete(container, obj.name)
                count += 1
        return count

    # ---------------------------------------------------------------------------------------------- audit

    def audit(self, caller: Caller, params: Mapping[str, str]) -> Answer:
        caller.require(*READ_ROLES, what="reading the audit log")
        text = params.get("limit") or str(DEFAULT_LIMIT)
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            return Answer(400, {"error": f"limit must be a whole number from 1 to {MAX_LIMIT}"})
        after = params.get("after")
        if after is not None and not AUDIT_ID_RE.fullmatch(after):
            return Answer(400, {"error": "after must be the id of an audit record (the previous page's next)"})
        return Answer(200, self.audit_log.read(int(text), after))


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """As the file's own reader: a key given twice is refused, never silently the last one."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _with_list_first(doc: dict[str, Any], collection: str) -> dict[str, Any]:
    """``doc`` with an empty ``collection`` list placed first (connections read best before the exports)."""
    return {collection: [], **{k: v for k, v in doc.items() if k != collection}}
