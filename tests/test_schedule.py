"""The polling schedule: which posts are checked when (DESIGN.md, "The schedule")."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smart_retention.schedule import (
    DEFAULT_TIERS,
    DueWindow,
    Tier,
    due_posts,
    due_windows,
    extend_last_tier,
    is_due,
    next_due_at,
    polling_horizon,
    tier_for_age,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

INTERVALS = {
    "fresh": 10 * MINUTE,
    "recent": 30 * MINUTE,
    "daily": 6 * HOUR,
    "weekly": 24 * HOUR,
}


def test_default_tiers_are_the_table_in_the_design() -> None:
    assert [(t.name, t.min_age, t.max_age, t.interval) for t in DEFAULT_TIERS] == [
        ("fresh", timedelta(0), HOUR, 10 * MINUTE),
        ("recent", HOUR, DAY, 30 * MINUTE),
        ("daily", DAY, 7 * DAY, 6 * HOUR),
        ("weekly", 7 * DAY, 30 * DAY, 24 * HOUR),
    ]


def test_posts_are_polled_until_they_are_30_days_old() -> None:
    assert polling_horizon() == 30 * DAY


# (age, tier name or None): an age exactly at a tier's min_age belongs to that tier.
TIER_CASES = [
    pytest.param(timedelta(0), "fresh", id="0s: fresh"),
    pytest.param(HOUR - SECOND, "fresh", id="59m59s: fresh"),
    pytest.param(HOUR, "recent", id="exactly 1h: recent"),
    pytest.param(DAY - SECOND, "recent", id="23h59m59s: recent"),
    pytest.param(DAY, "daily", id="exactly 24h: daily"),
    pytest.param(7 * DAY - SECOND, "daily", id="7d less 1s: daily"),
    pytest.param(7 * DAY, "weekly", id="exactly 7d: weekly"),
    pytest.param(30 * DAY - SECOND, "weekly", id="30d less 1s: weekly"),
    pytest.param(30 * DAY, None, id="exactly 30d: not polled"),
    pytest.param(400 * DAY, None, id="400d: not polled"),
    pytest.param(-SECOND, None, id="posted in the future: not polled"),
]


@pytest.mark.parametrize(("age", "tier_name"), TIER_CASES)
def test_a_post_belongs_to_the_tier_whose_age_range_holds_its_age(
    age: timedelta, tier_name: str | None
) -> None:
    tier = tier_for_age(age)
    assert (tier.name if tier is not None else None) == tier_name


@pytest.mark.parametrize(("age", "tier_name"), TIER_CASES)
def test_a_never_checked_post_is_due_exactly_when_it_is_in_a_tier(
    age: timedelta, tier_name: str | None
) -> None:
    assert is_due(NOW, NOW - age, None) is (tier_name is not None)


# (age, tier name): one age inside each tier and one at each tier's first instant.
TIER_AGES = [
    pytest.param(30 * MINUTE, "fresh", id="fresh"),
    pytest.param(timedelta(0), "fresh", id="fresh at 0s"),
    pytest.param(12 * HOUR, "recent", id="recent"),
    pytest.param(HOUR, "recent", id="recent at 1h"),
    pytest.param(3 * DAY, "daily", id="daily"),
    pytest.param(DAY, "daily", id="daily at 24h"),
    pytest.param(20 * DAY, "weekly", id="weekly"),
    pytest.param(7 * DAY, "weekly", id="weekly at 7d"),
]


@pytest.mark.parametrize(("age", "tier_name"), TIER_AGES)
def test_a_post_checked_exactly_one_interval_ago_is_due(age: timedelta, tier_name: str) -> None:
    assert is_due(NOW, NOW - age, NOW - INTERVALS[tier_name]) is True


@pytest.mark.parametrize(("age", "tier_name"), TIER_AGES)
def test_a_post_checked_one_second_less_than_an_interval_ago_is_not_due(
    age: timedelta, tier_name: str
) -> None:
    assert is_due(NOW, NOW - age, NOW - INTERVALS[tier_name] + SECOND) is False


@pytest.mark.parametrize(("age", "tier_name"), TIER_AGES)
def test_a_post_checked_the_interval_of_the_next_tier_ago_is_due(
    age: timedelta, tier_name: str
) -> None:
    """The interval is the one of the tier the post is in now, not when it was checked."""
    assert is_due(NOW, NOW - age, NOW - 2 * INTERVALS[tier_name]) is True


def test_a_post_checked_just_now_is_not_due() -> None:
    assert is_due(NOW, NOW - 30 * MINUTE, NOW) is False


def test_a_post_30_days_old_is_not_due_however_long_ago_it_was_checked() -> None:
    assert is_due(NOW, NOW - 30 * DAY, NOW - 365 * DAY) is False
    assert is_due(NOW, NOW - 30 * DAY - SECOND, None) is False


def test_a_post_checked_in_the_future_is_not_due() -> None:
    """A clock step back must not make every post due."""
    assert is_due(NOW, NOW - 30 * MINUTE, NOW + HOUR) is False


def test_custom_tiers_are_used() -> None:
    tiers = (Tier("only", timedelta(0), DAY, 5 * MINUTE),)
    assert is_due(NOW, NOW - 2 * HOUR, NOW - 5 * MINUTE, tiers) is True
    assert is_due(NOW, NOW - 2 * HOUR, NOW - 5 * MINUTE + SECOND, tiers) is False
    assert is_due(NOW, NOW - DAY, None, tiers) is False


# --- next_due_at --------------------------------------------------------------------------


def test_next_due_at_is_now_for_a_due_post() -> None:
    assert next_due_at(NOW, NOW - 30 * MINUTE, None) == NOW
    assert next_due_at(NOW, NOW - 3 * DAY, NOW - 6 * HOUR) == NOW


@pytest.mark.parametrize(("age", "tier_name"), TIER_AGES)
def test_next_due_at_is_one_interval_after_the_last_check_within_the_tier(
    age: timedelta, tier_name: str
) -> None:
    last_checked = NOW - SECOND
    assert next_due_at(NOW, NOW - age, last_checked) == last_checked + INTERVALS[tier_name]


def test_next_due_at_is_the_posting_time_for_a_post_posted_in_the_future() -> None:
    assert next_due_at(NOW, NOW + HOUR, None) == NOW + HOUR


def test_next_due_at_is_none_for_a_post_past_the_last_tier() -> None:
    assert next_due_at(NOW, NOW - 30 * DAY, None) is None
    assert next_due_at(NOW, NOW - 40 * DAY, NOW - 20 * DAY) is None


def test_next_due_at_uses_the_interval_of_the_tier_the_post_has_moved_into() -> None:
    """Posted 55 min ago, checked at age 50 min: at age 60 min it is in "recent" (every
    30 min) and not due; it is next due at age 80 min."""
    posted_at = NOW - 55 * MINUTE
    last_checked = posted_at + 50 * MINUTE
    assert is_due(posted_at + 60 * MINUTE, posted_at, last_checked) is False
    assert is_due(posted_at + 80 * MINUTE, posted_at, last_checked) is True
    assert next_due_at(NOW, posted_at, last_checked) == posted_at + 80 * MINUTE


def test_next_due_at_is_none_when_the_next_check_would_fall_past_the_last_tier() -> None:
    """Posted 29d23h ago and checked an hour ago: it leaves "weekly" before it is due
    again, and is never polled again."""
    posted_at = NOW - 30 * DAY + HOUR
    assert next_due_at(NOW, posted_at, NOW - HOUR) is None


_offsets = st.one_of(
    st.timedeltas(min_value=-2 * DAY, max_value=40 * DAY),
    st.sampled_from(
        [timedelta(0), HOUR, DAY, 7 * DAY, 30 * DAY, 10 * MINUTE, 30 * MINUTE, 6 * HOUR]
    ).flatmap(lambda t: st.sampled_from([t - SECOND, t, t + SECOND])),
)
_nows = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=300, deadline=None)
@given(now=_nows, age=_offsets, since_check=st.one_of(st.none(), _offsets))
def test_next_due_at_is_the_first_moment_the_post_is_due(
    now: datetime, age: timedelta, since_check: timedelta | None
) -> None:
    """Checks happen between posting and now; the answer is a moment the post is due and
    due at no moment before it, or None when it is never due again."""
    posted_at = now - age
    last_checked = None
    if since_check is not None and posted_at <= now:
        last_checked = min(max(now - since_check, posted_at), now)
    due_at = next_due_at(now, posted_at, last_checked)
    if due_at is None:
        later = [now + d for d in (timedelta(0), *INTERVALS.values(), 30 * DAY)]
        assert not any(is_due(t, posted_at, last_checked) for t in later)
        return
    assert due_at >= now
    assert is_due(due_at, posted_at, last_checked)
    if due_at > now:
        assert not is_due(due_at - timedelta(microseconds=1), posted_at, last_checked)


# --- due_posts, due_windows, extend_last_tier ---------------------------------------------


@dataclass(frozen=True)
class Post:
    name: str
    posted_at: datetime
    last_checked_at: datetime | None


def test_due_posts_yields_only_the_due_posts_in_their_order() -> None:
    posts = [
        Post("fresh, never checked", NOW - 5 * MINUTE, None),
        Post("fresh, checked 9 min ago", NOW - 30 * MINUTE, NOW - 9 * MINUTE),
        Post("recent, checked 30 min ago", NOW - 2 * HOUR, NOW - 30 * MINUTE),
        Post("daily, checked 5 h ago", NOW - 2 * DAY, NOW - 5 * HOUR),
        Post("weekly, checked 25 h ago", NOW - 10 * DAY, NOW - 25 * HOUR),
        Post("too old, never checked", NOW - 31 * DAY, None),
        Post("posted in the future", NOW + MINUTE, None),
    ]
    assert [p.name for p in due_posts(NOW, posts)] == [
        "fresh, never checked",
        "recent, checked 30 min ago",
        "weekly, checked 25 h ago",
    ]


def test_due_posts_uses_the_given_tiers() -> None:
    posts = [Post("a", NOW - 40 * DAY, None), Post("b", NOW - 2 * HOUR, NOW - 20 * MINUTE)]
    tiers = extend_last_tier(DEFAULT_TIERS, 365 * DAY)
    assert [p.name for p in due_posts(NOW, posts, tiers)] == ["a"]
    assert list(due_posts(NOW, [])) == []


def test_due_windows_state_each_tier_as_time_windows() -> None:
    assert due_windows(NOW) == [
        DueWindow(DEFAULT_TIERS[0], NOW - HOUR, NOW, NOW - 10 * MINUTE),
        DueWindow(DEFAULT_TIERS[1], NOW - DAY, NOW - HOUR, NOW - 30 * MINUTE),
        DueWindow(DEFAULT_TIERS[2], NOW - 7 * DAY, NOW - DAY, NOW - 6 * HOUR),
        DueWindow(DEFAULT_TIERS[3], NOW - 30 * DAY, NOW - 7 * DAY, NOW - DAY),
    ]


def test_due_windows_can_be_limited_to_named_tiers() -> None:
    assert [w.tier.name for w in due_windows(NOW, only=["weekly", "fresh"])] == [
        "fresh",
        "weekly",
    ]
    assert due_windows(NOW, only=[]) == []


@settings(max_examples=300, deadline=None)
@given(
    now=_nows,
    age=st.one_of(_offsets, st.timedeltas(min_value=-3650 * DAY, max_value=3650 * DAY)),
    since_check=st.one_of(
        st.none(), _offsets, st.timedeltas(min_value=-3650 * DAY, max_value=3650 * DAY)
    ),
)
def test_is_due_agrees_with_due_windows(
    now: datetime, age: timedelta, since_check: timedelta | None
) -> None:
    """The SQL form of the rule (windows) and the Python form (is_due) are the same rule."""
    posted_at = now - age
    last_checked = None if since_check is None else now - since_check
    in_some_window = any(
        w.posted_after < posted_at <= w.posted_at_or_before
        and (last_checked is None or last_checked <= w.checked_at_or_before)
        for w in due_windows(now)
    )
    assert is_due(now, posted_at, last_checked) is in_some_window


def test_extend_last_tier_lets_the_last_tier_poll_until_the_new_age() -> None:
    tiers = extend_last_tier(DEFAULT_TIERS, 365 * DAY)
    assert tiers[:-1] == DEFAULT_TIERS[:-1]
    assert tiers[-1] == Tier("weekly", 7 * DAY, 365 * DAY, DAY)
    assert polling_horizon(tiers) == 365 * DAY
    assert is_due(NOW, NOW - 100 * DAY, NOW - DAY, tiers) is True
    assert is_due(NOW, NOW - 365 * DAY, None, tiers) is False
    assert DEFAULT_TIERS[-1].max_age == 30 * DAY  # the defaults are untouched


def test_extend_last_tier_may_also_shorten_it() -> None:
    tiers = extend_last_tier(DEFAULT_TIERS, 7 * DAY + SECOND)
    assert tier_for_age(7 * DAY, tiers).name == "weekly"
    assert tier_for_age(7 * DAY + SECOND, tiers) is None


@pytest.mark.parametrize("max_age", [7 * DAY, DAY, timedelta(0)], ids=["7d", "1d", "0"])
def test_extend_last_tier_rejects_an_age_not_after_the_start_of_the_last_tier(
    max_age: timedelta,
) -> None:
    with pytest.raises(ValueError, match="weekly"):
        extend_last_tier(DEFAULT_TIERS, max_age)
