"""An independent reference for the replay report on the real Telegram recordings.

Written from the specification (DESIGN.md and the replay brief), NOT from the package:
it imports nothing from `smart_retention`, only the standard library. It exists so that
tests can check the figures `smart-retention replay` prints against numbers computed
another way. It is deliberately simple (no batching, no database, no skipping of idle
ticks) and keeps all times as whole microseconds since the Unix epoch, so no floating
point enters any comparison.

Specification implemented here:

* Policy (default profile), by post age at the check (check time - posted_at):
  under 1h: 0.5% or 5 views; 1h-24h: 1% or 10; 24h-7d: 2% or 20; 7d+: 5% or 50.
  The observation is compared with the last STORED snapshot of the post. Store when
  it is the post's first check; else when forwards/reactions/replies is known and
  differs from the stored value; else when views is known and (the stored views is
  unknown, or the change is non-zero and reaches either threshold); else when views is
  known, differs from the stored views, and a checkpoint is due (50 checks since the
  last save, not counting this one, or 24 h since the last save). Otherwise not stored.
* Retention error of a check with known views: 0 if stored, else |observed - stored|.
* As recorded: every valid CSV row is one check at its own time.
* Scheduled: a virtual clock ticks every 10 minutes on the epoch-aligned grid, from the
  first tick at or after the earliest recorded moment to the last tick at or before the
  latest. A post exists from its first recorded moment. At a tick, a post is due when
  its age lies in a tier and it was never checked or was last checked at least the
  tier's interval ago; it then observes its latest recorded values at or before the
  tick, and the tick is the check time.

Run it as a script to print the report of one recording:

    python tests/reference_replay.py FILE.csv.gz [--as-recorded | --max-age-days N]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

SECOND = 1_000_000  # microseconds
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# (name, upper age bound or None, relative threshold, absolute threshold)
BRACKETS: tuple[tuple[str, int | None, float, int], ...] = (
    ("under 1h", 1 * HOUR, 0.005, 5),
    ("1h-24h", 24 * HOUR, 0.01, 10),
    ("24h-7d", 7 * DAY, 0.02, 20),
    ("7d+", None, 0.05, 50),
)
CHECKPOINT_CHECKS = 50
CHECKPOINT_INTERVAL = 24 * HOUR

# (min age, max age, interval): fresh, recent, daily, weekly
TIERS: tuple[tuple[int, int, int], ...] = (
    (0, 1 * HOUR, 10 * MINUTE),
    (1 * HOUR, 24 * HOUR, 30 * MINUTE),
    (24 * HOUR, 7 * DAY, 6 * HOUR),
    (7 * DAY, 30 * DAY, 24 * HOUR),
)
TICK = 10 * MINUTE

# The Telegram recordings' own column names.
TELEGRAM_COLUMNS = {
    "msg_id": "post_id",
    "posted_at": "post_date_utc",
    "observed_at": "snapshot_utc",
    "views": "views",
    "forwards": "forwards",
    "reactions": "reactions_total",
}
COUNTERS = ("views", "forwards", "reactions", "replies")


@lru_cache(maxsize=1 << 16)  # a recording repeats the same few thousand moments
def to_micros(text: str) -> int:
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        raise ValueError(f"naive timestamp {text!r}")
    return (moment - EPOCH) // timedelta(microseconds=1)


def to_counter(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"negative counter {text!r}")
    return value


@dataclass
class RecordedPost:
    posted_at: int
    times: list[int] = field(default_factory=list)  # observed_at, ascending
    values: list[tuple[int | None, ...]] = field(default_factory=list)


@dataclass
class RecordingData:
    posts: dict[int, RecordedPost]
    observations: int
    rejected: int
    first: int
    last: int


def load(path: str, columns: dict[str, str] | None = None) -> RecordingData:
    """Read the gzipped CSV; reject a row repeating a (post, moment) seen before, or
    giving a post another posted_at than its first row did (first row in file wins)."""
    columns = columns or TELEGRAM_COLUMNS
    rows: dict[int, dict[int, tuple[int | None, ...]]] = {}
    posted: dict[int, int] = {}
    rejected = 0
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        at = {name: header.index(theirs) for name, theirs in columns.items()}
        for row in reader:
            try:
                msg_id = int(row[at["msg_id"]])
                posted_at = to_micros(row[at["posted_at"]])
                observed_at = to_micros(row[at["observed_at"]])
                counters = tuple(
                    to_counter(row[at[name]]) if name in at else None for name in COUNTERS
                )
            except (ValueError, IndexError):
                rejected += 1
                continue
            if observed_at < posted_at or posted.setdefault(msg_id, posted_at) != posted_at:
                rejected += 1
                continue
            by_time = rows.setdefault(msg_id, {})
            if observed_at in by_time:
                rejected += 1
                continue
            by_time[observed_at] = counters
    posts = {}
    count = 0
    for msg_id, by_time in rows.items():
        post = RecordedPost(posted[msg_id])
        for moment in sorted(by_time):
            post.times.append(moment)
            post.values.append(by_time[moment])
            count += 1
        posts[msg_id] = post
    first = min(p.times[0] for p in posts.values())
    last = max(p.times[-1] for p in posts.values())
    return RecordingData(posts, count, rejected, first, last)


@dataclass
class Tally:
    checks: int = 0
    stored: int = 0
    error_checks: int = 0
    error_sum: int = 0
    error_max: int = 0

    def add(self, stored: bool, error: int | None) -> None:
        self.checks += 1
        self.stored += int(stored)
        if error is not None:
            self.error_checks += 1
            self.error_sum += error
            self.error_max = max(self.error_max, error)

    def figures(self) -> dict[str, object]:
        return {
            "checks": self.checks,
            "snapshots_stored": self.stored,
            "naive_rows": self.checks,
            "reduction_pct": round(100.0 * (1 - self.stored / self.checks), 2)
            if self.checks
            else 0.0,
            "views_error_max": self.error_max,
            "views_error_mean": round(self.error_sum / self.error_checks, 3)
            if self.error_checks
            else 0.0,
        }


def bracket_of(age: int) -> tuple[str, int | None, float, int]:
    for bracket in BRACKETS:
        if bracket[1] is None or age < bracket[1]:
            return bracket
    raise AssertionError("unreachable")


@dataclass
class PostPolicy:
    """The retention state of one post: its last stored snapshot and the checks since."""

    posted_at: int
    stored: tuple[int | None, ...] | None = None
    saved_at: int | None = None
    checks_since_save: int = 0
    checks: int = 0
    last_checked_at: int | None = None
    # Every stored snapshot (time, counters), for tests that compare with the database.
    history: list[tuple[int, tuple[int | None, ...]]] = field(default_factory=list)

    def should_store(self, now: int, seen: tuple[int | None, ...]) -> bool:
        if self.stored is None:
            return True
        _, _, relative, absolute = bracket_of(now - self.posted_at)
        for i in (1, 2, 3):  # forwards, reactions, replies
            if seen[i] is not None and seen[i] != self.stored[i]:
                return True
        views, before = seen[0], self.stored[0]
        if views is None:
            return False
        if before is None:
            return True
        change = abs(views - before)
        if change == 0:
            return False
        if change >= absolute or change >= relative * before:
            return True
        assert self.saved_at is not None
        return (
            self.checks_since_save >= CHECKPOINT_CHECKS
            or now - self.saved_at >= CHECKPOINT_INTERVAL
        )

    def check(self, now: int, seen: tuple[int | None, ...], tallies: dict[str, Tally]) -> None:
        store = self.should_store(now, seen)
        if seen[0] is None:
            error = None
        elif store:
            error = 0
        else:
            before = self.stored[0] if self.stored else None
            error = abs(seen[0] - before) if before is not None else None
        tallies[bracket_of(now - self.posted_at)[0]].add(store, error)
        self.checks += 1
        self.last_checked_at = now
        if store:
            self.stored, self.saved_at, self.checks_since_save = seen, now, 0
            self.history.append((now, seen))
        else:
            self.checks_since_save += 1


def tier_interval(age: int, tiers: tuple[tuple[int, int, int], ...]) -> int | None:
    for low, high, interval in tiers:
        if low <= age < high:
            return interval
    return None


def replay(
    data: RecordingData, as_recorded: bool = False, max_age_days: int | None = None
) -> tuple[dict[str, object], dict[int, PostPolicy]]:
    """The report as `smart-retention replay --json` prints it, and each post's state."""
    tallies = {b[0]: Tally() for b in BRACKETS}
    policies = {msg_id: PostPolicy(post.posted_at) for msg_id, post in data.posts.items()}
    if as_recorded:
        for msg_id, post in data.posts.items():
            for moment, values in zip(post.times, post.values, strict=True):
                policies[msg_id].check(moment, values, tallies)
    else:
        tiers = TIERS
        if max_age_days is not None:
            low, _, interval = tiers[-1]
            tiers = (*tiers[:-1], (low, max_age_days * DAY, interval))
        first_tick = -(-data.first // TICK) * TICK  # ceiling on the grid
        last_tick = data.last // TICK * TICK  # floor on the grid
        for msg_id, post in data.posts.items():
            # Posts never influence each other on the schedule: simulate each alone.
            last_checked = None
            start = max(first_tick, -(-post.times[0] // TICK) * TICK)
            for now in range(start, last_tick + 1, TICK):
                interval = tier_interval(now - post.posted_at, tiers)
                if interval is None:
                    continue
                if last_checked is not None and now - last_checked < interval:
                    continue
                index = bisect_right(post.times, now) - 1
                policies[msg_id].check(now, post.values[index], tallies)
                last_checked = now
    overall = Tally()
    for tally in tallies.values():
        overall.checks += tally.checks
        overall.stored += tally.stored
        overall.error_checks += tally.error_checks
        overall.error_sum += tally.error_sum
        overall.error_max = max(overall.error_max, tally.error_max)
    report: dict[str, object] = {
        "posts": len(data.posts),
        "observations": data.observations,
        "rejected": data.rejected,
        **overall.figures(),
        "by_bracket": {name: tally.figures() for name, tally in tallies.items()},
    }
    return report, policies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--as-recorded", action="store_true")
    mode.add_argument("--max-age-days", type=int)
    args = parser.parse_args(argv)
    report, _ = replay(load(args.path), args.as_recorded, args.max_age_days)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
