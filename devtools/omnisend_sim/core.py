"""The simulator's state and request handling, independent of the HTTP plumbing in server.py.

One lock guards all state. Batch items are applied by the scheduler thread in chunks, releasing the lock
between chunks so request handling never waits long.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import errors as err
from .batches import STATUSES as BATCH_STATUSES
from .batches import Batch, BatchStore
from .config import API_VERSION_2026, SimConfig, apply_updates
from .contacts import V3, ContactStore, render_2026, render_state, render_v3
from .ratelimit import FixedWindow, SlidingWindow
from .scheduler import Scheduler
from .util import now_iso
from .validation import validate_contact, validate_tag_request

# Items applied per lock acquisition: small enough that a 1000-item v3 batch never stalls requests for long.
APPLY_CHUNK = 100
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PREFIXES = {"/v3": V3, "/api": API_VERSION_2026}
BATCH_METHODS = {V3: ("POST", "PUT"), API_VERSION_2026: ("POST", "PUT")}
BATCH_ENDPOINTS = {
    V3: ("contacts", "orders", "products", "events", "categories"),
    API_VERSION_2026: ("contacts", "products", "events", "categories"),
}
# Undocumented texts (omnisend-api.md §1, §4.1, §8.1): the simulator's own wording, see docs/simulator.md.
BLOCKED_TEXT = "Forbidden: blocked due to too many errors in a short time; try again later"
FORBIDDEN_TEXT = {V3: "Forbidden", API_VERSION_2026: "Insufficient permissions for this operation"}
LIST_LIMIT_MAX = 250
LIST_LIMIT_DEFAULT = 100


@dataclass
class Response:
    status: int
    body: Any = None  # dict -> JSON; None -> empty body
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


@dataclass
class _Request:
    method: str
    version: str  # "v3" or "2026-03-15"
    route: str  # template below the prefix, e.g. "/batches/{id}"
    params: list[str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    key: str = ""


def _route(rest: str) -> tuple[str, list[str]]:
    parts = [p for p in rest.split("/") if p]
    if parts == ["contacts"]:
        return "/contacts", []
    if parts == ["contacts", "tags"]:
        return "/contacts/tags", []
    if parts == ["batches"]:
        return "/batches", []
    if len(parts) == 2 and parts[0] == "batches":
        return "/batches/{id}", [parts[1]]
    if len(parts) == 3 and parts[0] == "batches" and parts[2] == "items":
        return "/batches/{id}/items", [parts[1]]
    return "/{unknown}", []


def split_api_path(path: str) -> tuple[str, str] | None:
    """(version, rest) for an API path, None for anything else."""
    for prefix, version in PREFIXES.items():
        if path == prefix or path.startswith(prefix + "/"):
            return version, path[len(prefix) :]
    return None


class SimCore:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._initial = copy.deepcopy(config)
        self.lock = threading.Lock()
        self.scheduler = Scheduler()
        self._generation = 0
        self._clear()

    def _clear(self) -> None:
        self.contacts = ContactStore(self.config)
        # config.separate_brands: the contacts of every key but the first (whose are ``contacts``), by key.
        self.brand_contacts: dict[str, ContactStore] = {}
        self.batches = BatchStore()
        self.fixed = FixedWindow()
        self.sliding = SlidingWindow()
        self.tags_sliding = SlidingWindow()
        self.rng = random.Random(self.config.seed)
        self.fail_counts: Counter[str] = Counter()
        self.tag_operations = Counter()
        self.stats: dict[str, Any] = {
            "requests_total": 0,
            "requests_by_route": Counter(),
            "write_requests": 0,
            "responses_by_status": Counter(),
            "responses_429": 0,
            "responses_5xx": 0,
            "dropped": 0,
        }

    # ---- inspection ---------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget contacts, batches, stats, windows and fault counters; restore the construction-time config."""
        self.scheduler.clear()
        with self.lock:
            self._generation += 1
            for name, value in vars(copy.deepcopy(self._initial)).items():
                setattr(self.config, name, value)
            self._clear()

    def configure(self, updates: dict[str, Any], running: bool = True) -> dict[str, Any]:
        with self.lock:
            apply_updates(self.config, updates, running=running)
            if "seed" in updates:
                self.rng = random.Random(self.config.seed)
            return self.config.to_dict()

    def store_of(self, key: str | None) -> ContactStore:
        """The contacts a key sees: one store for every key, or with ``separate_brands`` one per key (a brand each;
        the first key's is ``contacts``). Callers hold the lock."""
        if not self.config.separate_brands or key is None or key == self.config.api_keys[0]:
            return self.contacts
        return self.brand_contacts.setdefault(key, ContactStore(self.config))

    def state(self, include_contacts: bool = True, brand: str | None = None) -> dict[str, Any]:
        with self.lock:
            stats = dict(self.stats)
            stats["requests_by_route"] = dict(stats["requests_by_route"])
            stats["responses_by_status"] = {str(k): v for k, v in stats["responses_by_status"].items()}
            stats["welcome_messages"] = self.contacts.welcome_messages
            stats["batches_by_status"] = {s: self.batches.by_status[s] for s in BATCH_STATUSES}
            stats["batches_total"] = len(self.batches.by_id) + self.batches.forgotten
            stats["batches_forgotten"] = self.batches.forgotten
            stats["contacts_total"] = len(self.contacts.by_email)
            stats["tag_operations"] = dict(self.tag_operations)
            state: dict[str, Any] = {"stats": stats, "config": self.config.to_dict()}
            if include_contacts:
                store = self.store_of(brand)
                state["contacts"] = {e: render_state(c) for e, c in store.by_email.items()}
            return state

    def contact(self, email: str, brand: str | None = None) -> dict[str, Any] | None:
        with self.lock:
            found = self.store_of(brand).by_email.get(email)
            return render_state(found) if found else None

    def seed_contacts(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for spec in specs:
            if not isinstance(spec, dict) or not isinstance(spec.get("email"), str):
                raise ValueError("each seeded contact needs an 'email' string")
        with self.lock:
            return [render_state(self.contacts.seed(spec)) for spec in specs]

    # ---- API entry ----------------------------------------------------------------------------------------
    def handle_api(self, method: str, version: str, rest: str, query: dict, headers: Any, body: bytes) -> Response:
        route, params = _route(rest)
        prefix = "/v3" if version == V3 else "/api"
        req = _Request(method, version, route, params, query, headers, body)
        with self.lock:
            self.stats["requests_total"] += 1
            self.stats["requests_by_route"][f"{method} {prefix}{route}"] += 1
            if method in WRITE_METHODS:
                self.stats["write_requests"] += 1
            # Two draws per request, always, so fault decisions depend only on the seed and request order.
            draw_drop, draw_5xx = self.rng.random(), self.rng.random()
            if draw_drop < self.config.drop_rate:
                self.stats["dropped"] += 1
                return Response(0, drop=True)
        try:
            response = self._gate_and_dispatch(req, draw_5xx)
        except Exception as exc:  # a simulator bug must still look like a server error, not a hang
            response = Response(500, err.error_body(version, 500, f"simulator error: {exc!r}"))
        if version == V3 and "X-Rate-Limit-Limit" not in response.headers:
            with self.lock:
                decision = self.fixed.peek(req.key, *self._limits(req), time.monotonic())
            response.headers.update(_v3_rate_headers(decision))
        with self.lock:
            self.stats["responses_by_status"][response.status] += 1
            if response.status == 429:
                self.stats["responses_429"] += 1
            elif response.status >= 500:
                self.stats["responses_5xx"] += 1
        return response

    def _limits(self, req: _Request) -> tuple[int, float]:
        cfg = self.config
        rpm = cfg.tags_requests_per_minute if req.route == "/contacts/tags" else cfg.requests_per_minute
        return int(rpm), float(cfg.rate_window_seconds)

    def _gate_and_dispatch(self, req: _Request, draw_5xx: float) -> Response:
        cfg = self.config
        v = req.version
        if v != V3:
            asked = req.headers.get("Omnisend-Version")
            if asked not in cfg.supported_versions:
                detail = f"API version {asked!r} is not supported" if asked else "Omnisend-Version header is required"
                return Response(410, err.problem(410, detail))
        key = self._api_key(req)
        if key is None:
            status = int(cfg.auth_status)
            if v == V3:
                text = (
                    "Forbidden"
                    if status == 403
                    else ("Unauthorized - authorization error (invalid basic auth data or API key)")
                )
                return Response(status, err.v3_error(text))
            return Response(status, err.problem(status, "Invalid API key."))
        req.key = key
        if f"{req.method} {req.route}" in cfg.forbidden_routes:
            return Response(403, err.error_body(v, 403, FORBIDDEN_TEXT[v]))
        with self.lock:
            if v == V3 and cfg.block_403 > 0:
                cfg.block_403 -= 1
                return Response(403, err.v3_error(BLOCKED_TEXT))
            if cfg.burst_429 > 0:
                cfg.burst_429 -= 1
                return self._too_many(req, int(cfg.burst_retry_after), None)
            now = time.monotonic()
            limit, window = self._limits(req)
            headers: dict[str, str] = {}
            if v == V3:
                decision = self.fixed.hit(key, limit, window, now)
                headers = _v3_rate_headers(decision)
                if not decision.allowed:
                    return self._too_many(req, decision.reset, headers)
            else:
                limiter = self.tags_sliding if req.route == "/contacts/tags" else self.sliding
                retry_after = limiter.hit(key, limit, window, now)
                if retry_after is not None:
                    return self._too_many(req, retry_after, None)
        if draw_5xx < cfg.error_5xx_rate:
            # Split the injected failures between 500 and 503 with the same draw (deterministic per seed).
            status = 500 if draw_5xx < cfg.error_5xx_rate / 2 else 503
            response = Response(status, err.error_body(v, status, "simulated server error; nothing was applied"))
        elif cfg.enforce_body_limit and len(req.body) > cfg.max_body_bytes:
            detail = f"request body is {len(req.body)} bytes; the limit is {cfg.max_body_bytes}"
            response = Response(413, err.error_body(v, 413, detail))
        else:
            response = self._dispatch(req)
        response.headers.update(headers)
        return response

    def _api_key(self, req: _Request) -> str | None:
        if req.version == V3:
            key = req.headers.get("X-API-KEY")
        else:
            auth = req.headers.get("Authorization") or ""
            scheme, _, key = auth.partition(" ")
            if scheme not in ("Omnisend-API-Key", "Bearer"):
                key = None
        return key if key and key in self.config.api_keys else None

    def _too_many(self, req: _Request, retry_after: int, headers: dict[str, str] | None) -> Response:
        if req.version == V3:
            if headers is None:  # an injected burst: say when to come back, as the fixed window does
                limit, _window = self._limits(req)
                headers = {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": "0",
                           "X-Rate-Limit-Reset": str(retry_after)}
            return Response(429, err.v3_error("Too many requests: rate limit exceeded"), headers)
        out = {"Retry-After": str(retry_after)} if self.config.retry_after_header else {}
        detail = "Too many requests; retry after the given number of seconds."
        return Response(429, err.problem(429, detail, retryAfter=retry_after), out)

    # ---- routes -------------------------------------------------------------------------------------------
    def _dispatch(self, req: _Request) -> Response:
        table = {
            ("POST", "/contacts"): self._post_contact,
            ("GET", "/contacts"): self._get_contacts,
            ("POST", "/batches"): self._post_batch,
            ("GET", "/batches"): self._list_batches,
            ("GET", "/batches/{id}"): self._get_batch,
            ("GET", "/batches/{id}/items"): self._get_batch,
        }
        if req.version != V3:
            table[("POST", "/contacts/tags")] = self._tags
            table[("DELETE", "/contacts/tags")] = self._tags
        handler = table.get((req.method, req.route))
        if handler is not None:
            return handler(req)
        if req.route != "/{unknown}" and any(route == req.route for _m, route in table):
            return Response(405, err.error_body(req.version, 405, f"{req.method} is not allowed here"))
        return Response(404, err.error_body(req.version, 404, "Not found"))

    def _json(self, req: _Request) -> tuple[Any, Response | None]:
        try:
            return json.loads(req.body or b"null"), None
        except ValueError as exc:
            return None, _invalid(req.version, [("", "invalid_json", f"body is not valid JSON: {exc}")])

    def _post_contact(self, req: _Request) -> Response:
        body, problem = self._json(req)
        if problem:
            return problem
        errors = validate_contact(body, req.version == V3)
        if errors:
            return _invalid(req.version, errors)
        with self.lock:
            contact, created = self.store_of(req.key).upsert(body, req.version)
            if req.version == V3:
                return Response(200, {"email": contact.email, "contactID": contact.id})
            return Response(201 if created else 200, render_2026(contact))

    def _get_contacts(self, req: _Request) -> Response:
        limit = _int_param(req.query, "limit", LIST_LIMIT_DEFAULT)
        if limit is None or not 1 <= limit <= LIST_LIMIT_MAX:
            return _invalid(req.version, [("limit", "invalid_value", f"must be an integer 1..{LIST_LIMIT_MAX}")])
        render = render_v3 if req.version == V3 else render_2026
        email = _first(req.query, "email")
        phone = _first(req.query, "phone")
        with self.lock:
            store = self.store_of(req.key)
            if email is not None or phone is not None:
                found = store.by_email.get(email) if email is not None else store.by_phone.get(phone)
                matches = [found] if found is not None and (phone is None or found.phone == phone) else []
                more = False
            else:  # unfiltered listing: first page only (no cursor support)
                matches = []
                for contact in store.by_email.values():
                    if len(matches) == limit:
                        break
                    matches.append(contact)
                more = len(store.by_email) > limit
            contacts = [render(c) for c in matches]
        if req.version == V3:
            return Response(
                200, {"contacts": contacts, "paging": {"previous": None, "next": None, "offset": 0, "limit": limit}}
            )
        paging = {"limit": limit, "hasMore": more, "cursors": {"after": None, "before": None}}
        return Response(200, {"contacts": contacts, "paging": paging})

    def _tags(self, req: _Request) -> Response:
        body, problem = self._json(req)
        if problem:
            return problem
        errors = validate_tag_request(body)
        if errors:
            return _invalid(req.version, errors)
        add = req.method == "POST"
        generation = self._generation

        def apply() -> None:
            with self.lock:
                if generation == self._generation:
                    self.store_of(req.key).tag_operation(body, add)
                    self.tag_operations["added" if add else "removed"] += 1

        self.scheduler.at(time.monotonic() + float(self.config.batch_delay), apply)
        return Response(202, None)

    def _post_batch(self, req: _Request) -> Response:
        body, problem = self._json(req)
        if problem:
            return problem
        errors = self._batch_errors(req.version, body)
        if errors:
            return _invalid(req.version, errors, key="items")
        with self.lock:
            batch = self.batches.create(req.key, req.version, body, now_iso())
            generation = self._generation
        delay = float(self.config.batch_delay)
        start = time.monotonic()
        # Half the delay "pending", half "inProgress", then the items are applied and the batch ends.
        self.scheduler.at(start + delay / 2, lambda: self._start_batch(batch, generation, start + delay))
        status = 200 if req.version == V3 else 201
        return Response(status, {"batchID": batch.id, "totalCount": batch.total})

    def _batch_errors(self, version: str, body: Any) -> list[err.FieldError]:
        if not isinstance(body, dict):
            return [("", "invalid_type", "body must be a JSON object")]
        errors: list[err.FieldError] = []
        method, endpoint, items = body.get("method"), body.get("endpoint"), body.get("items")
        if method not in BATCH_METHODS[version]:
            errors.append(("method", "invalid_value", "must be one of: " + ", ".join(BATCH_METHODS[version])))
        if endpoint not in BATCH_ENDPOINTS[version]:
            errors.append(("endpoint", "invalid_value", "must be one of: " + ", ".join(BATCH_ENDPOINTS[version])))
        elif endpoint != "contacts" or method != "POST":
            errors.append(("endpoint", "unsupported", "the simulator only implements POST contacts batches"))
        cap = self.config.max_batch_items_v3 if version == V3 else self.config.max_batch_items_2026
        if not isinstance(items, list):
            errors.append(("items", "required", "field required but not found in Json"))
        elif len(items) > cap:
            errors.append(("items", "max_items", f"must have at most {cap} items, got {len(items)}"))
        elif not items:
            errors.append(("items", "min_items", "must have at least 1 item"))
        return errors

    def _start_batch(self, batch: Batch, generation: int, end: float) -> None:
        with self.lock:
            if generation != self._generation or batch.id not in self.batches.by_id:
                return  # reset, or forgotten (retention) before it started: nothing of it is applied
            self.batches.set_status(batch, "inProgress")
            batch.started = now_iso()
        self.scheduler.at(end, lambda: self._run_batch(batch, generation))

    def _run_batch(self, batch: Batch, generation: int) -> None:
        items = batch.items or []
        for offset in range(0, max(1, len(items)), APPLY_CHUNK):
            with self.lock:
                if generation != self._generation or batch.id not in self.batches.by_id:
                    return
                for index in range(offset, min(offset + APPLY_CHUNK, len(items))):
                    self._apply_item(batch, items[index])
                    if self._should_stop(batch):
                        self._end_batch(batch, "stopped")
                        return
                if offset + APPLY_CHUNK >= len(items):
                    self._end_batch(batch, "finished")

    def _should_stop(self, batch: Batch) -> bool:
        fraction = self.config.stop_error_fraction
        return fraction is not None and batch.errors_count > fraction * batch.total

    def _end_batch(self, batch: Batch, status: str) -> None:
        self.batches.set_status(batch, status)
        batch.ended = now_iso()
        batch.items = None

    def _apply_item(self, batch: Batch, item: Any) -> None:
        """One item, exactly as POST /contacts would do it; failures are recorded per item."""
        v = batch.version
        errors = validate_contact(item, v == V3)
        if errors:
            code, response = 400, err.validation_body(v, errors)
        else:
            email = next(i["id"] for i in item["identifiers"] if i.get("type") == "email")
            forced = self.config.item_fail.get(email)
            times = self.config.item_fail_times
            if forced is not None and (times is None or self.fail_counts[email] < times):
                self.fail_counts[email] += 1
                code, response = forced, err.error_body(v, forced, "simulated item failure")
            else:
                contact, created = self.store_of(batch.key).upsert(item, v)
                # Success bodies are kept as tuples and rendered on read (batches.render_result): 100k stored
                # response dicts would dominate the simulator's memory. 2026 gets a slim ContactResponse.
                if v == V3:
                    code, response = 200, (contact.email, contact.id)
                else:
                    code, response = (201 if created else 200), (contact.id, contact.email, contact.email_status)
        # The request is kept as compact JSON text, far smaller than the parsed object tree.
        position = batch.finished_count  # items are applied in order
        result = (self.batches.item_ids.new(), json.dumps(item, separators=(",", ":")), code, response, position)
        batch.finished_count += 1
        if code >= 300:
            batch.errors_count += 1
            batch.errors.append(result)
        else:
            batch.responses.append(result)

    def _get_batch(self, req: _Request) -> Response:
        cfg = self.config
        with self.lock:
            self.batches.expire(cfg.batch_retention_seconds, time.monotonic())
            batch = self.batches.by_id.get(req.params[0])
            if batch is not None and cfg.batch_retention_polls is not None and batch.polls >= cfg.batch_retention_polls:
                self.batches.forget(batch)
                batch = None
            if batch is None or batch.key != req.key:
                return Response(404, err.error_body(req.version, 404, f"Batch with '{req.params[0]}' not found"))
            batch.polls += 1
            return Response(200, batch.render(with_items=req.route.endswith("/items"), echo=cfg.batch_items_echo))

    def _list_batches(self, req: _Request) -> Response:
        endpoint = _first(req.query, "endpoint")
        offset = _int_param(req.query, "offset", 0)
        limit = _int_param(req.query, "limit", LIST_LIMIT_DEFAULT)
        status = _first(req.query, "status")
        errors: list[err.FieldError] = []
        if endpoint not in BATCH_ENDPOINTS[req.version]:
            code = "required" if endpoint is None else "invalid_value"
            errors.append(("endpoint", code, "must be one of: " + ", ".join(BATCH_ENDPOINTS[req.version])))
        if offset is None or offset < 0:
            errors.append(("offset", "invalid_value", "must be a non-negative integer"))
        if limit is None or not 1 <= limit <= LIST_LIMIT_MAX:
            errors.append(("limit", "invalid_value", f"must be an integer 1..{LIST_LIMIT_MAX}"))
        if status is not None and status not in BATCH_STATUSES:
            errors.append(("status", "invalid_value", "must be one of: " + ", ".join(BATCH_STATUSES)))
        if errors:
            return _invalid(req.version, errors)
        with self.lock:
            self.batches.expire(self.config.batch_retention_seconds, time.monotonic())
            chosen, more = self.batches.page(req.key, endpoint, offset, limit, status)
            batches = [b.render() for b in chosen]
        base = f"{_base_url(req)}{'/v3' if req.version == V3 else '/api'}/batches?endpoint={endpoint}"
        if status:
            base += f"&status={status}"
        paging = {
            "limit": limit,
            "offset": offset,
            "next": f"{base}&offset={offset + limit}&limit={limit}" if more else None,
            "previous": f"{base}&offset={max(0, offset - limit)}&limit={limit}" if offset > 0 else None,
        }
        return Response(200, {"batches": batches, "paging": paging})


def _v3_rate_headers(decision: Any) -> dict[str, str]:
    return {
        "X-Rate-Limit-Limit": str(decision.limit),
        "X-Rate-Limit-Remaining": str(decision.remaining),
        "X-Rate-Limit-Reset": str(decision.reset),
    }


def _invalid(version: str, errors: list[err.FieldError], key: str = "0") -> Response:
    if version == V3:
        return Response(400, err.v3_validation(errors, key=key))
    return Response(400, err.validation_problem(errors))


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int | None:
    raw = _first(query, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None


def _base_url(req: _Request) -> str:
    host = req.headers.get("Host") or "127.0.0.1"
    return f"http://{host}"


__all__ = ["Response", "SimCore", "split_api_path"]
