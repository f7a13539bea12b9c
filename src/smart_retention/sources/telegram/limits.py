"""Staying within Telegram's rate limits: pacing requests, and reading FloodWaits.

Telegram publishes no request budget. It answers a client that asks too fast with
FLOOD_WAIT_X ("wait X seconds"), and an account that keeps asking during the wait gets
longer waits. So every request is paced (a steady `requests_per_second` per account and
process), and a FloodWait is obeyed: a short one is slept through, a long one defers
the work until it ends (`source.py`), never retried in a loop.
"""

import time
from collections.abc import Callable

# Telegram's waits are whole seconds, counted from its clock: add a little to ours.
FLOOD_WAIT_MARGIN_S = 1
# Short waits slept through in a row for one request before it counts as a long one.
SHORT_WAITS_PER_REQUEST = 2


class RequestPacer:
    """At most `per_second` requests per second, evenly spaced: a request waits until
    1/per_second after the previous one. One pacer per account in a process."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be positive, got {per_second}")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next_at: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._next_at is not None and now < self._next_at:
            self._sleep(self._next_at - now)
            now = self._next_at
        self._next_at = now + self.interval


def flood_wait_seconds(error: BaseException) -> int | None:
    """The wait a FloodWait-like error asks for, or None for any other error."""
    from telethon.errors import FloodPremiumWaitError, FloodWaitError

    if isinstance(error, FloodWaitError | FloodPremiumWaitError):
        return max(int(error.seconds), 0)
    return None
