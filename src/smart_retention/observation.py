"""The validated observation: one reading of one post's counters at one moment.

Everything that enters the collector, from a recorded file or from Telegram, passes
through `build_observation`, so the rules for bad input live in one place: a counter is
a non-negative integer that fits a signed 64-bit column, or unknown (None), never a
guess; every timestamp carries a timezone and is converted to UTC.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from smart_retention.errors import SmartRetentionError

COUNTER_FIELDS = ("views", "forwards", "reactions", "replies")
# post_metrics stores counters as BIGINT: the largest value both engines keep exactly.
MAX_COUNTER = 2**63 - 1
# Plain decimal notation; exponents ("1e9") are refused rather than expanded.
_PLAIN_NUMBER = re.compile(r"(?P<whole>[+-]?[0-9]+)(?:\.(?P<fraction>[0-9]*))?")
EARLIEST_TIMESTAMP = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(9000, 1, 1, tzinfo=UTC)
# Recordings repeat the same timestamps (one per poll, one per post) many times over.
TIMESTAMP_CACHE_SIZE = 65_536


class PostKey(NamedTuple):
    channel_id: int
    msg_id: int

    def __str__(self) -> str:
        return f"{self.channel_id}/{self.msg_id}"


class Counters(NamedTuple):
    """The four counters; None means unknown, which is not the same as zero."""

    views: int | None = None
    forwards: int | None = None
    reactions: int | None = None
    replies: int | None = None


@dataclass(frozen=True, slots=True)
class PostInfo:
    """A post as a source announces it: enough to schedule its checks."""

    key: PostKey
    posted_at: datetime


@dataclass(frozen=True, slots=True)
class Observation:
    key: PostKey
    posted_at: datetime
    observed_at: datetime
    counters: Counters


class ObservationError(SmartRetentionError):
    """One field of one observation is invalid. `post` is filled in once it is known."""

    def __init__(self, field: str, value: object, reason: str, post: PostKey | None = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.post = post
        super().__init__(self.describe())

    def describe(self) -> str:
        post = f"post {self.post}: " if self.post is not None else ""
        return f"{post}field {self.field}: {self.value!r} {self.reason}"

    def __str__(self) -> str:
        # The post is often filled in after construction, so render on demand.
        return self.describe()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A rejected input item, kept for the report: where it was and what was wrong."""

    line: int | None
    post: PostKey | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.message}"

    @classmethod
    def from_error(cls, error: ObservationError, line: int | None = None) -> "Rejection":
        return cls(line=line, post=error.post, field=error.field, message=error.describe())


def parse_counter(field: str, raw: object) -> int | None:
    """A counter value from text or a number; empty or None is unknown."""
    if type(raw) is str and raw.isdigit() and raw.isascii():
        # The common case, first: plain ASCII digits, as nearly every recorded cell is.
        value = int(raw)
        if value > MAX_COUNTER:
            raise ObservationError(field, raw, "is larger than 2^63-1, the largest storable count")
        return value
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise ObservationError(field, raw, "is a boolean, not a count")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise ObservationError(field, raw, "is not a number")
        if not raw.is_integer():
            raise ObservationError(field, raw, "is fractional; a count is a whole number")
        value = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        value = int(text) if text.isascii() and text.isdigit() else _parse_integer_text(field, text)
    else:
        raise ObservationError(field, raw, f"has unsupported type {type(raw).__name__}")
    if value < 0:
        raise ObservationError(field, raw, "is negative")
    if value > MAX_COUNTER:
        raise ObservationError(field, raw, "is larger than 2^63-1, the largest storable count")
    return value


def _parse_integer_text(field: str, text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts superscripts and other scripts' digits.
    match = _PLAIN_NUMBER.fullmatch(text)
    if match is None:
        raise ObservationError(field, text, "is not a number")
    whole, fraction = match.group("whole"), match.group("fraction")
    # Exports written through floating point say "12.0"; that is the whole number 12.
    if fraction and fraction.strip("0"):
        raise ObservationError(field, text, "is fractional; a count is a whole number")
    return int(whole)


def parse_timestamp(field: str, raw: object) -> datetime:
    """A timezone-aware timestamp in UTC; a naive one is an error, never assumed UTC."""
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str) and raw.strip():
        moment = _parse_iso_text(raw.strip())
        if moment is None:
            raise ObservationError(field, raw, "is not an ISO-8601 timestamp")
    elif raw is None or raw == "":
        raise ObservationError(field, raw, "is missing")
    else:
        raise ObservationError(field, raw, "is not a timestamp")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ObservationError(field, raw, "has no timezone; give UTC explicitly, e.g. +00:00")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:
        moment = EARLIEST_TIMESTAMP - timedelta(days=1)
    if not EARLIEST_TIMESTAMP <= moment < LATEST_TIMESTAMP:
        # Schedules add days and intervals to these; near year 1 or 9999 that overflows.
        raise ObservationError(
            field,
            raw,
            f"is outside the supported range {EARLIEST_TIMESTAMP.year}-{LATEST_TIMESTAMP.year}",
        )
    return moment


@lru_cache(maxsize=TIMESTAMP_CACHE_SIZE)
def _parse_iso_text(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_id(field: str, raw: object) -> int:
    """A channel or message id: a positive integer."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ObservationError(field, raw, "is missing")
    value = parse_counter(field, raw)
    if value is None or value == 0:
        raise ObservationError(field, raw, "must be a positive integer")
    return value


def build_observation(
    fields: Mapping[str, object], *, not_after: datetime | None = None
) -> Observation:
    """Validate one observation given by canonical field name.

    `not_after` is the latest acceptable `observed_at` (the collector's clock), so a
    reading from the future is rejected; None skips that check, as replay does.
    """
    channel_id = _parse_channel_id(fields.get("channel_id"))
    msg_id = parse_id("msg_id", fields.get("msg_id"))
    key = PostKey(channel_id, msg_id)
    try:
        posted_at = parse_timestamp("posted_at", fields.get("posted_at"))
        observed_at = parse_timestamp("observed_at", fields.get("observed_at"))
        counters = Counters(*(parse_counter(name, fields.get(name)) for name in COUNTER_FIELDS))
    except ObservationError as error:
        error.post = key
        raise
    if observed_at < posted_at:
        raise ObservationError(
            "observed_at",
            observed_at.isoformat(),
            f"is before posted_at {posted_at.isoformat()}",
            key,
        )
    if not_after is not None and observed_at > not_after:
        raise ObservationError(
            "observed_at",
            observed_at.isoformat(),
            f"is in the future (now is {not_after.isoformat()})",
            key,
        )
    return Observation(key=key, posted_at=posted_at, observed_at=observed_at, counters=counters)


def _parse_channel_id(raw: object) -> int:
    if isinstance(raw, str) and raw.strip().startswith("-100"):
        raise ObservationError(
            "channel_id", raw, "is a -100 prefixed peer id; give the bare channel id"
        )
    return parse_id("channel_id", raw)


def utc_now() -> datetime:
    """The wall clock, for the live collector only: pure modules take `now` as an argument."""
    return datetime.now(UTC)
