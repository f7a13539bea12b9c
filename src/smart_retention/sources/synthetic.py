"""A synthetic live source: N channels of M posts each, published over D days, at any scale.

Nothing is stored per post. Every figure is a closed-form function of (seed, channel,
message, age), computed when it is asked for, so a million posts cost no more memory than
ten: `discover` walks the posts in publication order from a cursor, and `fetch` computes
the counters of the keys it is given.

The model, per post (parameters drawn from a hash of seed, channel and message):

- Publication: the posts of all channels interleave on an even grid over D days
  (post k of the run sits in slot k), each jittered inside its slot, so publication
  order is the order of k and no list of times is needed.
- Views rise fast and level off: `scale * (1 - exp(-age / time_constant))`, with a
  log-uniform scale and a time constant of a few hours.
- Forwards, reactions and replies are the integer parts of a per-post rate times the
  views, so they rise in steps. About a quarter of the posts lose one or two reactions
  (removals) within their first few days.
- Resurfacing (`changed_fraction`, off by default): a post is now and then forwarded
  somewhere and jumps by `max(5% of scale, 100)` views and one forward, more than any
  bracket's threshold. Jumps come every `changed_window / changed_fraction` at a
  per-post phase, so in any window of `changed_window` about that fraction of the posts
  jumps. Old posts whose curve has levelled off then change past the threshold in
  about `changed_fraction` of their checks, which is what the collection bench needs.
"""

import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

from smart_retention.observation import Counters, Observation, PostInfo, PostKey
from smart_retention.sources import FetchResult

SYNTHETIC_START = datetime(2026, 1, 5, tzinfo=UTC)
FIRST_CHANNEL_ID = 2_000_001
DEFAULT_CHANGED_WINDOW = timedelta(hours=6)
# How large a model may be: ten times the largest cycle the benchmarks run. A mistyped
# size must fail at once, not register posts for hours (or without end).
MAX_CHANNELS = 100_000
MAX_POSTS_PER_CHANNEL = 1_000_000
MAX_TOTAL_POSTS = 10_000_000
MAX_DAYS = 3_650

MICROSECONDS_PER_SECOND = 1_000_000
MICROSECONDS_PER_HOUR = 3_600 * MICROSECONDS_PER_SECOND
_MASK64 = (1 << 64) - 1
_BYTE = 0xFF
_BYTE_SCALE = 1.0 / 256

# Views level off at a log-uniform scale between these, within a few time constants.
VIEWS_SCALE_MIN = 300
VIEWS_SCALE_MAX = 20_000
TIME_CONSTANT_MIN_H = 2.0
TIME_CONSTANT_MAX_H = 10.0
# Per-post rates of the other counters, per view.
FORWARD_RATE_MAX = 0.01
REACTION_RATE_MIN, REACTION_RATE_MAX = 0.01, 0.04
REPLY_RATE_MAX = 0.004
# One post in REMOVAL_ODDS loses a reaction, and one in twice that a second one.
REMOVAL_ODDS = 4
# A resurfacing jump: this share of the post's scale, and at least JUMP_VIEWS_MIN views.
JUMP_SHARE = 0.05
JUMP_VIEWS_MIN = 100
_SCALE_RATIO = VIEWS_SCALE_MAX / VIEWS_SCALE_MIN
_TAU_SPAN = TIME_CONSTANT_MAX_H - TIME_CONSTANT_MIN_H
_REACTION_SPAN = REACTION_RATE_MAX - REACTION_RATE_MIN


def _mix(value: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def check_size(channels: int, posts_per_channel: int, days: float) -> None:
    """Refuse a model too small to exist or too large to run (the MAX_ bounds above)."""
    if channels < 1 or posts_per_channel < 1:
        raise ValueError(
            f"channels and posts_per_channel must be at least 1, "
            f"got {channels} and {posts_per_channel}"
        )
    if channels > MAX_CHANNELS:
        raise ValueError(f"channels must be at most {MAX_CHANNELS:,}, got {channels:,}")
    if posts_per_channel > MAX_POSTS_PER_CHANNEL:
        raise ValueError(
            f"posts per channel must be at most {MAX_POSTS_PER_CHANNEL:,}, "
            f"got {posts_per_channel:,}"
        )
    if channels * posts_per_channel > MAX_TOTAL_POSTS:
        raise ValueError(
            f"{channels:,} channels x {posts_per_channel:,} posts is "
            f"{channels * posts_per_channel:,} posts; at most {MAX_TOTAL_POSTS:,} in all"
        )
    if not 0 < days <= MAX_DAYS:  # also refuses NaN
        raise ValueError(f"days must be more than 0 and at most {MAX_DAYS:,}, got {days}")


class SyntheticSource:
    """`channels` x `posts_per_channel` posts published over `days`; see the module doc.

    Channel ids run from `first_channel_id`, message ids from 1 in each channel.
    """

    def __init__(
        self,
        channels: int,
        posts_per_channel: int,
        days: float,
        *,
        seed: int = 7,
        start: datetime = SYNTHETIC_START,
        first_channel_id: int = FIRST_CHANNEL_ID,
        changed_fraction: float = 0.0,
        changed_window: timedelta = DEFAULT_CHANGED_WINDOW,
    ) -> None:
        check_size(channels, posts_per_channel, days)
        if start.tzinfo is None:
            raise ValueError(f"start {start.isoformat()} has no timezone")
        if not 0.0 <= changed_fraction <= 1.0:
            raise ValueError(f"changed_fraction must be within [0, 1], got {changed_fraction}")
        if changed_window <= timedelta(0):
            raise ValueError(f"changed_window must be positive, got {changed_window}")
        self.channels = channels
        self.posts_per_channel = posts_per_channel
        self.total_posts = channels * posts_per_channel
        self.seed = seed
        self.start = start.astimezone(UTC)
        try:
            self.end = self.start + timedelta(days=days)
        except OverflowError:
            raise ValueError(
                f"start {self.start.isoformat()} plus {days:g} days is past the year 9999"
            ) from None
        self.first_channel_id = first_channel_id
        self.changed_fraction = changed_fraction
        self._seed_hash = _mix(seed)
        self._slot_us = max(1, round(days * 86_400 * MICROSECONDS_PER_SECOND / self.total_posts))
        self._jump_period_h = (
            changed_window / timedelta(hours=1) / changed_fraction if changed_fraction else None
        )
        self._next_index = 0

    @property
    def channel_ids(self) -> range:
        return range(self.first_channel_id, self.first_channel_id + self.channels)

    @property
    def announced(self) -> int:
        """How many posts `discover` has yielded (or `skip_announced` passed) so far."""
        return self._next_index

    # --- publication -------------------------------------------------------------

    def discover(self, now: datetime) -> Iterator[PostInfo]:
        """Posts published at or before `now` and not announced yet, in publication order.

        A generator: a post counts as announced once it has been yielded, so a caller
        that stops early gets the rest on its next call.
        """
        while self._next_index < self.total_posts:
            key = self._key_of(self._next_index)
            posted_at = self._posted_at(key, self._next_index)
            if posted_at > now:
                return
            self._next_index += 1
            yield PostInfo(key, posted_at)

    def skip_announced(self, now: datetime) -> None:
        """Treat every post published at or before `now` as announced, in O(1).

        For a process that takes over a database another process has filled: its first
        `discover` then yields only the posts published after `now`.
        """
        index = min(max(self._offset_us(now) // self._slot_us - 1, 0), self.total_posts)
        while index < self.total_posts and self._posted_at(self._key_of(index), index) <= now:
            index += 1
        self._next_index = max(self._next_index, index)

    def next_discovery_at(self) -> datetime | None:
        """When the next post not yet announced is published."""
        if self._next_index >= self.total_posts:
            return None
        return self._posted_at(self._key_of(self._next_index), self._next_index)

    def posted_at(self, key: PostKey) -> datetime | None:
        """When `key` is published; None if this source has no such post."""
        index = self._index_of(key)
        return None if index is None else self._posted_at(key, index)

    def _key_of(self, index: int) -> PostKey:
        msg_index, channel_index = divmod(index, self.channels)
        return PostKey(self.first_channel_id + channel_index, msg_index + 1)

    def _index_of(self, key: PostKey) -> int | None:
        channel_index = key.channel_id - self.first_channel_id
        if not (0 <= channel_index < self.channels and 1 <= key.msg_id <= self.posts_per_channel):
            return None
        return (key.msg_id - 1) * self.channels + channel_index

    def _post_hash(self, key: PostKey) -> int:
        # Ids below 2^32 each (Telegram's are) make distinct posts distinct inputs.
        return _mix(self._seed_hash ^ ((key.channel_id << 32) | key.msg_id) & _MASK64)

    def _published_us(self, post_hash: int, index: int) -> int:
        """Microseconds from `start`; the jitter stays inside the post's slot, so
        publication order is index order."""
        return index * self._slot_us + (((post_hash & _BYTE) * self._slot_us) >> 8)

    def _posted_at(self, key: PostKey, index: int) -> datetime:
        offset_us = self._published_us(self._post_hash(key), index)
        return self.start + timedelta(microseconds=offset_us)

    def _offset_us(self, moment: datetime) -> int:
        return (moment - self.start) // timedelta(microseconds=1)

    # --- counters ----------------------------------------------------------------

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        """The counters of `keys` at `now`; unknown and not yet published posts are left out."""
        result = FetchResult()
        now_us = self._offset_us(now)
        for key in keys:
            index = self._index_of(key)
            if index is None:
                continue
            post_hash = self._post_hash(key)
            published_us = self._published_us(post_hash, index)
            if published_us > now_us:
                continue
            posted_at = self.start + timedelta(microseconds=published_us)
            counters = self._counters(post_hash, (now_us - published_us) / MICROSECONDS_PER_HOUR)
            result.observations.append(Observation(key, posted_at, now, counters))
        return result

    def counters_at(self, key: PostKey, now: datetime) -> Counters | None:
        """What a fetch at `now` would see of `key`; None for an unknown or unpublished post."""
        observations = self.fetch([key], now).observations
        return observations[0].counters if observations else None

    def _counters(self, post_hash: int, hours: float) -> Counters:
        # One byte of the post's hash per parameter; byte 0 is the publication jitter.
        scale = VIEWS_SCALE_MIN * _SCALE_RATIO ** (((post_hash >> 8) & _BYTE) * _BYTE_SCALE)
        tau = TIME_CONSTANT_MIN_H + _TAU_SPAN * (((post_hash >> 16) & _BYTE) * _BYTE_SCALE)
        views = int(scale * (1.0 - math.exp(-hours / tau)))
        forwards = 0
        jump_period = self._jump_period_h
        if jump_period is not None:
            # Jumps at phase, phase + period, ...: how many happened by `hours`.
            phase = jump_period * (((post_hash >> 24) & _BYTE) * _BYTE_SCALE)
            if hours >= phase:
                jumps = int((hours - phase) / jump_period) + 1
                views += jumps * max(int(JUMP_SHARE * scale), JUMP_VIEWS_MIN)
                forwards = jumps
        forwards += int(views * FORWARD_RATE_MAX * (((post_hash >> 32) & _BYTE) * _BYTE_SCALE))
        reaction_rate = REACTION_RATE_MIN + _REACTION_SPAN * (
            ((post_hash >> 40) & _BYTE) * _BYTE_SCALE
        )
        reactions = int(views * reaction_rate) - _removals((post_hash >> 48) & _BYTE, tau, hours)
        replies = int(views * REPLY_RATE_MAX * ((post_hash >> 56) * _BYTE_SCALE))
        return Counters(views, forwards, max(reactions, 0), replies)


def _removals(removal_byte: int, tau: float, hours: float) -> int:
    """Reactions taken back by `hours`: one post in REMOVAL_ODDS loses one at some moment
    between tau and 4 tau, one in twice as many a second one at twice that age."""
    odds = removal_byte % (2 * REMOVAL_ODDS)
    if odds > 1:
        return 0
    first_at = tau * (1.0 + 3.0 * (removal_byte >> 3) / 32)
    removed = int(hours >= first_at)
    if odds == 0 and hours >= 2 * first_at:
        removed += 1
    return removed
