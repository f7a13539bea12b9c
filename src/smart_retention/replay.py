"""The main job on recorded data: play a recording through the real schedule and collector.

A virtual clock ticks at the shortest tier interval from the first recorded moment to the
last; at each tick the collector runs one cycle against a `RecordedSource`, so every poll
sees the latest recorded values at or before that moment. With `as_recorded`, the
schedule is skipped and every recorded row is one check, which isolates the policy.

The report compares what was stored with what an every-check collector would have
stored, and measures the retention error: at each check, how far the observed views are
from the stored series (the last stored snapshot) at that moment.
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from smart_retention.collector import DEFAULT_BATCH_SIZE, BracketStats, CollectionStats, Collector
from smart_retention.errors import InvalidOption, ReplayTargetNotEmpty
from smart_retention.observation import Observation, PostInfo
from smart_retention.policy import DEFAULT_PROFILE, Profile
from smart_retention.schedule import DEFAULT_TIERS, Tier, extend_last_tier
from smart_retention.sources.recording import RecordedSource, Recording
from smart_retention.storage import repository

log = logging.getLogger(__name__)

# Called with the fraction of the replay done, from 0.0 to 1.0.
ProgressCallback = Callable[[float], None]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    as_recorded: bool = False
    # Poll posts up to this age (extends the last tier); None keeps the tier table as is.
    max_age: timedelta | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    profile: Profile = DEFAULT_PROFILE
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    # Delete rows of the recording's channels that the database already holds.
    replace: bool = False


@dataclass(slots=True)
class ReplayReport:
    posts: int
    observations: int
    rejected: int
    checks: int
    snapshots_stored: int
    naive_rows: int
    reduction_pct: float
    views_error_max: int
    views_error_mean: float
    by_bracket: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    rejection_messages: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The report as documented: the figures only, without timings or messages."""
        return {
            "posts": self.posts,
            "observations": self.observations,
            "rejected": self.rejected,
            "checks": self.checks,
            "snapshots_stored": self.snapshots_stored,
            "naive_rows": self.naive_rows,
            "reduction_pct": self.reduction_pct,
            "views_error_max": self.views_error_max,
            "views_error_mean": self.views_error_mean,
            "by_bracket": self.by_bracket,
        }


def run_replay(
    engine: Engine,
    recording: Recording,
    options: ReplayOptions = ReplayOptions(),
    progress: ProgressCallback | None = None,
) -> ReplayReport:
    started = time.perf_counter()
    prepare_target(engine, recording.channel_ids, options.replace)
    tiers = options.tiers
    if options.max_age is not None:
        try:
            tiers = extend_last_tier(tiers, options.max_age)
        except ValueError as error:
            raise InvalidOption(f"--max-age-days: {error}") from None
    source = RecordedSource(recording.observations)
    collector = Collector(
        engine, source, profile=options.profile, tiers=tiers, batch_size=options.batch_size
    )
    if options.as_recorded:
        stats = _replay_as_recorded(engine, collector, recording.observations, progress)
    else:
        stats = _replay_on_schedule(collector, source, recording.observations, tiers, progress)
    report = _build_report(recording, stats, options.profile)
    report.seconds = time.perf_counter() - started
    log.info(
        "replay.done posts=%d observations=%d rejected=%d checks=%d stored=%d "
        "reduction_pct=%.2f views_error_max=%d seconds=%.2f",
        report.posts,
        report.observations,
        report.rejected,
        report.checks,
        report.snapshots_stored,
        report.reduction_pct,
        report.views_error_max,
        report.seconds,
    )
    return report


def prepare_target(
    engine: Engine, channel_ids: Iterable[int], replace: bool, shown: int = 5
) -> None:
    """Make room for a replay (or the demo) of `channel_ids`: refuse a database that
    already holds posts of them, or with `replace` delete those channels first."""
    with engine.begin() as connection:
        present = repository.channel_ids_present(connection, channel_ids)
        if present and not replace:
            listed = ", ".join(map(str, present[:shown]))
            if len(present) > shown:
                listed += f" and {len(present) - shown:,} more"
            raise ReplayTargetNotEmpty(
                f"the database already holds posts of channel(s) {listed}; use another "
                "database, or pass --replace to delete those channels first"
            )
        repository.delete_channels(connection, present)


def align_to_tick(moment: datetime, tick: timedelta) -> datetime:
    """The first moment at or after `moment` on the `tick` grid, as a wall-clock scheduler
    fires (every 10 minutes means :00, :10, ...)."""
    step = tick.total_seconds()
    offset = (moment - EPOCH).total_seconds() % step
    return moment if offset == 0 else moment + timedelta(seconds=step - offset)


def _replay_on_schedule(
    collector: Collector,
    source: RecordedSource,
    observations: Sequence[Observation],
    tiers: Sequence[Tier],
    progress: ProgressCallback | None,
) -> CollectionStats:
    """Tick the virtual clock from the first recorded moment to the last.

    Ticks at which nothing can be due are skipped: after each cycle the clock jumps to
    the tick at or after the schedule's lower bound for the next due check, or the next
    post's first appearance. The result is the same as running every tick.
    """
    stats = CollectionStats()
    if not observations:
        return stats
    first, last = observations[0].observed_at, observations[-1].observed_at
    span = (last - first).total_seconds() or 1.0
    tick = min(tier.interval for tier in tiers)
    now = align_to_tick(first, tick)
    while now <= last:
        stats.merge(collector.run_cycle(now))
        if progress is not None:
            progress(min(1.0, (now - first).total_seconds() / span))
        wake_ups = [w for w in (collector.next_due_at(now), source.next_discovery_at()) if w]
        if not wake_ups:
            break
        now = max(now + tick, align_to_tick(min(wake_ups), tick))
    return stats


def _replay_as_recorded(
    engine: Engine,
    collector: Collector,
    observations: Sequence[Observation],
    progress: ProgressCallback | None,
) -> CollectionStats:
    stats = CollectionStats()
    _register_recorded_posts(engine, observations, collector.batch_size)
    done = 0
    for batch in _unique_key_batches(observations, collector.batch_size):
        stats.merge(collector.check(batch))
        done += len(batch)
        if progress is not None:
            progress(done / len(observations))
    return stats


def _register_recorded_posts(
    engine: Engine, observations: Sequence[Observation], batch_size: int
) -> None:
    infos: dict[Any, PostInfo] = {}
    for observation in observations:
        infos.setdefault(observation.key, PostInfo(observation.key, observation.posted_at))
    ordered = list(infos.values())
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        with engine.begin() as connection:
            repository.register_posts(connection, chunk, min(i.posted_at for i in chunk))


def _unique_key_batches(
    observations: Sequence[Observation], batch_size: int
) -> Iterator[list[Observation]]:
    """Consecutive runs of observations, at most `batch_size`, with each post at most once."""
    batch: list[Observation] = []
    keys: set[Any] = set()
    for observation in observations:
        if len(batch) >= batch_size or observation.key in keys:
            yield batch
            batch, keys = [], set()
        batch.append(observation)
        keys.add(observation.key)
    if batch:
        yield batch


def _reduction_pct(stored: int, naive: int) -> float:
    return round(100.0 * (1 - stored / naive), 2) if naive else 0.0


def _bracket_figures(stats: BracketStats) -> dict[str, Any]:
    return {
        "checks": stats.checks,
        "snapshots_stored": stats.saved,
        "naive_rows": stats.checks,
        "reduction_pct": _reduction_pct(stats.saved, stats.checks),
        "views_error_max": stats.error_max,
        "views_error_mean": round(stats.error_mean, 3),
    }


def _build_report(recording: Recording, stats: CollectionStats, profile: Profile) -> ReplayReport:
    overall = BracketStats()
    for bracket_stats in stats.by_bracket.values():
        overall.merge(bracket_stats)
    by_bracket = {
        bracket.name: _bracket_figures(stats.by_bracket.get(bracket.name, BracketStats()))
        for bracket in profile.brackets
    }
    rejections = [*recording.rejections, *stats.rejections]
    return ReplayReport(
        posts=recording.post_count,
        observations=len(recording.observations),
        rejected=len(recording.rejections) + stats.rejected,
        checks=stats.checks,
        snapshots_stored=stats.saved,
        naive_rows=stats.checks,
        reduction_pct=_reduction_pct(stats.saved, stats.checks),
        views_error_max=overall.error_max,
        views_error_mean=round(overall.error_mean, 3),
        by_bracket=by_bracket,
        rejection_messages=[str(r) for r in rejections],
    )
