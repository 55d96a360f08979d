"""HTTP client for Omnisend's batch and tag endpoints: pacing, retries, key rotation, typed errors.

Every request: pacer slot -> API key from the provider -> HTTP -> classify the answer:
- 2xx: done.
- 401/403: re-read the key once (``api_key.get(refresh=True)``: the key may have been rotated) and retry once;
  refused again -> AuthRejected ("refused or lacks permission for METHOD PATH" for a 403). A v3 403 that reads
  as Omnisend's temporary block ("blocked due to many errors") is retried after a wait instead.
- 408/429/5xx/524, timeouts: back off and retry up to ``max_attempts``, then RetryLater. A 429 (and a v3 block)
  also defers the shared pacer, so every thread of the process slows down, not only this one; the wait is
  Omnisend's hint: ``retryAfter`` in the body, ``Retry-After``, or v3's ``X-Rate-Limit-Reset``.
- no answer at all (connection refused, DNS, reset): retried every BREAKER_PROBE_SECONDS until the circuit breaker
  (breaker.py) decides Omnisend is unreachable -> OmnisendUnreachable; with max_attempts=1 (Functions) RetryLater
  at once, the breaker's count going on across invocations.
- a fatal error (AuthRejected, OmnisendUnreachable) sets the run's StopSignal when the client has one (the CLI):
  no thread starts another request after it, and every wait returns at once.
- anything else: the calling method decides (BatchRejected for a refused batch, "missing" for an unknown batch,
  UnexpectedResponse otherwise).
Messages carry method, path, status and Omnisend's request id; never the key, never contact data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import requests

from shared.errors import AuthRejected, ConfigError, RetryLater
from shared.omnisend.breaker import BREAKER_PROBE_SECONDS, CircuitBreaker
from shared.omnisend.errors import (
    BaseUrlNotFound,
    BatchRejected,
    OmnisendUnreachable,
    UnexpectedResponse,
    UntagNotSupported,
)
from shared.omnisend.limits import API_2026, limits_for
from shared.omnisend.pacing import Pacer
from shared.omnisend.payloads import encode_batch_body
from shared.omnisend.problems import Problem, mask_emails, parse_problem
from shared.omnisend.retry import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_INLINE_WAIT_SECONDS,
    V3_BLOCK_WAIT_SECONDS,
    backoff_seconds,
    is_retryable_status,
    looks_like_temporary_block,
    parse_rate_limit_reset,
    parse_retry_after_header,
)
from shared.omnisend.transport import new_session, request_deadline
from shared.settings import base_url_problem
from shared.stopping import StopSignal

log = logging.getLogger(__name__)

# Omnisend's docs advise a ~10 s client timeout (latency spikes happen); the official WordPress client uses 10 s.
# It bounds the connect and each socket read.
REQUEST_TIMEOUT_SECONDS = 10.0
# ...and this bounds the whole request (connect, send, headers, body), which a read timeout alone does not: a server
# trickling a byte every few seconds never trips it. Three read timeouts: room for a 1 MB batch upload on a slow
# link and a latency spike, yet a stalled request frees its worker within half a minute.
REQUEST_DEADLINE_SECONDS = 30.0
# /contacts/tags is limited to 60 requests/min per brand (not the default 400). Pacing at 90% of it leaves room
# for clock skew between us and Omnisend's sliding window and for the brand's other integrations.
TAGS_REQUESTS_PER_MINUTE = 60
TAGS_SAFETY_FACTOR = 0.9
# DELETE /contacts/tags takes at most 250 emails and 100 tags per request.
UNTAG_MAX_EMAILS = 250
UNTAG_MAX_TAGS = 100
# GET /batches takes limit 1..250: one request reports up to 250 batches.
BATCH_LIST_PAGE_SIZE = 250
# Status given to a batch Omnisend does not know (404): deleted after its 7-day retention, or never created.
MISSING_STATUS = "missing"
# A proven key is not proven again for this long (the Functions plan stage asks once per run; one instance may
# start many runs in a minute).
PREFLIGHT_CACHE_SECONDS = 60.0
# What a 404 on an endpoint that always exists means (the client appends /api or /v3 itself).
BASE_URL_HINT = (
    "OMNISEND_BASE_URL should be the host only, e.g. https://api.omnisend.com: it should not end in /api or /v3"
)

_TRANSIENT_EXCEPTIONS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
# No HTTP answer at all: what the circuit breaker counts. A read timeout or a body cut short means the server
# answered (it is reachable, only slow or flaky), so those are ordinary transient failures.
_NO_ANSWER_EXCEPTIONS = (requests.ConnectionError,)
_BATCH_REFUSED_STATUSES = frozenset({400, 413, 422})


class ApiKeyProvider(Protocol):
    def get(self, refresh: bool = False) -> str:
        """The current key. ``refresh=True`` after a 401/403: re-read it from its source (key rotation)."""
        ...


@dataclass(frozen=True)
class BatchStatus:
    batch_id: str
    status: str  # pending | inProgress | finished | stopped, or MISSING_STATUS
    total: int
    finished: int  # processed, failures included
    errors: int
    ended_at: str | None = None  # v3 examples spell it "enddedAt"; both are read
    created_at: str | None = None


@dataclass(frozen=True)
class ItemFailure:
    email: str | None
    response_code: int
    message: str  # Omnisend's message, emails masked
    retryable: bool
    position: int | None = None  # the item's index in the batch, when Omnisend's entry says it (see _position_of)


@dataclass(frozen=True)
class BatchItems:
    """What GET /batches/{id}/items told about each item: failures, and the successes Omnisend echoed.

    ``succeeded`` holds (email, position) of each success entry; either may be None when the entry lacks the
    ``request`` echo or a position. ``errors_count`` is the batch's own count, to tell whether every failure
    could be mapped to an item.
    """

    failures: list[ItemFailure]
    succeeded: list[tuple[str | None, int | None]]
    errors_count: int


def encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes: no usable body
        return None


def _item_retryable(code: int) -> bool:
    return code in (408, 429) or 500 <= code <= 599


def _email_of(request: Any) -> str | None:
    if isinstance(request, dict):
        for ident in request.get("identifiers") or ():
            if isinstance(ident, dict) and ident.get("type") == "email" and ident.get("id"):
                return str(ident["id"])
    return None


def _position_of(entry: dict) -> int | None:
    """The item's 0-based index in the batch, if the entry carries one. Omnisend documents only ``itemID`` (an id it
    assigns, which we cannot map) and the ``request`` echo; a ``position``/``index`` field is read when present so
    that an entry without the echo can still be mapped (the simulator's ``batch_items_echo="position"``)."""
    for name in ("position", "index"):
        value = entry.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _batch_status(body: dict, batch_id: str | None = None) -> BatchStatus:
    return BatchStatus(
        batch_id=str(body.get("batchID") or batch_id or ""),
        status=str(body.get("status") or ""),
        total=int(body.get("totalCount") or 0),
        finished=int(body.get("finishedCount") or 0),
        errors=int(body.get("errorsCount") or 0),
        ended_at=body.get("endedAt") or body.get("enddedAt") or None,
        created_at=body.get("createdAt") or None,
    )


class OmnisendClient:
    def __init__(
        self,
        *,
        base_url: str,
        api_version: str,
        api_key: ApiKeyProvider,
        pacer: Pacer,
        session: requests.Session | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        tags_pacer: Pacer | None = None,
        rng: random.Random | None = None,
        deadline_seconds: float = REQUEST_DEADLINE_SECONDS,
        stop: StopSignal | None = None,
    ) -> None:
        """``stop``: the run's stop flag (CLI). Without one (Functions: one client serves many runs) fatal errors
        are only raised, and waits are plain sleeps."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        problem = base_url_problem(base_url.rstrip("/"))
        if problem:  # Settings refuses it already; this guards every other way of building a client
            raise ValueError(f"refusing Omnisend base URL: {problem}")
        self.api_version = api_version
        self.limits = limits_for(api_version)
        self.base_url = base_url.rstrip("/")
        self._root = self.base_url + self.limits.base_path
        self._latch_fatal = stop is not None
        self.stop = stop or StopSignal()
        sleep = sleep or (self.stop.sleep if stop is not None else time.sleep)
        self._breaker = CircuitBreaker(clock)
        self._preflight_ok: dict[bytes, float] = {}
        self._api_key = api_key
        self._pacer = pacer
        self._tags_pacer = tags_pacer or Pacer(TAGS_REQUESTS_PER_MINUTE * TAGS_SAFETY_FACTOR, clock=clock, sleep=sleep)
        self._own_session = session is None
        self._session = session if session is not None else new_session()
        self._deadline_seconds = deadline_seconds
        self._max_attempts = max_attempts
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._counter_lock = threading.Lock()
        self._per_thread = threading.local()
        self.requests_made = 0
        self.responses_429 = 0

    @property
    def thread_requests(self) -> int:
        """Requests made by the calling thread: what one stage call cost, even while other threads send."""
        return getattr(self._per_thread, "count", 0)

    # ---- public API -------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """One read-only authenticated request before the first write: proves base URL, API version and key.

        ``GET /batches?endpoint=contacts&limit=1`` exists on both API versions, is the cheapest authenticated read
        the export needs anyway (verification lists batches), and changes nothing. Refused key -> AuthRejected
        (after one re-read); 404 -> BaseUrlNotFound; no answer -> OmnisendUnreachable; transient -> RetryLater.
        A key proven in the last PREFLIGHT_CACHE_SECONDS is not proven again.
        """
        proof = hashlib.sha256(self._api_key.get().encode("utf-8")).digest()
        if self._preflight_ok.get(proof, float("-inf")) > self._clock():
            return
        path = "/batches"
        resp = self._request("GET", path, params={"endpoint": "contacts", "limit": 1})
        if resp.status_code >= 300:
            raise self._unexpected("GET", path, resp.status_code, self._problem(resp))
        self._preflight_ok[proof] = self._clock() + PREFLIGHT_CACHE_SECONDS

    def create_batch(self, items: list[dict]) -> str:
        """POST /batches; returns Omnisend's batchID. Raises BatchRejected when Omnisend refuses the whole batch.

        Not idempotent on Omnisend's side: a retry after a lost response can create the batch twice. Contact upserts
        are keyed on the email, so applying the same batch twice leaves the same contacts.
        """
        if not items:
            raise ValueError("a batch needs at least one item")
        if len(items) > self.limits.max_batch_items:
            raise ValueError(f"{len(items)} items exceed the {self.limits.max_batch_items}-item batch limit")
        body = encode_batch_body(items)
        if len(body) > self.limits.max_body_bytes:
            raise ValueError(f"batch body of {len(body)} bytes exceeds {self.limits.max_body_bytes}")
        path = "/batches"
        resp = self._request("POST", path, body=body)
        if resp.status_code >= 300:
            problem = self._problem(resp)
            if resp.status_code in _BATCH_REFUSED_STATUSES:
                raise BatchRejected(
                    self._evidence("POST", path, resp.status_code, problem, f"batch of {len(items)} items refused"),
                    status=resp.status_code,
                    reason=problem.message,
                    request_id=problem.request_id,
                )
            raise self._unexpected("POST", path, resp.status_code, problem)
        data = _json(resp)
        batch_id = data.get("batchID") if isinstance(data, dict) else None
        if not batch_id:
            # The batch may exist, but without its id we cannot follow it; posting it again is harmless (upserts).
            raise RetryLater(
                f"Omnisend POST {self._path(path)} → {resp.status_code} without a batchID in the body",
                status=resp.status_code,
            )
        return str(batch_id)

    def _batch_list_page(self, params: dict[str, Any]) -> tuple[list, dict]:
        """One page of ``GET /batches``: its ``batches`` list (entries unchecked) and its ``paging`` object."""
        resp = self._request("GET", "/batches", params=params)
        if resp.status_code >= 300:
            raise self._unexpected("GET", "/batches", resp.status_code, self._problem(resp))
        data = _json(resp)
        batches = data.get("batches") if isinstance(data, dict) else None
        if not isinstance(batches, list):
            raise UnexpectedResponse(
                f"Omnisend GET {self._path('/batches')} → {resp.status_code} without a batches list", status=None
            )
        paging = data.get("paging")
        return batches, paging if isinstance(paging, dict) else {}

    def batch_statuses(self, batch_ids: Collection[str]) -> dict[str, BatchStatus]:
        """Statuses of ``batch_ids``, cheaply: list pages first (250 batches a request), then one GET per id not seen.

        Paging stops as soon as every id was seen, at the last page, or once the pages fetched reach the number of
        ids still unseen (so listing never costs more than asking for each id). An id Omnisend does not know (404)
        gets status MISSING_STATUS with zero counts: the caller decides whether to re-send it.
        """
        wanted = set(batch_ids)
        found: dict[str, BatchStatus] = {}
        offset = pages = 0
        while len(found) < len(wanted) and pages < len(wanted) - len(found):
            params = {"endpoint": "contacts", "limit": BATCH_LIST_PAGE_SIZE, "offset": offset}
            batches, paging = self._batch_list_page(params)
            pages += 1
            for body in batches:
                if isinstance(body, dict) and body.get("batchID") in wanted:
                    found[body["batchID"]] = _batch_status(body)
            if len(batches) < BATCH_LIST_PAGE_SIZE or ("next" in paging and not paging["next"]):
                break
            offset += len(batches)
        for batch_id in sorted(wanted - found.keys()):
            found[batch_id] = self._batch_status_by_id(batch_id)
        return found

    def batch_failures(self, batch_id: str) -> list[ItemFailure]:
        """The failed items of a batch (GET /batches/{id}/items, ``errors[]`` only), mapped to their emails."""
        items = self.batch_items(batch_id)
        if items is None:
            raise UnexpectedResponse(f"Omnisend GET {self._path(f'/batches/{batch_id}/items')} → 404", status=404)
        return items.failures

    def batch_items(self, batch_id: str) -> BatchItems | None:
        """GET /batches/{id}/items: failures and echoed successes. None when Omnisend no longer knows the batch
        (404: deleted after its retention, or never created): the caller treats its items as not delivered."""
        path = f"/batches/{batch_id}/items"
        resp = self._request("GET", path)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 300:
            raise self._unexpected("GET", path, resp.status_code, self._problem(resp))
        data = _json(resp)
        if not isinstance(data, dict):
            raise self._unexpected("GET", path, resp.status_code, self._problem(resp))
        failures = []
        for err in data.get("errors") or ():
            if not isinstance(err, dict):
                continue
            try:
                code = int(err.get("responseCode") or 0)
            except (TypeError, ValueError):
                code = 0
            message = parse_problem(err.get("response"), code or None).message
            failures.append(ItemFailure(_email_of(err.get("request")), code, message, _item_retryable(code),
                                        _position_of(err)))
        succeeded = [(_email_of(ok.get("request")), _position_of(ok))
                     for ok in data.get("responses") or () if isinstance(ok, dict)]
        errors_count = _batch_status(data, batch_id).errors
        return BatchItems(failures, succeeded, max(errors_count, len(failures)))

    def recent_batches(self, since_epoch: float, max_pages: int) -> list[BatchStatus]:
        """Contact batches created at or after ``since_epoch`` (newest first), reading at most ``max_pages`` list
        pages. Omnisend's list takes ``dateFrom`` as a date only, so entries are filtered by ``createdAt`` here; the
        list is read newest first and paging stops at the first page that reaches back before ``since_epoch``."""
        since_day = datetime.fromtimestamp(since_epoch, UTC).strftime("%Y-%m-%d")
        found: list[BatchStatus] = []
        offset = 0
        for _ in range(max_pages):
            params = {"endpoint": "contacts", "limit": BATCH_LIST_PAGE_SIZE, "offset": offset, "dateFrom": since_day}
            batches, _ = self._batch_list_page(params)
            reached_older = False
            for body in batches:
                if not isinstance(body, dict):
                    continue
                status = _batch_status(body)
                created = _epoch(status.created_at)
                if created is None or created >= since_epoch:
                    found.append(status)
                else:
                    reached_older = True
            if reached_older or len(batches) < BATCH_LIST_PAGE_SIZE:
                break
            offset += len(batches)
        return found

    def untag(self, emails: Sequence[str], tags: Sequence[str]) -> None:
        """Remove ``tags`` from the contacts with ``emails`` (DELETE /contacts/tags; API 2026-03-15 only).

        Omnisend applies it asynchronously (202) and ignores emails it does not know. Requests go through the
        tags pacer (60/min endpoint limit) and the main pacer (they count against the brand's budget too).
        """
        if self.api_version != API_2026:
            raise UntagNotSupported(self.api_version)
        if not emails or not tags:
            return
        path = "/contacts/tags"
        for t in range(0, len(tags), UNTAG_MAX_TAGS):
            tag_chunk = list(tags[t : t + UNTAG_MAX_TAGS])
            for e in range(0, len(emails), UNTAG_MAX_EMAILS):
                body = encode_json({"tags": tag_chunk, "emails": list(emails[e : e + UNTAG_MAX_EMAILS])})
                resp = self._request("DELETE", path, body=body, tags_endpoint=True)
                if resp.status_code >= 300:
                    raise self._unexpected("DELETE", path, resp.status_code, self._problem(resp))

    def check_key(self) -> None:
        """One read-only request that proves Omnisend accepts the key (the health check).

        ``GET /batches?endpoint=contacts&limit=1``: documented on both API versions, the cheapest authenticated
        GET the client already uses, and it returns batch metadata only (``GET /contacts`` would return a person).
        Raises AuthRejected (refused key), RetryLater (429/5xx/unreachable) or UnexpectedResponse.
        """
        path = "/batches"
        resp = self._request("GET", path, params={"endpoint": "contacts", "limit": 1})
        if resp.status_code >= 300:
            raise self._unexpected("GET", path, resp.status_code, self._problem(resp))

    def add_tags(self, emails: Sequence[str], tags: Sequence[str]) -> None:
        """Add ``tags`` to the contacts with ``emails`` (POST /contacts/tags, documented as additive; API
        2026-03-15 only). Asynchronous at Omnisend (202); same chunking and pacing as ``untag``."""
        if self.api_version != API_2026:
            raise ConfigError(f"tagsVia 'tagsEndpoint' needs OMNISEND_API_VERSION=2026-03-15; API {self.api_version} "
                              "has no /contacts/tags endpoint (use tagsVia 'upsert')")
        path = "/contacts/tags"
        for t in range(0, len(tags), UNTAG_MAX_TAGS):
            for e in range(0, len(emails), UNTAG_MAX_EMAILS):
                body = encode_json({"tags": list(tags[t : t + UNTAG_MAX_TAGS]),
                                    "emails": list(emails[e : e + UNTAG_MAX_EMAILS])})
                resp = self._request("POST", path, body=body, tags_endpoint=True)
                if resp.status_code >= 300:
                    raise self._unexpected("POST", path, resp.status_code, self._problem(resp))

    def post_contact(self, body: dict) -> dict:
        """POST /contacts (one upsert); returns Omnisend's answer (2026: the contact as stored; v3: at least
        ``{email, contactID}``). Used by the consent probe (shared/probe.py), not by exports."""
        resp = self._request("POST", "/contacts", body=encode_json(body))
        data = _json(resp)
        if resp.status_code >= 300:
            raise self._unexpected("POST", "/contacts", resp.status_code, self._problem(resp))
        return data if isinstance(data, dict) else {}

    def find_contact(self, email: str) -> dict | None:
        """GET /contacts?email=: the contact as Omnisend holds it, or None."""
        resp = self._request("GET", "/contacts", params={"email": email})
        data = _json(resp)
        if resp.status_code >= 300 or not isinstance(data, dict):
            raise self._unexpected("GET", "/contacts", resp.status_code, self._problem(resp))
        contacts = data.get("contacts") or []
        return contacts[0] if contacts else None

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> OmnisendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------------------------

    def _batch_status_by_id(self, batch_id: str) -> BatchStatus:
        path = f"/batches/{batch_id}"
        resp = self._request("GET", path)
        if resp.status_code == 404:
            return BatchStatus(batch_id, MISSING_STATUS, 0, 0, 0)
        data = _json(resp)
        if resp.status_code >= 300 or not isinstance(data, dict):
            raise self._unexpected("GET", path, resp.status_code, self._problem(resp))
        return _batch_status(data, batch_id)

    def _headers(self, key: str, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.api_version == API_2026:
            headers["Authorization"] = f"Omnisend-API-Key {key}"
            headers["Omnisend-Version"] = API_2026
        else:
            headers["X-API-KEY"] = key
        return headers

    def _count(self, is_429: bool = False) -> None:
        if not is_429:
            self._per_thread.count = getattr(self._per_thread, "count", 0) + 1
        with self._counter_lock:
            if is_429:
                self.responses_429 += 1
            else:
                self.requests_made += 1

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: bytes | None = None,
        tags_endpoint: bool = False,
    ) -> requests.Response:
        """Send with pacing and retries. Returns the 2xx response, or a non-retryable non-auth one for the caller."""
        try:
            return self._request_retrying(method, path, params=params, body=body, tags_endpoint=tags_endpoint)
        except (AuthRejected, OmnisendUnreachable) as exc:
            if self._latch_fatal:
                self.stop.stop(exc)  # no thread of this run starts another request
            raise

    def _request_retrying(
        self, method: str, path: str, *, params: dict | None, body: bytes | None, tags_endpoint: bool
    ) -> requests.Response:
        url = self._root + path
        pacers = (self._tags_pacer, self._pacer) if tags_endpoint else (self._pacer,)
        attempt = 0
        refreshed = refresh_now = False
        while True:
            attempt += 1
            self.stop.check()
            key = self._api_key.get(refresh=refresh_now)
            refresh_now = False
            for pacer in pacers:
                pacer.acquire()
            self.stop.check()  # the pacer's wait returns early when the run stops: do not send after it
            self._count()
            hint: float | None = None
            problem: Problem | None = None
            attempt_started = self._clock()
            try:
                with self.stop.request(), request_deadline(self._deadline_seconds) as deadline:
                    resp = self._session.request(
                        method,
                        url,
                        params=params,
                        data=body,
                        headers=self._headers(key, body is not None),
                        timeout=REQUEST_TIMEOUT_SECONDS,
                        allow_redirects=False,  # a 3xx is an unexpected answer: nothing is re-sent anywhere
                    )
            except _TRANSIENT_EXCEPTIONS as exc:
                status: int | None = None
                cause = f"deadline of {self._deadline_seconds:g} s exceeded" if deadline.expired else type(exc).__name__
                if isinstance(exc, _NO_ANSWER_EXCEPTIONS) and not deadline.expired:
                    if self._breaker.failed(attempt_started):
                        raise OmnisendUnreachable(self.base_url, f"{self._breaker.describe()}: {cause}") from None
                    if self._max_attempts > 1:
                        # Not counted against max_attempts: the breaker decides, within seconds, whether this is
                        # a blip (the next attempt gets through) or an outage (OmnisendUnreachable).
                        attempt -= 1
                        log.warning("Omnisend %s %s → %s; trying again in %.0f s",
                                    method, self._path(path), cause, BREAKER_PROBE_SECONDS)
                        self._sleep(BREAKER_PROBE_SECONDS)
                        continue
                else:
                    self._breaker.answered()
            except (requests.RequestException, UnicodeError) as exc:
                # Not sent (a header value HTTP cannot carry, a malformed URL...). The exception's own text can quote
                # the header values, the key among them: only its type goes on, without the chained original.
                raise UnexpectedResponse(
                    f"Omnisend {method} {self._path(path)}: request not sent ({type(exc).__name__})", status=None
                ) from None
            else:
                self._breaker.answered()
                status = resp.status_code
                if status < 300:
                    return resp
                if status in (401, 403):
                    problem = self._problem(resp)
                    if status == 403 and self.api_version != API_2026 and looks_like_temporary_block(problem.message):
                        hint = V3_BLOCK_WAIT_SECONDS
                        cause = f"403 (temporarily blocked: {problem.message})"
                    elif not refreshed:
                        # The key may have been rotated since we read it: re-read once, retry once.
                        refreshed = refresh_now = True
                        attempt -= 1  # the auth retry is not a transient-failure attempt
                        log.warning(
                            "Omnisend %s %s → %s; re-reading the API key once", method, self._path(path), status
                        )
                        continue
                    else:
                        raise self._refused(method, path, status, problem)
                elif not is_retryable_status(status):
                    return resp
                else:
                    problem = self._problem(resp)
                    hint = problem.retry_after
                    if hint is None:
                        hint = parse_retry_after_header(resp.headers.get("Retry-After"))
                    if hint is None and status == 429 and self.api_version != API_2026:
                        hint = parse_rate_limit_reset(resp.headers.get("X-Rate-Limit-Reset"))
                    cause = str(status)
                    if status == 429:
                        self._count(is_429=True)
            wait = hint if hint is not None else backoff_seconds(attempt, self._rng)
            defers = status == 429 or status == 403
            if defers:
                pacers[0].defer(wait)  # every thread of the process waits, not only this one
            if attempt >= self._max_attempts or wait > MAX_INLINE_WAIT_SECONDS:
                what = f"Omnisend {method} {self._path(path)} failed after {attempt} attempt(s): {cause}"
                if problem is not None and (problem.title or problem.detail or problem.field_errors):
                    what += f" {problem.message}"
                if problem is not None and problem.request_id:
                    what += f" (request {problem.request_id})"
                raise RetryLater(what, retry_after=hint, status=status)
            log.warning(
                "Omnisend %s %s → %s; attempt %d/%d, retrying in %.2f s",
                method,
                self._path(path),
                cause,
                attempt,
                self._max_attempts,
                wait,
            )
            if not defers:  # a 429 or a block already deferred the pacer, whose next acquire() does the waiting
                self._sleep(wait)

    def _refused(self, method: str, path: str, status: int, problem: Problem) -> AuthRejected:
        if status == 401:
            what = f"Omnisend refused the API key ({status})"
        else:
            # 2026: "insufficient permissions"; v3: "access not allowed". Not necessarily a wrong key.
            what = f"the key was refused or lacks permission for {method} {self._path(path)}"
        return AuthRejected(
            self._evidence(method, path, status, problem, what)
            + "; check OMNISEND_API_KEY / the Key Vault secret"
            + (" and the key's permissions (contacts and batches, read and write)" if status == 403 else "")
        )

    def _path(self, path: str) -> str:
        return self.limits.base_path + path

    def _problem(self, resp: requests.Response) -> Problem:
        return parse_problem(_json(resp), resp.status_code)

    def _evidence(self, method: str, path: str, status: int, problem: Problem, what: str) -> str:
        text = f"{what}: Omnisend {method} {self._path(path)} → {status}"
        if problem.title or problem.detail or problem.field_errors:
            text += f" {problem.message}"
        if problem.request_id:
            text += f" (request {problem.request_id})"
        return text

    def _unexpected(self, method: str, path: str, status: int, problem: Problem) -> UnexpectedResponse:
        hint = " (API version retired: set OMNISEND_API_VERSION)" if status == 410 else ""
        if status == 404 and path == "/batches":
            # /batches exists on both versions: a 404 there means the URL is wrong, not the batch.
            return BaseUrlNotFound(
                self._evidence(method, path, status, problem, f"{self._root}{path} does not exist")
                + f"; {BASE_URL_HINT}",
                status=status,
                request_id=problem.request_id,
            )
        return UnexpectedResponse(
            mask_emails(self._evidence(method, path, status, problem, "unexpected answer") + hint),
            status=status,
            request_id=problem.request_id,
        )
