"""The validated observation: what input is accepted, and how bad input is rejected
(DESIGN.md, "Data model" and invariant 4)."""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest

from smart_retention.errors import SmartRetentionError
from smart_retention.observation import (
    MAX_COUNTER,
    Counters,
    Observation,
    ObservationError,
    PostKey,
    Rejection,
    build_observation,
)

POSTED = "2026-01-01T00:00:00+00:00"
OBSERVED = "2026-01-01T01:00:00+00:00"
POST = PostKey(1, 42)
COUNTERS = ("views", "forwards", "reactions", "replies")


def fields(**overrides: object) -> dict[str, object]:
    """A valid observation of post 1/42, with some fields replaced."""
    valid: dict[str, object] = {
        "channel_id": "1",
        "msg_id": "42",
        "posted_at": POSTED,
        "observed_at": OBSERVED,
        "views": "100",
        "forwards": "2",
        "reactions": "3",
        "replies": "4",
    }
    valid.update(overrides)
    return valid


def rejection(raw: Mapping[str, object], **kwargs: object) -> ObservationError:
    with pytest.raises(ObservationError) as caught:
        build_observation(raw, **kwargs)  # type: ignore[arg-type]
    return caught.value


def assert_rejected(
    raw: Mapping[str, object], field: str, post: PostKey | None = POST, **kwargs: object
) -> ObservationError:
    """Rejected for `field`, with a message that names the field and, when known, the post."""
    error = rejection(raw, **kwargs)
    assert error.field == field
    assert error.post == post
    assert f"field {field}: " in str(error), str(error)
    if post is not None:
        assert str(error).startswith(f"post {post}: "), str(error)
    return error


def test_a_valid_observation_is_built_with_exact_values() -> None:
    assert build_observation(fields()) == Observation(
        key=POST,
        posted_at=datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
        observed_at=datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
        counters=Counters(views=100, forwards=2, reactions=3, replies=4),
    )


def test_an_observation_error_is_a_smart_retention_error() -> None:
    assert isinstance(rejection(fields(views="abc")), SmartRetentionError)


# --- counters -------------------------------------------------------------------------------

# (raw value, words the message must contain)
BAD_COUNTERS = [
    pytest.param("-5", "negative", id="negative text"),
    pytest.param(-1, "negative", id="negative int"),
    pytest.param("1.5", "fractional", id="fractional text"),
    pytest.param(1.5, "fractional", id="fractional float"),
    pytest.param("12.01", "fractional", id="almost whole text"),
    pytest.param("NaN", "not a number", id="NaN"),
    pytest.param("nan", "not a number", id="nan"),
    pytest.param(float("nan"), "not a number", id="float nan"),
    pytest.param("inf", "not a number", id="inf"),
    pytest.param("-Infinity", "not a number", id="-Infinity"),
    pytest.param(float("inf"), "not a number", id="float inf"),
    pytest.param("abc", "not a number", id="abc"),
    pytest.param("12abc", "not a number", id="12abc"),
    pytest.param("1,000", "not a number", id="thousands separator"),
    pytest.param("9223372036854775808", "2^63-1", id="2^63 text"),
    pytest.param(2**63, "2^63-1", id="2^63 int"),
    pytest.param("1e30", "is not a number", id="1e30-exponent-notation-refused"),
    pytest.param("1e200000", "is not a number", id="huge-exponent-refused-without-expanding"),
    pytest.param(True, "boolean", id="True"),
    pytest.param(False, "boolean", id="False"),
    pytest.param([1], "unsupported type", id="list"),
]


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize(("raw", "words"), BAD_COUNTERS)
def test_a_bad_counter_is_rejected_naming_the_post_and_the_field(
    counter: str, raw: object, words: str
) -> None:
    error = assert_rejected(fields(**{counter: raw}), counter)
    assert words in str(error)


@pytest.mark.parametrize("raw", ["²", "+-5", "--5", "-+5"])
def test_text_that_only_looks_like_digits_is_rejected_as_an_observation_error(raw: str) -> None:
    """Not a ValueError escaping the validation, which would stop a whole replay."""
    assert_rejected(fields(views=raw), "views")


# (raw value, parsed value)
GOOD_COUNTERS = [
    pytest.param("0", 0, id="zero is known, not unknown"),
    pytest.param(0, 0, id="int zero"),
    pytest.param("3000000000", 3_000_000_000, id="over 2^31"),
    pytest.param("9223372036854775807", MAX_COUNTER, id="exactly 2^63-1"),
    pytest.param(MAX_COUNTER, MAX_COUNTER, id="int 2^63-1"),
    pytest.param("12.0", 12, id="12.0 written through floating point"),
    pytest.param(12.0, 12, id="float 12.0"),
    pytest.param(" 7 ", 7, id="surrounding spaces"),
    pytest.param("+7", 7, id="explicit plus"),
    pytest.param("", None, id="empty is unknown"),
    pytest.param("   ", None, id="blank is unknown"),
    pytest.param(None, None, id="None is unknown"),
]


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize(("raw", "value"), GOOD_COUNTERS)
def test_a_good_counter_is_parsed_exactly(counter: str, raw: object, value: int | None) -> None:
    counters = build_observation(fields(**{counter: raw})).counters
    assert getattr(counters, counter) == value
    assert type(getattr(counters, counter)) is type(value)


def test_a_large_count_survives_exactly_not_through_floating_point() -> None:
    """2^53 + 1 is the first integer a float cannot hold."""
    assert build_observation(fields(views=str(2**53 + 1))).counters.views == 2**53 + 1


def test_a_missing_counter_is_unknown() -> None:
    raw = fields()
    del raw["replies"]
    assert build_observation(raw).counters == Counters(100, 2, 3, None)


# --- ids ----------------------------------------------------------------------------------


def test_a_missing_msg_id_is_rejected() -> None:
    raw = fields()
    del raw["msg_id"]
    error = assert_rejected(raw, "msg_id", post=None)
    assert "missing" in str(error)


@pytest.mark.parametrize(
    ("raw", "words"),
    [("", "missing"), ("0", "positive"), ("-42", "negative"), ("x", "not a number")],
)
def test_a_bad_msg_id_is_rejected(raw: str, words: str) -> None:
    error = assert_rejected(fields(msg_id=raw), "msg_id", post=None)
    assert words in str(error)


@pytest.mark.parametrize("raw", ["-1001234", " -1001234", -1001234])
def test_a_minus_100_prefixed_peer_id_is_rejected_as_channel_id(raw: object) -> None:
    """channels hold the bare channel id (1234), not the -100 prefixed peer id."""
    assert_rejected(fields(channel_id=raw), "channel_id", post=None)


def test_a_minus_100_prefixed_peer_id_text_is_explained() -> None:
    assert "-100 prefixed peer id" in str(rejection(fields(channel_id="-1001234")))


def test_a_missing_channel_id_is_rejected() -> None:
    raw = fields()
    del raw["channel_id"]
    assert "missing" in str(assert_rejected(raw, "channel_id", post=None))


@pytest.mark.parametrize("field", ["channel_id", "msg_id"])
@pytest.mark.parametrize("raw", [True, False])
def test_a_boolean_id_is_rejected(field: str, raw: bool) -> None:
    assert "boolean" in str(assert_rejected(fields(**{field: raw}), field, post=None))


def test_a_bare_channel_id_is_accepted() -> None:
    assert build_observation(fields(channel_id="1001234", msg_id=7)).key == PostKey(1001234, 7)


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["posted_at", "observed_at"])
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        pytest.param("yesterday", "not an ISO-8601 timestamp", id="unparsable"),
        pytest.param("2026-13-01T00:00:00+00:00", "not an ISO-8601", id="month 13"),
        pytest.param("2026-01-01T00:00:00", "no timezone", id="naive text"),
        pytest.param(datetime(2026, 1, 1), "no timezone", id="naive datetime"),  # noqa: DTZ001
        pytest.param("", "missing", id="empty"),
        pytest.param(None, "missing", id="None"),
        pytest.param(1767225600, "not a timestamp", id="epoch number"),
    ],
)
def test_a_bad_timestamp_is_rejected_naming_the_post_and_the_field(
    field: str, raw: object, words: str
) -> None:
    assert words in str(assert_rejected(fields(**{field: raw}), field))


def test_a_timestamp_with_another_offset_is_converted_to_utc() -> None:
    observation = build_observation(
        fields(posted_at="2026-01-01T03:00:00+03:00", observed_at="2025-12-31T20:30:00-05:00")
    )
    assert observation.posted_at == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert observation.observed_at == datetime(2026, 1, 1, 1, 30, tzinfo=UTC)
    assert observation.posted_at.utcoffset() == timedelta(0)
    assert observation.posted_at.tzinfo is UTC
    assert observation.observed_at.tzinfo is UTC


def test_a_z_suffix_means_utc() -> None:
    observation = build_observation(fields(posted_at="2026-01-01T00:00:00Z"))
    assert observation.posted_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert observation.posted_at.tzinfo is UTC


def test_an_aware_datetime_is_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    observation = build_observation(fields(observed_at=datetime(2026, 1, 1, 5, tzinfo=plus_two)))
    assert observation.observed_at == datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert observation.observed_at.tzinfo is UTC


def test_an_observation_before_the_post_was_posted_is_rejected() -> None:
    error = assert_rejected(fields(observed_at="2025-12-31T23:59:59+00:00"), "observed_at")
    assert "before posted_at" in str(error)


def test_an_observation_at_the_moment_of_posting_is_accepted() -> None:
    observation = build_observation(fields(observed_at=POSTED))
    assert observation.observed_at == observation.posted_at


def test_an_observation_after_not_after_is_rejected_as_from_the_future() -> None:
    now = datetime(2026, 1, 1, 0, 59, 59, tzinfo=UTC)
    error = assert_rejected(fields(), "observed_at", not_after=now)
    assert "in the future" in str(error)


def test_an_observation_at_not_after_is_accepted() -> None:
    now = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    assert build_observation(fields(), not_after=now).observed_at == now


def test_the_future_check_compares_instants_not_wall_clock_readings() -> None:
    """01:00 UTC is 03:30 in +02:30: not after 01:00 UTC, so accepted."""
    now = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    observation = build_observation(fields(observed_at="2026-01-01T03:30:00+02:30"), not_after=now)
    assert observation.observed_at == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)


# --- rejections -----------------------------------------------------------------------------


def test_a_rejection_renders_line_post_field_and_reason() -> None:
    error = rejection(fields(views="abc"))
    rejected = Rejection.from_error(error, line=7)
    assert str(rejected) == "line 7: post 1/42: field views: 'abc' is not a number"
    assert (rejected.line, rejected.post, rejected.field) == (7, POST, "views")


def test_a_rejection_without_a_line_renders_post_field_and_reason() -> None:
    rejected = Rejection.from_error(rejection(fields(forwards="-3")))
    assert str(rejected) == "post 1/42: field forwards: '-3' is negative"
    assert rejected.line is None


def test_a_rejection_of_an_unknown_post_renders_line_and_field() -> None:
    rejected = Rejection.from_error(rejection(fields(msg_id="")), line=3)
    assert str(rejected) == "line 3: field msg_id: '' is missing"
    assert rejected.post is None
