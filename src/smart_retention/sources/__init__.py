"""Where observations come from. A source knows nothing of storage.

Every source offers the same two calls, so the collector, the schedule and the API work
the same on a recorded file and on a live Telegram channel:

- `discover(now)`: posts that exist at `now` and may not be registered yet;
- `fetch(keys, now)`: the current counters of those posts, validated, plus what was
  rejected (a bad item never fails the batch).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from smart_retention.observation import Observation, PostInfo, PostKey, Rejection


@dataclass(slots=True)
class FetchResult:
    observations: list[Observation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


class Source(Protocol):
    def discover(self, now: datetime) -> Iterable[PostInfo]: ...

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult: ...


__all__ = ["FetchResult", "PostInfo", "Source"]
