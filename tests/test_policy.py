"""The retention policy: which observations are stored as snapshots (DESIGN.md, "The
retention policy")."""

import random
import time
from datetime import timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smart_retention.observation import Counters
from smart_retention.policy import (
    DEFAULT_PROFILE,
    AgeBracket,
    Decision,
    Profile,
    Reason,
    decide,
)

SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

# One age well inside each bracket of DEFAULT_PROFILE.
UNDER_1H = timedelta(minutes=30)
H1_TO_24H = timedelta(hours=12)
H24_TO_7D = timedelta(days=3)
D7_PLUS = timedelta(days=20)


def views(
    n: int | None, forwards: int | None = 0, reactions: int | None = 0, replies: int | None = 0
) -> Counters:
    return Counters(views=n, forwards=forwards, reactions=reactions, replies=replies)


def decide_views(stored: int, observed: int, age: timedelta) -> Decision:
    """A decision where only views may differ and no checkpoint is due."""
    return decide(views(observed), views(stored), age, checks_since_save=0, since_last_save=HOUR)


# --- view thresholds, bracket by bracket ---------------------------------------------------

# (age, stored views, change, stored?) - for each bracket, one stored value where the
# relative threshold is the smaller one and one where the absolute threshold is.
VIEW_THRESHOLD_CASES = [
    # under 1h: 0.5% or 5 views. 0.5% of 800 = 4 < 5.
    pytest.param(UNDER_1H, 800, +4, True, id="under-1h relative: +4 of 800 (0.5%) stores"),
    pytest.param(UNDER_1H, 800, +3, False, id="under-1h relative: +3 of 800 does not"),
    pytest.param(UNDER_1H, 800, -4, True, id="under-1h relative: -4 of 800 stores"),
    pytest.param(UNDER_1H, 800, -3, False, id="under-1h relative: -3 of 800 does not"),
    pytest.param(UNDER_1H, 100_000, +5, True, id="under-1h absolute: +5 of 100000 stores"),
    pytest.param(UNDER_1H, 100_000, +4, False, id="under-1h absolute: +4 of 100000 does not"),
    pytest.param(UNDER_1H, 100_000, -5, True, id="under-1h absolute: -5 of 100000 stores"),
    pytest.param(UNDER_1H, 100_000, -4, False, id="under-1h absolute: -4 of 100000 does not"),
    # 1h-24h: 1% or 10 views. 1% of 500 = 5 < 10.
    pytest.param(H1_TO_24H, 500, +5, True, id="1h-24h relative: +5 of 500 (1%) stores"),
    pytest.param(H1_TO_24H, 500, +4, False, id="1h-24h relative: +4 of 500 does not"),
    pytest.param(H1_TO_24H, 500, -5, True, id="1h-24h relative: -5 of 500 stores"),
    pytest.param(H1_TO_24H, 500, -4, False, id="1h-24h relative: -4 of 500 does not"),
    pytest.param(H1_TO_24H, 100_000, +10, True, id="1h-24h absolute: +10 of 100000 stores"),
    pytest.param(H1_TO_24H, 100_000, +9, False, id="1h-24h absolute: +9 of 100000 does not"),
    pytest.param(H1_TO_24H, 100_000, -10, True, id="1h-24h absolute: -10 of 100000 stores"),
    pytest.param(H1_TO_24H, 100_000, -9, False, id="1h-24h absolute: -9 of 100000 does not"),
    # 24h-7d: 2% or 20 views. 2% of 500 = 10 < 20.
    pytest.param(H24_TO_7D, 500, +10, True, id="24h-7d relative: +10 of 500 (2%) stores"),
    pytest.param(H24_TO_7D, 500, +9, False, id="24h-7d relative: +9 of 500 does not"),
    pytest.param(H24_TO_7D, 500, -10, True, id="24h-7d relative: -10 of 500 stores"),
    pytest.param(H24_TO_7D, 500, -9, False, id="24h-7d relative: -9 of 500 does not"),
    pytest.param(H24_TO_7D, 100_000, +20, True, id="24h-7d absolute: +20 of 100000 stores"),
    pytest.param(H24_TO_7D, 100_000, +19, False, id="24h-7d absolute: +19 of 100000 does not"),
    pytest.param(H24_TO_7D, 100_000, -20, True, id="24h-7d absolute: -20 of 100000 stores"),
    pytest.param(H24_TO_7D, 100_000, -19, False, id="24h-7d absolute: -19 of 100000 does not"),
    # 7d+: 5% or 50 views. 5% of 200 = 10 < 50.
    pytest.param(D7_PLUS, 200, +10, True, id="7d+ relative: +10 of 200 (5%) stores"),
    pytest.param(D7_PLUS, 200, +9, False, id="7d+ relative: +9 of 200 does not"),
    pytest.param(D7_PLUS, 200, -10, True, id="7d+ relative: -10 of 200 stores"),
    pytest.param(D7_PLUS, 200, -9, False, id="7d+ relative: -9 of 200 does not"),
    pytest.param(D7_PLUS, 100_000, +50, True, id="7d+ absolute: +50 of 100000 stores"),
    pytest.param(D7_PLUS, 100_000, +49, False, id="7d+ absolute: +49 of 100000 does not"),
    pytest.param(D7_PLUS, 100_000, -50, True, id="7d+ absolute: -50 of 100000 stores"),
    pytest.param(D7_PLUS, 100_000, -49, False, id="7d+ absolute: -49 of 100000 does not"),
    # Where both thresholds meet (0.5% of 1000 = 5) and from zero (any change is infinite %).
    pytest.param(UNDER_1H, 1000, +5, True, id="under-1h: +5 of 1000, both thresholds, stores"),
    pytest.param(UNDER_1H, 1000, +4, False, id="under-1h: +4 of 1000 does not"),
    pytest.param(D7_PLUS, 0, +1, True, id="7d+: +1 from 0 views stores"),
]


@pytest.mark.parametrize(("age", "stored", "change", "stores"), VIEW_THRESHOLD_CASES)
def test_a_views_change_is_stored_exactly_when_it_reaches_either_threshold_of_its_bracket(
    age: timedelta, stored: int, change: int, stores: bool
) -> None:
    decision = decide_views(stored, stored + change, age)
    assert decision.store is stores
    assert decision.reason == (Reason.VIEWS if stores else Reason.BELOW_THRESHOLD)


# (age, bracket name): an age exactly at a bracket's bound belongs to the next bracket.
AGE_BOUNDARY_CASES = [
    pytest.param(timedelta(0), "under 1h", id="0s"),
    pytest.param(HOUR - SECOND, "under 1h", id="59m59s"),
    pytest.param(HOUR, "1h-24h", id="exactly 1h"),
    pytest.param(DAY - SECOND, "1h-24h", id="23h59m59s"),
    pytest.param(DAY, "24h-7d", id="exactly 24h"),
    pytest.param(7 * DAY - SECOND, "24h-7d", id="6d23h59m59s"),
    pytest.param(7 * DAY, "7d+", id="exactly 7d"),
    pytest.param(3650 * DAY, "7d+", id="10 years"),
]


@pytest.mark.parametrize(("age", "bracket_name"), AGE_BOUNDARY_CASES)
def test_an_age_at_a_bracket_bound_belongs_to_the_older_bracket(
    age: timedelta, bracket_name: str
) -> None:
    assert DEFAULT_PROFILE.bracket_for(age).name == bracket_name
    assert decide_views(100, 100, age).bracket.name == bracket_name


# (age just before a bound, age at the bound, absolute threshold of the younger bracket):
# with 100000 stored views the absolute threshold decides, and it grows at each bound.
AGE_BOUNDARY_BEHAVIOUR = [
    pytest.param(HOUR - SECOND, HOUR, 5, id="1h"),
    pytest.param(DAY - SECOND, DAY, 10, id="24h"),
    pytest.param(7 * DAY - SECOND, 7 * DAY, 20, id="7d"),
]


@pytest.mark.parametrize(("before", "at", "younger_absolute"), AGE_BOUNDARY_BEHAVIOUR)
def test_a_change_that_matters_one_second_before_a_bracket_bound_does_not_at_the_bound(
    before: timedelta, at: timedelta, younger_absolute: int
) -> None:
    assert decide_views(100_000, 100_000 + younger_absolute, before).reason == Reason.VIEWS
    assert decide_views(100_000, 100_000 + younger_absolute, at).reason == Reason.BELOW_THRESHOLD


def test_default_profile_is_the_table_in_the_design() -> None:
    """Brackets, thresholds and checkpoint settings as DESIGN.md states them."""
    table = [
        (b.name, b.max_age, b.views_relative, b.views_absolute) for b in DEFAULT_PROFILE.brackets
    ]
    assert table == [
        ("under 1h", HOUR, 0.005, 5),
        ("1h-24h", DAY, 0.01, 10),
        ("24h-7d", 7 * DAY, 0.02, 20),
        ("7d+", None, 0.05, 50),
    ]
    assert DEFAULT_PROFILE.checkpoint_checks == 50
    assert DEFAULT_PROFILE.checkpoint_interval == DAY


# --- the other rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "observed",
    [views(0), views(123_456, 7, 8, 9), Counters(), views(None, None, None, None)],
    ids=["zero views", "all counters", "all unknown", "all explicitly unknown"],
)
def test_the_first_observation_of_a_post_is_always_stored(observed: Counters) -> None:
    decision = decide(observed, None, UNDER_1H, checks_since_save=0, since_last_save=None)
    assert decision == Decision(True, Reason.FIRST, DEFAULT_PROFILE.bracket_for(UNDER_1H))


@pytest.mark.parametrize("counter", ["forwards", "reactions", "replies"])
@pytest.mark.parametrize("change", [+1, -1], ids=["up", "down"])
@pytest.mark.parametrize("age", [UNDER_1H, D7_PLUS], ids=["fresh", "old"])
def test_any_change_in_forwards_reactions_or_replies_is_stored_even_with_views_unchanged(
    counter: str, change: int, age: timedelta
) -> None:
    stored = views(1000, forwards=5, reactions=5, replies=5)
    observed = stored._replace(**{counter: getattr(stored, counter) + change})
    decision = decide(observed, stored, age, checks_since_save=0, since_last_save=SECOND)
    assert (decision.store, decision.reason) == (True, Reason.COUNTERS)


def test_a_counter_change_together_with_a_views_change_is_reported_as_counters() -> None:
    stored = views(1000, forwards=5)
    decision = decide(views(2000, forwards=6), stored, UNDER_1H, 0, SECOND)
    assert (decision.store, decision.reason) == (True, Reason.COUNTERS)


def test_an_identical_observation_is_unchanged_and_not_stored() -> None:
    stored = views(1000, 1, 2, 3)
    decision = decide(stored, stored, H1_TO_24H, checks_since_save=3, since_last_save=HOUR)
    assert (decision.store, decision.reason) == (False, Reason.UNCHANGED)


# (checks_since_save, since_last_save, checkpoint due?)
CHECKPOINT_CASES = [
    pytest.param(49, HOUR, False, id="49 checks, 1h: not due"),
    pytest.param(50, HOUR, True, id="50 checks: due"),
    pytest.param(51, HOUR, True, id="51 checks: due"),
    pytest.param(0, DAY - SECOND, False, id="23h59m59s: not due"),
    pytest.param(0, DAY, True, id="exactly 24h: due"),
    pytest.param(0, 3 * DAY, True, id="3 days: due"),
    pytest.param(49, DAY - SECOND, False, id="49 checks and 23h59m59s: not due"),
    pytest.param(49, None, False, id="49 checks, no save time: not due"),
    pytest.param(50, None, True, id="50 checks, no save time: due"),
]


@pytest.mark.parametrize(("checks", "since", "due"), CHECKPOINT_CASES)
def test_a_below_threshold_change_is_stored_as_a_checkpoint_after_50_checks_or_24_hours(
    checks: int, since: timedelta | None, due: bool
) -> None:
    """`checks_since_save` counts the checks after the last save, not this one."""
    decision = decide(views(1001), views(1000), D7_PLUS, checks, since)
    if due:
        assert (decision.store, decision.reason) == (True, Reason.CHECKPOINT)
    else:
        assert (decision.store, decision.reason) == (False, Reason.BELOW_THRESHOLD)


@pytest.mark.parametrize(
    ("checks", "since"),
    [(50, HOUR), (0, DAY), (10_000, 365 * DAY)],
    ids=["50 checks", "24 hours", "both, long overdue"],
)
def test_an_identical_observation_is_never_stored_even_when_a_checkpoint_is_due(
    checks: int, since: timedelta
) -> None:
    stored = views(1000, 1, 2, 3)
    decision = decide(views(1000, 1, 2, 3), stored, D7_PLUS, checks, since)
    assert (decision.store, decision.reason) == (False, Reason.UNCHANGED)


def test_the_checkpoint_settings_of_the_profile_are_used() -> None:
    profile = Profile(
        "tight",
        DEFAULT_PROFILE.brackets,
        checkpoint_checks=3,
        checkpoint_interval=timedelta(minutes=10),
    )
    below = (views(1001), views(1000), D7_PLUS)
    assert decide(*below, 2, timedelta(minutes=9), profile=profile).reason == (
        Reason.BELOW_THRESHOLD
    )
    assert decide(*below, 3, timedelta(minutes=9), profile=profile).reason == Reason.CHECKPOINT
    assert decide(*below, 0, timedelta(minutes=10), profile=profile).reason == Reason.CHECKPOINT


def test_the_thresholds_of_a_custom_profile_are_used() -> None:
    profile = Profile("loose", (AgeBracket("all", None, views_relative=0.5, views_absolute=1000),))
    stored = views(100)
    assert decide(views(149), stored, UNDER_1H, 0, HOUR, profile=profile).reason == (
        Reason.BELOW_THRESHOLD
    )
    assert decide(views(150), stored, UNDER_1H, 0, HOUR, profile=profile).reason == Reason.VIEWS


def test_the_policy_state_is_passed_through_by_the_step_rule() -> None:
    state = {"door": [1.0, 2.0]}
    for stored in (None, views(1000), views(5)):
        assert decide(views(1000), stored, UNDER_1H, 0, None, state=state).state == state


# --- unknown counters -----------------------------------------------------------------------


@pytest.mark.parametrize("counter", ["forwards", "reactions", "replies"])
def test_an_unknown_observed_counter_never_triggers_a_save(counter: str) -> None:
    stored = views(1000, forwards=3, reactions=3, replies=3)
    observed = stored._replace(**{counter: None})
    decision = decide(observed, stored, UNDER_1H, checks_since_save=0, since_last_save=HOUR)
    assert (decision.store, decision.reason) == (False, Reason.UNCHANGED)


def test_unknown_observed_views_never_trigger_a_save_even_when_a_checkpoint_is_due() -> None:
    decision = decide(views(None), views(1000), UNDER_1H, checks_since_save=50, since_last_save=DAY)
    assert (decision.store, decision.reason) == (False, Reason.UNCHANGED)


@pytest.mark.parametrize("counter", ["forwards", "reactions", "replies"])
def test_a_counter_stored_as_unknown_and_known_now_is_stored(counter: str) -> None:
    stored = views(1000)._replace(**{counter: None})
    observed = views(1000)
    decision = decide(observed, stored, UNDER_1H, checks_since_save=0, since_last_save=SECOND)
    assert (decision.store, decision.reason) == (True, Reason.COUNTERS)


def test_views_stored_as_unknown_and_known_now_are_stored() -> None:
    decision = decide(views(5), views(None), D7_PLUS, checks_since_save=0, since_last_save=SECOND)
    assert (decision.store, decision.reason) == (True, Reason.VIEWS)


def test_unknown_is_not_zero_stored_zero_views_and_unknown_now_is_unchanged() -> None:
    decision = decide(views(None), views(0), UNDER_1H, checks_since_save=0, since_last_save=HOUR)
    assert (decision.store, decision.reason) == (False, Reason.UNCHANGED)


def test_unknown_is_not_zero_stored_unknown_and_zero_now_is_a_change() -> None:
    decision = decide(views(0), views(None), UNDER_1H, checks_since_save=0, since_last_save=HOUR)
    assert (decision.store, decision.reason) == (True, Reason.VIEWS)


# --- properties -----------------------------------------------------------------------------

# How a post behaves between checks: (seconds between checks, views steps, chance that
# forwards, reactions or replies change or go unknown at a check).
_MODES = {
    # busy: jumps, decreases and counter changes.
    "busy": ((1, 4 * 3600), (-8, -2, 0, 0, 1, 2, 8, 40, 3000), 0.25),
    # quiet, checked often: slow drift until 50 checks make a checkpoint due.
    "quiet, frequent checks": ((60, 600), (0, 0, 0, 1), 0.0),
    # quiet, checked rarely: slow drift until 24 hours make a checkpoint due.
    "quiet, rare checks": ((600, 4 * 3600), (0, 0, 0, 0, 1), 0.0),
}


@st.composite
def post_histories(draw: st.DrawFn) -> list[tuple[timedelta, Counters]]:
    """(post age, observed counters) for successive checks of one post; ages increase."""
    age = timedelta(seconds=draw(st.integers(0, 10 * 24 * 3600)))
    current = Counters(
        views=draw(st.one_of(st.integers(0, 1000), st.integers(0, 200_000))),
        forwards=draw(st.integers(0, 50)),
        reactions=draw(st.integers(0, 50)),
        replies=draw(st.integers(0, 50)),
    )
    (min_seconds, max_seconds), views_steps, counter_chance = _MODES[
        draw(st.sampled_from(sorted(_MODES)))
    ]
    length = draw(st.integers(0, 150))
    rng = random.Random(draw(st.integers(0, 2**32)))
    history = [(age, current)]
    for _ in range(length):
        age += timedelta(seconds=rng.randint(min_seconds, max_seconds))
        current = current._replace(views=max(0, current.views + rng.choice(views_steps)))
        observed = current
        if rng.random() < counter_chance:
            name = rng.choice(["forwards", "reactions", "replies", "unknown"])
            if name == "unknown":
                observed = current._replace(forwards=None)
            else:
                value = max(0, getattr(current, name) + rng.choice([-1, 1]))
                current = observed = current._replace(**{name: value})
        history.append((age, observed))
    return history


def simulate(
    history: list[tuple[timedelta, Counters]],
) -> list[tuple[timedelta, Counters, Counters | None, int, timedelta | None, Decision]]:
    """Run the policy over one post's checks the way the collector does."""
    last_stored: Counters | None = None
    saved_at: timedelta | None = None
    checks_since_save = 0
    steps = []
    for age, observed in history:
        since = None if saved_at is None else age - saved_at
        decision = decide(observed, last_stored, age, checks_since_save, since)
        steps.append((age, observed, last_stored, checks_since_save, since, decision))
        if decision.store:
            last_stored, saved_at, checks_since_save = observed, age, 0
        else:
            checks_since_save += 1
    return steps


@settings(max_examples=200, deadline=None)
@given(post_histories())
def test_a_check_that_stores_nothing_is_within_both_thresholds_of_the_stored_views(
    history: list[tuple[timedelta, Counters]],
) -> None:
    """The promise in DESIGN.md: an unsaved check differs from the stored series by less
    than both thresholds of its bracket."""
    for age, observed, stored, checks, since, decision in simulate(history):
        bracket = DEFAULT_PROFILE.bracket_for(age)
        assert decision.bracket == bracket
        if decision.store:
            continue
        assert stored is not None
        assert not bracket.views_change_matters(stored.views, observed.views)
        difference = abs(observed.views - stored.views)
        assert difference < bracket.views_absolute
        assert difference == 0 or difference < bracket.views_relative * stored.views
        for name in ("forwards", "reactions", "replies"):
            assert getattr(observed, name) in (None, getattr(stored, name))
        if decision.reason == Reason.BELOW_THRESHOLD:
            assert checks < DEFAULT_PROFILE.checkpoint_checks
            assert since < DEFAULT_PROFILE.checkpoint_interval
        else:
            assert decision.reason == Reason.UNCHANGED
            assert difference == 0


@settings(max_examples=200, deadline=None)
@given(post_histories())
def test_no_two_consecutive_stored_snapshots_are_identical(
    history: list[tuple[timedelta, Counters]],
) -> None:
    stored = [observed for _, observed, _, _, _, d in simulate(history) if d.store]
    assert stored[0] == history[0][1]
    for previous, current in pairwise(stored):
        assert previous != current


_counter_values = st.one_of(st.none(), st.integers(0, 2**63 - 1))
_counters = st.builds(Counters, _counter_values, _counter_values, _counter_values, _counter_values)
_ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650))


@settings(max_examples=100, deadline=None)
@given(
    observed=_counters,
    last_stored=st.one_of(st.none(), _counters),
    age=_ages,
    checks=st.integers(0, 10_000),
    since=st.one_of(st.none(), _ages),
)
def test_decide_gives_the_same_decision_for_the_same_arguments_at_any_time(
    observed: Counters,
    last_stored: Counters | None,
    age: timedelta,
    checks: int,
    since: timedelta | None,
) -> None:
    """decide reads no clock: calls separated in time agree."""
    first = decide(observed, last_stored, age, checks, since)
    time.sleep(0.001)
    second = decide(observed, last_stored, age, checks, since)
    assert first == second


@settings(max_examples=100, deadline=None)
@given(observed=_counters, age=_ages, checks=st.integers(0, 10_000))
def test_every_first_observation_is_stored(observed: Counters, age: timedelta, checks: int) -> None:
    decision = decide(observed, None, age, checks, None)
    assert (decision.store, decision.reason) == (True, Reason.FIRST)


# --- profile validation ---------------------------------------------------------------------


def _bracket(name: str, max_age: timedelta | None) -> AgeBracket:
    return AgeBracket(name, max_age, views_relative=0.01, views_absolute=10)


def test_a_profile_whose_last_bracket_has_a_max_age_is_rejected() -> None:
    with pytest.raises(ValueError, match="last bracket must have no max_age"):
        Profile("bad", (_bracket("a", HOUR), _bracket("b", DAY)))


def test_a_profile_without_brackets_is_rejected() -> None:
    with pytest.raises(ValueError, match="last bracket"):
        Profile("empty", ())


def test_a_profile_with_unordered_brackets_is_rejected() -> None:
    with pytest.raises(ValueError, match="ordered by max_age"):
        Profile("bad", (_bracket("a", DAY), _bracket("b", HOUR), _bracket("c", None)))


def test_a_profile_with_an_unbounded_bracket_before_the_last_is_rejected() -> None:
    with pytest.raises(ValueError, match="ordered by max_age"):
        Profile("bad", (_bracket("a", None), _bracket("b", None)))


def test_an_ordered_profile_is_accepted_and_picks_brackets_by_age() -> None:
    profile = Profile("ok", (_bracket("a", HOUR), _bracket("b", DAY), _bracket("c", None)))
    assert [profile.bracket_for(age).name for age in (timedelta(0), HOUR, DAY)] == ["a", "b", "c"]
