"""Where observations come from. A source knows nothing of storage.

Every source offers the same two calls, so the collector, the schedule and the API work
the same on a recorded file and on a live Telegram channel:

- `discover(now)`: posts that exist at `now` and may not be registered yet;
- `fetch(keys, now)`: the current counters of those posts, validated, plus what was
  rejected (a bad item never fails the batch).

A live source may also report posts it asked for and found gone (`missing`) and
channels a rate limit keeps it away from (`deferred`); the collector records both in
the batch's transaction (`storage/outcomes.py`). Recorded and synthetic sources leave
them empty.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from smart_retention.observation import Observation, PostInfo, PostKey, Rejection

# After this many misses in a row a post is taken as deleted and no longer polled.
DEFAULT_MAX_MISSES = 3


@dataclass(slots=True)
class FetchResult:
    observations: list[Observation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    # Posts asked for that came back empty (deleted or inaccessible): no snapshot.
    missing: list[PostKey] = field(default_factory=list)
    # Channel id -> the moment before which the source must not be asked about it
    # again; the batch's posts of that channel with no other outcome were not fetched.
    deferred: dict[int, datetime] = field(default_factory=dict)
    # The source's judgement of how many misses in a row mean "deleted".
    max_misses: int = DEFAULT_MAX_MISSES


class Source(Protocol):
    def discover(self, now: datetime) -> Iterable[PostInfo]: ...

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult: ...


__all__ = ["DEFAULT_MAX_MISSES", "FetchResult", "PostInfo", "Source"]
