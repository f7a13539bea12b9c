"""Owner figures, each reused for a few seconds.

Computing the stats reads one row per post (100,000 posts: tens of milliseconds on an
idle machine, more on a busy one); the storage trend reads the snapshots of the days
asked for. Dashboards ask for the same figures over and over, so each is kept for
`max_age_s` seconds (`SMART_RETENTION_OWNER_FIGURES_MAX_AGE_S`) and every answer says
when it was computed (`as_of`). While one request computes a figure, others asking for
the same one wait for it rather than computing it again.
"""

import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class FigureCache:
    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._entries: dict[Hashable, tuple[float, object]] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The figure under `key`, computed by `compute` when missing or too old."""
        if self.max_age_s <= 0:
            return compute()
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() - entry[0] < self.max_age_s:
                return entry[1]  # type: ignore[return-value]
            value = compute()
            self._entries[key] = (self._clock(), value)
            return value
