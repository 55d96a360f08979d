"""One Omnisend request budget per brand, shared by every instance and every run (ARCHITECTURE §4 rule 9).

Omnisend counts requests per brand in a sliding 60 s window. The Functions app may run any number of instances,
each with several invocations, and several exports may run at once; the number of instances is NOT an input here.
Instead, every request takes a *slot* (a point in time) from one small blob, updated with an ETag condition:

    {"v": 1, "perMinute": 300, "cursor": 1795000123.4, "side": 1795000098.0}

- **The send lane** (``cursor``, ``SEND_SHARE`` of the budget): the plan stage reserves one slot per batch in one
  update (``reserve(n)`` → n start times, evenly spaced) and sends each batch's queue message with its slot as the
  initial visibility delay, so the *queue itself* releases sends at the budget rate, however many instances take
  them. A send that comes back (429/5xx re-enqueue, or a delivery too late for its slot, e.g. after its instance
  died) reserves a new slot at the end of the lane.
- **The side lane** (``side``, ``SIDE_SHARE``): requests decided at request time (verify polls, untag calls, any
  request of a message without a slot) take one slot each (``take()``): the send lane's if it is idle (its cursor
  is not in the future, so nothing is scheduled there), else the side lane's. So verification never waits behind
  a long send schedule, untagging after the sends uses the whole budget, and while sends run they cannot crowd out
  the budget (together: ``SEND_SHARE + SIDE_SHARE`` of it).

Why the shares add up to less than the budget: a send may start up to ``LATE_TOLERANCE_SECONDS`` after its slot
(queue visibility is whole seconds and instances poll), so a 60 s window can hold the slots of 60 + 2 s:
0.96 × 62 / 60 = 0.992 of the budget. Sends then use 92 % and verification a few more while there is work.

The blob holds two times and a rate, never a list: its size does not grow with the schedule. Instances' clocks
are NTP-synchronised in Azure (milliseconds apart), which is far inside the tolerance.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from shared import names
from shared.errors import RetryLater

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.settings import Settings

# Fractions of OMNISEND_REQUESTS_PER_MINUTE (see the module docstring for why they sum to 0.96).
SEND_SHARE = 0.92
SIDE_SHARE = 0.04
# A send delivered later than this after its slot takes a new slot instead of running: running late would
# crowd the window after it. Instances poll an empty queue at most every 2 s (host.json maxPollingInterval) and
# visibility is whole seconds; 2 s covers the usual lag, later deliveries (a crashed instance's message) re-queue.
LATE_TOLERANCE_SECONDS = 2.0
# A request taken from the side lane sleeps for its slot if that is at most this far away; further away, the
# message is re-enqueued with that delay instead of holding an invocation (RetryLater with retry_after). 10 s: two
# side-lane slots at 300/min (one every 5 s); a verify poll that would wait longer comes back later instead.
MAX_SLOT_WAIT_SECONDS = 10.0
# ETag conflicts: another instance updated the blob between our read and write; re-read and try again. Each
# attempt is two small storage calls; 100 is never reached in practice (a few instances, one update per plan).
MAX_CONFLICT_RETRIES = 100
SCHEMA_VERSION = 1


class BudgetBlob(Protocol):
    """Where the reservation lives: read with its ETag, write only if the ETag still matches."""

    def load(self) -> tuple[bytes | None, str | None]:
        """(content, etag), or (None, None) when the blob does not exist yet."""

    def save(self, data: bytes, etag: str | None) -> bool:
        """Write if unchanged since ``etag`` (None: only if it still does not exist). False on a conflict."""


class AzureBudgetBlob:
    """The reservation as a blob: ``names.STATE_CONTAINER``/``names.BUDGET_BLOB`` (a container that never expires)."""

    def __init__(self, service: Any, container: str = names.STATE_CONTAINER, name: str = names.BUDGET_BLOB) -> None:
        self._service = service  # azure.storage.blob.BlobServiceClient
        self._container = container
        self._blob = service.get_blob_client(container, name)

    @classmethod
    def from_settings(cls, settings: Settings, credential: TokenCredential | None = None, **kw: str) -> AzureBudgetBlob:
        """The run-state account: a connection string (Azurite) or the identity-based blob endpoint."""
        from azure.storage.blob import BlobServiceClient

        if settings.storage_connection_string:
            return cls(BlobServiceClient.from_connection_string(settings.storage_connection_string), **kw)
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
        return cls(BlobServiceClient(settings.blob_service_uri, credential=credential), **kw)

    def load(self) -> tuple[bytes | None, str | None]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            download = self._blob.download_blob()
            return download.readall(), download.properties.etag
        except ResourceNotFoundError:
            return None, None

    def save(self, data: bytes, etag: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

        try:
            if etag is None:
                self._blob.upload_blob(data, overwrite=False)
            else:
                self._blob.upload_blob(data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified)
            return True
        except ResourceExistsError:
            return False
        except ResourceNotFoundError:
            # The container is missing (a fresh local account; in Azure the template creates it).
            with contextlib.suppress(ResourceExistsError):
                self._service.create_container(self._container)
            return False
        except HttpResponseError as exc:
            if exc.status_code == 412:  # the ETag no longer matches
                return False
            raise


@dataclass(frozen=True)
class _Lanes:
    cursor: float  # the send lane's next free slot (epoch seconds)
    side: float  # the side lane's next free slot


class RequestBudget:
    """Hands out request slots for one brand from the shared blob (see the module docstring)."""

    def __init__(self, blob: BudgetBlob, requests_per_minute: float, *, clock: Callable[[], float] = time.time,
                 send_share: float = SEND_SHARE, side_share: float = SIDE_SHARE,
                 max_wait: float = MAX_SLOT_WAIT_SECONDS) -> None:
        if not requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be > 0, got {requests_per_minute!r}")
        self.blob = blob
        self.requests_per_minute = float(requests_per_minute)
        self.send_interval = 60.0 / (requests_per_minute * send_share)
        self.side_interval = 60.0 / (requests_per_minute * side_share)
        self.clock = clock
        self.max_wait = max_wait
        self.conflicts = 0  # ETag conflicts met (for tests and logs)

    def reserve(self, n: int, not_before: float | None = None) -> list[float]:
        """``n`` send-lane slots, evenly spaced from the lane's cursor (or now, or ``not_before``, if later)."""
        if n <= 0:
            return []

        def change(lanes: _Lanes, now: float) -> tuple[_Lanes, list[float]]:
            start = max(lanes.cursor, now, not_before or now)
            slots = [start + i * self.send_interval for i in range(n)]
            return _Lanes(start + n * self.send_interval, lanes.side), slots

        return self._update(change)

    def take(self, max_wait: float | None = None) -> float:
        """One slot for a request made now: the idle send lane's, else the side lane's. Raises RetryLater (with
        the wait as retry_after) instead of reserving when the slot would be more than ``max_wait`` away."""

        max_wait = self.max_wait if max_wait is None else max_wait

        def change(lanes: _Lanes, now: float) -> tuple[_Lanes, float]:
            if lanes.cursor <= now:
                return _Lanes(now + self.send_interval, lanes.side), now
            slot = max(lanes.side, now)
            if slot - now > max_wait:
                raise BudgetBusy(f"the Omnisend request budget is in use for the next {slot - now:.0f} s",
                                 retry_after=math.ceil(slot - now))
            return _Lanes(lanes.cursor, slot + self.side_interval), slot

        return self._update(change)

    def defer(self, seconds: float) -> None:
        """After a 429 (someone else used the brand's budget): no slot of either lane before now + ``seconds``."""
        if seconds <= 0:
            return

        def change(lanes: _Lanes, now: float) -> tuple[_Lanes, None]:
            until = now + seconds
            return _Lanes(max(lanes.cursor, until), max(lanes.side, until)), None

        self._update(change)

    def lanes(self) -> dict[str, float]:
        """The current reservation, for status and tests: {"cursor", "side", "perMinute"}."""
        data, _ = self.blob.load()
        lanes = self._parse(data)
        return {"cursor": lanes.cursor, "side": lanes.side, "perMinute": self.requests_per_minute}

    def _update(self, change: Callable[[_Lanes, float], tuple[_Lanes, Any]]) -> Any:
        for _ in range(MAX_CONFLICT_RETRIES):
            data, etag = self.blob.load()
            lanes, result = change(self._parse(data), self.clock())
            body = {"v": SCHEMA_VERSION, "perMinute": self.requests_per_minute,
                    "cursor": round(lanes.cursor, 3), "side": round(lanes.side, 3)}
            if self.blob.save(json.dumps(body).encode(), etag):
                return result
            self.conflicts += 1
        raise RetryLater(f"the request budget blob kept changing under us ({MAX_CONFLICT_RETRIES} conflicts)")

    @staticmethod
    def _parse(data: bytes | None) -> _Lanes:
        if not data:
            return _Lanes(0.0, 0.0)
        try:
            body = json.loads(data)
            return _Lanes(float(body["cursor"]), float(body["side"]))
        except (ValueError, KeyError, TypeError):
            return _Lanes(0.0, 0.0)  # unreadable: start afresh (at worst one window's worth of slots overlaps)


class BudgetBusy(RetryLater):
    """Our own request budget has no slot soon enough: nothing was asked of Omnisend, so it is not an attempt."""


class SlotMissed(RetryLater):
    """A send reached its request more than the late tolerance after its slot (a slow or crashed instance, a
    backlog): it must not run now, it takes a new slot. Raised before anything is sent."""


class BudgetPacer:
    """The Omnisend client's pacer in the Functions app (same interface as ``shared.omnisend.Pacer``).

    A request made inside ``prepaid(slot)`` uses that send-lane slot (the one its queue message was released for):
    it waits for it if early, and raises ``SlotMissed`` if more than ``late_tolerance`` late, so every send starts
    within [slot, slot + tolerance] whatever happened before it. Any other request takes a slot from the budget now
    (``RequestBudget.take``). One prepaid slot pays for one request: a second request in the same block (a key
    re-read after a 401) takes its own slot.

    ``prepaid(slot, count=n)``: the message was released for ``n`` consecutive send-lane slots from ``slot`` (one
    ``reserve(n)``, ``send_interval`` apart): a claim takeover's adoption reads and its POST
    (shared/pipeline/send.py). Each request takes the next of them, waiting for it if early; a slot already more
    than the tolerance past is skipped (wasted, never used late, so no window holds more than the budget), and
    ``SlotMissed`` is raised only when every slot was missed before any was used.
    """

    def __init__(self, budget: RequestBudget, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.budget = budget
        self.requests_per_minute = budget.requests_per_minute
        self._sleep = sleep
        self._local = threading.local()

    @contextlib.contextmanager
    def prepaid(self, slot: float, late_tolerance: float = LATE_TOLERANCE_SECONDS, *, count: int = 1) -> Iterator[None]:
        slots = [slot + i * self.budget.send_interval for i in range(max(1, count))]
        self._local.slot = _Prepaid(slots, late_tolerance)
        try:
            yield
        finally:
            self._local.slot = None

    def acquire(self) -> None:
        prepaid = getattr(self._local, "slot", None)
        if prepaid is not None:
            slot = prepaid.next(self.budget.clock())
            if slot is None:
                self._local.slot = None  # spent or missed: later requests of this block take their own slots
                if not prepaid.used:
                    late = self.budget.clock() - prepaid.first
                    raise SlotMissed(f"{late:.1f} s past its request slot (tolerance {prepaid.tolerance} s)")
                slot = self.budget.take()
        else:
            slot = self.budget.take()
        wait = slot - self.budget.clock()
        if wait > 0:
            self._sleep(wait)

    def defer(self, seconds: float) -> None:
        self.budget.defer(seconds)


class _Prepaid:
    """The send-lane slots one invocation's message was released for, used in order (see ``BudgetPacer``)."""

    def __init__(self, slots: list[float], tolerance: float) -> None:
        self.first = slots[0]
        self.tolerance = tolerance
        self.used = False
        self._slots = slots

    def next(self, now: float) -> float | None:
        """The next slot a request made ``now`` may use (None: none left); slots already missed are dropped."""
        while self._slots and now - self._slots[0] > self.tolerance:
            self._slots.pop(0)
        if not self._slots:
            return None
        self.used = True
        return self._slots.pop(0)
