"""The retention policy: should this observation be stored as a snapshot?

Pure: `decide` reads no clock, does no I/O and logs nothing; the same arguments always
give the same decision. It compares the observation with the last *stored* snapshot, not
the last observation, so slow drift still triggers a save. The promise that follows:
when a check stores nothing, its views differ from the stored series by less than both
thresholds of its age bracket (relative and absolute).

Thresholds live in a `Profile`, which is data; `DEFAULT_PROFILE` is the table in
DESIGN.md. The step rule below keeps no per-post state, but `decide` takes and returns
one (`state`) so that a rule which needs some (a swinging-door rule keeps its slopes)
fits the same call and the same check row.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from itertools import pairwise
from typing import Any, NamedTuple

from smart_retention.observation import Counters

PolicyState = Mapping[str, Any] | None


class Reason(StrEnum):
    FIRST = "first"
    VIEWS = "views"
    COUNTERS = "counters"
    CHECKPOINT = "checkpoint"
    UNCHANGED = "unchanged"
    BELOW_THRESHOLD = "below-threshold"


@dataclass(frozen=True, slots=True)
class AgeBracket:
    """Posts younger than `max_age` (None: no upper bound) use these view thresholds."""

    name: str
    max_age: timedelta | None
    views_relative: float
    views_absolute: int

    def views_change_matters(self, stored: int, observed: int) -> bool:
        change = abs(observed - stored)
        if change == 0:
            return False
        return change >= self.views_absolute or change >= self.views_relative * stored

    def views_tolerance(self, stored: int) -> float:
        """The largest unsaved difference from `stored`: just under both thresholds."""
        return min(float(self.views_absolute), self.views_relative * stored)


@dataclass(frozen=True, slots=True)
class Profile:
    """A named set of thresholds. Brackets are ordered by age; the last has no bound."""

    name: str
    brackets: tuple[AgeBracket, ...]
    checkpoint_checks: int = 50
    checkpoint_interval: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not self.brackets or self.brackets[-1].max_age is not None:
            raise ValueError(f"profile {self.name!r}: the last bracket must have no max_age")
        bounds = [b.max_age for b in self.brackets[:-1]]
        if any(b is None for b in bounds) or any(
            later <= earlier  # type: ignore[operator]
            for earlier, later in pairwise(bounds)
        ):
            raise ValueError(
                f"profile {self.name!r}: brackets must be ordered by max_age, "
                "each bound larger than the last"
            )

    def bracket_for(self, post_age: timedelta) -> AgeBracket:
        for bracket in self.brackets:
            if bracket.max_age is None or post_age < bracket.max_age:
                return bracket
        raise AssertionError("unreachable: the last bracket is unbounded")


DEFAULT_PROFILE = Profile(
    name="default",
    brackets=(
        AgeBracket("under 1h", timedelta(hours=1), views_relative=0.005, views_absolute=5),
        AgeBracket("1h-24h", timedelta(hours=24), views_relative=0.01, views_absolute=10),
        AgeBracket("24h-7d", timedelta(days=7), views_relative=0.02, views_absolute=20),
        AgeBracket("7d+", None, views_relative=0.05, views_absolute=50),
    ),
)

PROFILES: dict[str, Profile] = {DEFAULT_PROFILE.name: DEFAULT_PROFILE}


class Decision(NamedTuple):
    # A named tuple rather than a frozen dataclass: one is made per check, and a tuple
    # is several times cheaper to build.
    store: bool
    reason: Reason
    bracket: AgeBracket
    state: PolicyState = None


def decide(
    observed: Counters,
    last_stored: Counters | None,
    post_age: timedelta,
    checks_since_save: int,
    since_last_save: timedelta | None,
    profile: Profile = DEFAULT_PROFILE,
    state: PolicyState = None,
) -> Decision:
    """Decide whether `observed` is stored.

    `checks_since_save` counts the checks after the last save, not this one; a checkpoint
    is due once it reaches `profile.checkpoint_checks` or `since_last_save` reaches
    `profile.checkpoint_interval`. An unknown (None) observed counter never triggers a
    save; a counter that becomes known after being stored as unknown does.
    """
    bracket = profile.bracket_for(post_age)
    if last_stored is None:
        return Decision(True, Reason.FIRST, bracket, state)
    # The counters other than views, spelled out rather than looped over: once per check.
    if (
        _changed(observed.forwards, last_stored.forwards)
        or _changed(observed.reactions, last_stored.reactions)
        or _changed(observed.replies, last_stored.replies)
    ):
        return Decision(True, Reason.COUNTERS, bracket, state)
    if _views_matter(bracket, observed.views, last_stored.views):
        return Decision(True, Reason.VIEWS, bracket, state)

    views_differ = _changed(observed.views, last_stored.views)
    if not views_differ:
        return Decision(False, Reason.UNCHANGED, bracket, state)
    checkpoint_due = checks_since_save >= profile.checkpoint_checks or (
        since_last_save is not None and since_last_save >= profile.checkpoint_interval
    )
    if checkpoint_due:
        return Decision(True, Reason.CHECKPOINT, bracket, state)
    return Decision(False, Reason.BELOW_THRESHOLD, bracket, state)


def _changed(observed: int | None, stored: int | None) -> bool:
    return observed is not None and observed != stored


def _views_matter(bracket: AgeBracket, observed: int | None, stored: int | None) -> bool:
    if observed is None:
        return False
    if stored is None:
        return True
    return bracket.views_change_matters(stored, observed)
