"""One background thread running delayed actions (batch state changes, async tag operations) in due order."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="omnisend-sim-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def at(self, due: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), action))
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                if self._stopped:
                    return
                _due, _seq, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:  # a failing action must not kill the worker; the batch simply stays as it was
                import traceback

                traceback.print_exc()
