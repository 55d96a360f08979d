"""Claims that expire: who does a step now, and who takes it over when the holder died (ARCHITECTURE §4 rule 8).

A claim is a chain of small blobs ``<prefix><generation>.json``, each created with if-none-match and holding
its holder and expiry time. The holder of the highest generation owns the step until its expiry; after that,
whoever creates the next generation first takes the step over (exactly one can: create-if-absent) and redoes it.
Nothing is ever released on an exception: a holder that dies simply lets its claim run out. Every step done
under a claim is idempotent, so a holder that was only slow (not dead) and the one that took over end in the
same place.

The same chain without expiry is a *pointer* (``chain_latest`` / ``chain_append``): the export's active run
(shared/pipeline/start.py) is replaced by appending the next generation, so no conditional delete is needed.

Times come from the caller's clock (``Context.clock``), so tests move a fake clock past an expiry instead of
sleeping through it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass

from shared.storage import ObjectStore

# A finalise (or untag-chunk) invocation is cut off by the Functions host after host.json's functionTimeout
# (10 minutes). A claim must outlive any live holder, so it lasts longer than that; a dead holder's claim then
# blocks the step for at most this long before another invocation (the timer, a redelivered message, a re-run)
# takes it over. tests/azure check it against host.json.
FINALISE_LEASE_SECONDS = 15 * 60


@dataclass(frozen=True)
class Lease:
    name: str
    generation: int
    holder: str
    expires_at: float

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _newest(store: ObjectStore, container: str, prefix: str) -> tuple[int, str] | None:
    """(generation, name) of the highest generation ``<prefix><generation>.json``; None if there is none."""
    newest = None
    for obj in store.list(container, prefix):
        suffix = obj.name[len(prefix):].removesuffix(".json")
        if suffix.isdigit() and (newest is None or int(suffix) > newest[0]):
            newest = (int(suffix), obj.name)
    return newest


def current(store: ObjectStore, container: str, prefix: str) -> Lease | None:
    """The newest claim in the chain, expired or not; None if the step was never claimed."""
    newest = _newest(store, container, prefix)
    if newest is None:
        return None
    data = json.loads(store.read(container, newest[1]))
    return Lease(newest[1], newest[0], data.get("holder", "?"), float(data["expiresAt"]))


def claim(store: ObjectStore, container: str, prefix: str, now: float, seconds: float = FINALISE_LEASE_SECONDS,
          *, take_over: bool = False) -> Lease | None:
    """Claim the step for ``seconds``; None while someone else's claim is live (or another taker won the race).
    ``take_over`` ignores a live claim: for a caller that knows its holder is dead (the CLI, whose run folder's
    heartbeat went stale)."""
    held = current(store, container, prefix)
    if held is not None and held.expires_at > now and not take_over:
        return None
    generation = held.generation + 1 if held else 1
    lease = Lease(f"{prefix}{generation:06d}.json", generation, _holder(), now + seconds)
    body = json.dumps({"holder": lease.holder, "claimedAt": now, "expiresAt": lease.expires_at}).encode()
    return lease if store.create(container, lease.name, body) else None


# ---------------------------------------------------------------------------------------------------- chains

# Generations kept behind the newest one in a pointer chain; older ones are deleted (nobody competes for them).
CHAIN_KEEP = 8


def chain_latest(store: ObjectStore, container: str, prefix: str) -> tuple[int, dict]:
    """The newest entry of a pointer chain ``<prefix><generation>.json``: (generation, body); (0, {}) if none."""
    newest = _newest(store, container, prefix)
    if newest is None:
        return 0, {}
    return newest[0], json.loads(store.read(container, newest[1]))


def chain_append(store: ObjectStore, container: str, prefix: str, after: int, body: dict) -> bool:
    """Add generation ``after + 1``; False if someone else added it first (then re-read and decide again).
    Replacing a pointer this way needs no conditional delete: exactly one writer wins each generation."""
    name = f"{prefix}{after + 1:08d}.json"
    if not store.create(container, name, json.dumps(body).encode()):
        return False
    if chain_latest(store, container, prefix)[0] != after + 1:
        # A reader so late that its generation was already pruned re-created it: it did not win anything.
        store.delete(container, name)
        return False
    for old in range(max(1, after + 1 - CHAIN_KEEP - 4), after + 1 - CHAIN_KEEP):
        store.delete(container, f"{prefix}{old:08d}.json")
    return True
