"""A synthetic Telegram channel for the demo: realistic, seeded, and deterministic.

Each post is published at a random daytime moment. Its views grow fast and then level
off (a saturating curve with a slow long tail); forwards and reactions arrive as events
spread over the same curve, so they rise in steps; now and then a reaction is removed.
An old-style collector polls every post at a fixed interval and logs every poll: that
poll log is the recording the demo replays.
"""

import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from smart_retention.sources.recording import Recording, build_recording

DEMO_START = datetime(2026, 1, 5, tzinfo=UTC)
DEMO_CHANNEL_ID = 1_000_001


@dataclass(frozen=True, slots=True)
class ChannelModel:
    seed: int = 7
    channel_id: int = DEMO_CHANNEL_ID
    posts: int = 40
    days: int = 14
    poll_interval: timedelta = timedelta(minutes=10)
    start: datetime = DEMO_START


@dataclass(frozen=True, slots=True)
class _Post:
    msg_id: int
    posted_at: datetime
    final_views: int
    growth_hours: float
    forward_times: tuple[float, ...]
    reaction_times: tuple[float, ...]
    removal_times: tuple[float, ...]
    reply_times: tuple[float, ...]

    def counters_at(self, hours: float) -> tuple[int, int, int, int]:
        reach = 1 - math.exp(-hours / self.growth_hours)
        # A long tail: old posts keep picking up a few views from search and links.
        tail = 0.08 * math.log1p(hours / 168)
        views = int(self.final_views * (reach + tail))
        reactions = _count_until(self.reaction_times, hours) - _count_until(
            self.removal_times, hours
        )
        return (
            views,
            _count_until(self.forward_times, hours),
            max(reactions, 0),
            _count_until(self.reply_times, hours),
        )


def _count_until(times: tuple[float, ...], hours: float) -> int:
    return bisect_right(times, hours)


def _event_times(rng: random.Random, count: int, growth_hours: float) -> tuple[float, ...]:
    """Event times following the view curve: most early, a few late."""
    return tuple(sorted(rng.expovariate(1 / growth_hours) for _ in range(count)))


def _make_post(rng: random.Random, msg_id: int, model: ChannelModel) -> _Post:
    day = rng.randrange(max(model.days - 2, 1))
    hour = rng.uniform(8, 22)
    posted_at = model.start + timedelta(days=day, hours=hour)
    final_views = int(rng.lognormvariate(math.log(2500), 0.6))
    growth_hours = rng.uniform(4, 20)
    reactions = _event_times(rng, int(final_views * rng.uniform(0.01, 0.04)), growth_hours)
    removals = tuple(t + rng.expovariate(1 / 24) for t in reactions if rng.random() < 0.04)
    return _Post(
        msg_id=msg_id,
        posted_at=posted_at,
        final_views=final_views,
        growth_hours=growth_hours,
        forward_times=_event_times(rng, int(final_views * rng.uniform(0.002, 0.01)), growth_hours),
        reaction_times=reactions,
        removal_times=tuple(sorted(removals)),
        reply_times=_event_times(rng, rng.randrange(0, 12), growth_hours),
    )


def _poll_log(model: ChannelModel) -> Iterator[tuple[int | None, dict[str, object]]]:
    rng = random.Random(model.seed)
    posts = sorted(
        (_make_post(rng, 0, model) for _ in range(model.posts)), key=lambda p: p.posted_at
    )
    end = model.start + timedelta(days=model.days)
    for msg_id, post in enumerate(posts, start=1):
        # The poller first sees a post within one interval of its publication.
        seen = post.posted_at + model.poll_interval * rng.random()
        while seen <= end:
            hours = (seen - post.posted_at).total_seconds() / 3600
            views, forwards, reactions, replies = post.counters_at(hours)
            yield (
                None,
                {
                    "channel_id": model.channel_id,
                    "msg_id": msg_id,
                    "posted_at": post.posted_at,
                    "observed_at": seen,
                    "views": views,
                    "forwards": forwards,
                    "reactions": reactions,
                    "replies": replies,
                },
            )
            seen += model.poll_interval


def synthetic_recording(model: ChannelModel = ChannelModel()) -> Recording:
    """The poll log of the synthetic channel, as a validated recording."""
    return build_recording(_poll_log(model))
