"""The polling schedule: how often a post is checked, by its age.

Pure: every function takes `now`; nothing reads a clock. Tiers are data. A post is due
when its age falls in a tier and it was never checked, or was last checked at least one
tier interval ago. Posts older than the last tier are no longer polled.

`due_windows` states the same rule as time windows, so storage can select due posts in
SQL without knowing what a tier is; a property test holds the two forms together.
"""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class Tier:
    """Posts with `min_age <= age < max_age` are checked every `interval`."""

    name: str
    min_age: timedelta
    max_age: timedelta
    interval: timedelta

    def contains(self, age: timedelta) -> bool:
        return self.min_age <= age < self.max_age


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("fresh", timedelta(0), timedelta(hours=1), timedelta(minutes=10)),
    Tier("recent", timedelta(hours=1), timedelta(hours=24), timedelta(minutes=30)),
    Tier("daily", timedelta(hours=24), timedelta(days=7), timedelta(hours=6)),
    Tier("weekly", timedelta(days=7), timedelta(days=30), timedelta(hours=24)),
)


class CheckedPost(Protocol):
    """What the schedule needs to know of a post: when it was posted and last checked."""

    @property
    def posted_at(self) -> datetime: ...

    @property
    def last_checked_at(self) -> datetime | None: ...


P = TypeVar("P", bound=CheckedPost)


@dataclass(frozen=True, slots=True)
class DueWindow:
    """Due: posted in (posted_after, posted_at_or_before] and never checked or checked
    at or before `checked_at_or_before`."""

    tier: Tier
    posted_after: datetime
    posted_at_or_before: datetime
    checked_at_or_before: datetime


def tier_for_age(age: timedelta, tiers: Sequence[Tier] = DEFAULT_TIERS) -> Tier | None:
    for tier in tiers:
        if tier.contains(age):
            return tier
    return None


def is_due(
    now: datetime,
    posted_at: datetime,
    last_checked_at: datetime | None,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
) -> bool:
    tier = tier_for_age(now - posted_at, tiers)
    if tier is None:
        return False
    return last_checked_at is None or now - last_checked_at >= tier.interval


def next_due_at(
    now: datetime,
    posted_at: datetime,
    last_checked_at: datetime | None,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
) -> datetime | None:
    """The first moment at or after `now` when the post is due; None if it never is again.

    A post may cross into another tier before its current interval is up, so each tier
    from now on is tried in age order: the earliest due moment inside its age range wins.
    """
    for tier in sorted(tiers, key=lambda t: t.min_age):
        enters, leaves = posted_at + tier.min_age, posted_at + tier.max_age
        candidate = max(now, enters)
        if last_checked_at is not None:
            candidate = max(candidate, last_checked_at + tier.interval)
        if candidate < leaves:
            return candidate
    return None


def due_posts(
    now: datetime, posts: Iterable[P], tiers: Sequence[Tier] = DEFAULT_TIERS
) -> Iterator[P]:
    """The posts among `posts` that are due at `now`."""
    for post in posts:
        if is_due(now, post.posted_at, post.last_checked_at, tiers):
            yield post


def due_windows(
    now: datetime, tiers: Sequence[Tier] = DEFAULT_TIERS, only: Iterable[str] | None = None
) -> list[DueWindow]:
    """The due rule as one window per tier (optionally only the named tiers)."""
    wanted = set(only) if only is not None else None
    return [
        DueWindow(
            tier=tier,
            posted_after=now - tier.max_age,
            posted_at_or_before=now - tier.min_age,
            checked_at_or_before=now - tier.interval,
        )
        for tier in tiers
        if wanted is None or tier.name in wanted
    ]


@dataclass(frozen=True, slots=True)
class TierOutlook:
    """What storage reports of one tier at `now`, for `earliest_due`: whether a post in
    the tier was never checked, the oldest last check among its posts, and the earliest
    publication among posts still too young for it."""

    tier: Tier
    has_unchecked: bool
    oldest_check: datetime | None
    earliest_young_posted_at: datetime | None


def earliest_due(now: datetime, outlooks: Iterable[TierOutlook]) -> datetime | None:
    """A lower bound on the next moment any post is due; None if none ever will be.

    Within its tier a post is due no earlier than its last check plus the tier's
    interval; a post that will enter a tier may be due the moment it enters. Waking at
    the bound never misses a check, and a scheduler that sleeps until it idles less.
    """
    candidates = []
    for outlook in outlooks:
        if outlook.has_unchecked:
            candidates.append(now)
        if outlook.oldest_check is not None:
            candidates.append(max(now, outlook.oldest_check + outlook.tier.interval))
        if outlook.earliest_young_posted_at is not None:
            candidates.append(max(now, outlook.earliest_young_posted_at + outlook.tier.min_age))
    return min(candidates, default=None)


def due_in_windows(
    posted_at: datetime, last_checked_at: datetime | None, windows: Iterable[DueWindow]
) -> bool:
    """The due rule of `due_windows`, for one post: the form storage uses, in Python."""
    # A plain loop: this runs for every claimed post, and a generator costs more here.
    for window in windows:
        if window.posted_after < posted_at <= window.posted_at_or_before and (
            last_checked_at is None or last_checked_at <= window.checked_at_or_before
        ):
            return True
    return False


def polling_horizon(tiers: Sequence[Tier] = DEFAULT_TIERS) -> timedelta:
    """Posts at least this old are no longer polled."""
    return max(tier.max_age for tier in tiers)


def extend_last_tier(tiers: Sequence[Tier], max_age: timedelta) -> tuple[Tier, ...]:
    """Tiers whose last one polls until `max_age`, for recordings of older posts."""
    *head, last = tiers
    if max_age <= last.min_age:
        raise ValueError(
            f"max_age {max_age} must be longer than the start of tier {last.name!r} "
            f"({last.min_age})"
        )
    return (*head, replace(last, max_age=max_age))
