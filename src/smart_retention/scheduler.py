"""Tier runs, and the embedded scheduler behind `smart-retention run`.

A *tier run* collects the due posts of one tier (or of an age range) at one moment
`now`: register the posts the source announces, list the due posts and cut the tier into
age *slices* (publication ranges) of about N due posts, then run one collector cycle per
slice: claim, fetch and write, one transaction per batch. Celery workers take a slice
each (N = collect_chunk_size); the embedded scheduler runs slices of one batch, so a stop
lands between batches. Both log one line per run in the same shape:
`smart-collect tier=fresh status=done checks=.. saved=.. rejected=.. seconds=..`.

Why a run is safe to repeat or overlap: every batch claims its posts before fetching
(the collector's claim: FOR UPDATE SKIP LOCKED on PostgreSQL, BEGIN IMMEDIATE on
SQLite) and checks due-ness again under the claim. A second run at the same `now` finds
nothing due; a run killed mid-way loses only its uncommitted batch, and the next run
picks up the posts that are still due.

The embedded scheduler is a small loop rather than a scheduling library: one deadline
per tier on the monotonic clock, each moved on by the tier's interval after a run, and
an `Event` to wait on, so a signal stops it at once while idle and between batches
while collecting. docs/operations.md says why no library is used.
"""

import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from threading import Event
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from smart_retention.collector import DEFAULT_BATCH_SIZE, CollectionStats, Collector, chunked
from smart_retention.observation import PostInfo, PostKey
from smart_retention.schedule import DEFAULT_TIERS, Tier, due_windows
from smart_retention.sources import FetchResult, Source
from smart_retention.storage import repository

log = logging.getLogger(__name__)

# The signals that stop `smart-retention run` cleanly (between batches).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A run's result keeps this many rejection messages; the count is always complete.
REJECTIONS_KEPT = 20
# Due posts are listed this many per query when a run is cut into slices.
LISTING_PAGE_SIZE = 5000
# After a tier run lost its database, `run` tries the tier again this much later.
DATABASE_RETRY_S = 30.0


def tiers_in_age_range(
    tiers: Sequence[Tier], min_age: timedelta | None, max_age: timedelta | None
) -> tuple[Tier, ...]:
    """The tiers cut to `min_age <= age < max_age` (None: unbounded), empty ones dropped.

    A tier keeps its name and interval, so a range matching a tier exactly is that tier.
    """
    chosen = []
    for tier in tiers:
        low = tier.min_age if min_age is None else max(tier.min_age, min_age)
        high = tier.max_age if max_age is None else min(tier.max_age, max_age)
        if low < high:
            chosen.append(replace(tier, min_age=low, max_age=high))
    return tuple(chosen)


def tier_label(tiers: Iterable[Tier]) -> str:
    """How logs and results name the tiers of a run: `fresh`, or `fresh+recent`."""
    return "+".join(tier.name for tier in tiers) or "none"


class RunStatus(StrEnum):
    DONE = "done"
    # The embedded scheduler was stopped by a signal before the run's last batch.
    STOPPED = "stopped"
    # Another run of the tier was in progress; this one did nothing.
    SKIPPED = "skipped"


@dataclass(slots=True)
class TierRunSummary:
    """What one tier run did."""

    tier: str
    now: datetime
    status: RunStatus = RunStatus.DONE
    checks: int = 0
    saved: int = 0
    rejected: int = 0
    batches: int = 0
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)

    def add(self, stats: CollectionStats) -> None:
        self.checks += stats.checks
        self.saved += stats.saved
        self.rejected += stats.rejected
        self.batches += stats.batches
        room = REJECTIONS_KEPT - len(self.messages)
        self.messages.extend(str(rejection) for rejection in stats.rejections[:room])

    def as_result(self) -> dict[str, Any]:
        """The summary as a JSON-friendly dict (a Celery task result)."""
        return {
            "tier": self.tier,
            "now": self.now.isoformat(),
            "status": self.status.value,
            "checks": self.checks,
            "saved": self.saved,
            "rejected": self.rejected,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "rejections": list(self.messages),
        }


def log_tier_run(summary: TierRunSummary) -> None:
    """One log line per tier run and, for a finished one, the Prometheus cycle metrics
    (the API's /metrics shows them when it runs in the same process or multiprocess
    directory)."""
    if summary.status == RunStatus.DONE:
        # Imported here: the metrics module pulls in the API package, which a worker
        # that never records a cycle does not need.
        from smart_retention.api.metrics import record_cycle

        record_cycle(
            summary.tier,
            seconds=summary.seconds,
            rejected=summary.rejected,
            finished_at=datetime.now(UTC),
        )
    log.info(
        "smart-collect tier=%s status=%s checks=%d saved=%d rejected=%d seconds=%.3f",
        summary.tier,
        summary.status,
        summary.checks,
        summary.saved,
        summary.rejected,
        summary.seconds,
    )


def register_discovered(
    engine: Engine, source: Source, now: datetime, batch_size: int, stop: Event | None = None
) -> int:
    """Register the posts `source` announces at `now`, `batch_size` per transaction.

    Raises RunStopped if `stop` is set between two of them: a source may announce
    millions of posts, and the registered ones stay (registering is idempotent).
    """
    discovered = 0
    for infos in chunked(source.discover(now), batch_size):
        if stop is not None and stop.is_set():
            raise RunStopped
        with engine.begin() as connection:
            repository.register_posts(connection, infos, now)
        discovered += len(infos)
    return discovered


def plan_slices(
    engine: Engine, tiers: Sequence[Tier], now: datetime, posts_per_slice: int
) -> list[Tier]:
    """The due posts of `tiers` at `now`, cut into age slices of about `posts_per_slice`.

    A slice is a tier narrowed to a publication range: (lower, upper] of posted_at, as
    min_age/max_age measured from `now`. The slices of a tier cover its whole range and
    do not overlap, so each due post is in exactly one slice, including posts registered
    after the listing. Posts published at the same instant stay in one slice.
    """
    slices: list[Tier] = []
    for window in due_windows(now, tiers):
        # TODO: this holds one tier's due publication times (~50 bytes a post) to cut
        # slices; a due-posts listing in posted_at order from storage would let them be
        # cut while streaming, keeping memory flat however large a tier grows.
        posted = sorted(
            post.posted_at
            for page in repository.iter_due_posts(engine, [window], LISTING_PAGE_SIZE)
            for post in page
        )
        bounds = slice_bounds(
            window.posted_after, window.posted_at_or_before, posted, posts_per_slice
        )
        slices.extend(
            replace(window.tier, min_age=now - upper, max_age=now - lower)
            for lower, upper in bounds
        )
    return slices


def slice_bounds(
    lower: datetime, upper: datetime, posted: Sequence[datetime], size: int
) -> list[tuple[datetime, datetime]]:
    """(lower, upper] cut after every `size`-th of the sorted `posted`; pure.

    A cut never falls between equal moments, so a slice may hold more than `size`. No
    posts: no slices (nothing is due in the range).
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    bounds = []
    index = size - 1
    while index < len(posted) - 1:
        while index + 1 < len(posted) and posted[index + 1] == posted[index]:
            index += 1
        if index >= len(posted) - 1:
            break
        bounds.append((lower, posted[index]))
        lower = posted[index]
        index += size
    if posted:
        bounds.append((lower, upper))
    return bounds


class RunStopped(Exception):
    """Raised inside a batch when a stop was asked for before it fetched anything."""


class _CollectOnly:
    """A source as seen by a slice: discovery was done by the run; fetches stop on request.

    A stop raises before the batch fetches, so that batch rolls back having done nothing
    and the batches before it stay committed: the run stops between batches.
    """

    def __init__(self, source: Source, stop: Event | None) -> None:
        self.source = source
        self.stop = stop

    def discover(self, now: datetime) -> list[PostInfo]:
        return []

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        if self.stop is not None and self.stop.is_set():
            raise RunStopped
        return self.source.fetch(keys, now)


def collect_slice(
    engine: Engine,
    source: Source,
    slice_tier: Tier,
    now: datetime,
    batch_size: int,
    stop: Event | None = None,
) -> CollectionStats:
    """One collection cycle over the due posts of one slice, batch by batch.

    Raises RunStopped if `stop` is set before a batch fetches.
    """
    collector = Collector(
        engine, _CollectOnly(source, stop), tiers=[slice_tier], batch_size=batch_size
    )
    return collector.run_cycle(now)


def run_tier(
    engine: Engine,
    source: Source,
    tiers: Sequence[Tier],
    now: datetime,
    batch_size: int,
    stop: Event | None = None,
) -> TierRunSummary:
    """One run of `tiers` at `now` in this process, stopping between batches if asked.

    Slices of one batch each, so the summary counts every committed batch.
    """
    started = time.perf_counter()
    summary = TierRunSummary(tier=tier_label(tiers), now=now)
    try:
        register_discovered(engine, source, now, batch_size, stop)
        for slice_tier in plan_slices(engine, tiers, now, batch_size):
            summary.add(collect_slice(engine, source, slice_tier, now, batch_size, stop))
    except RunStopped:
        pass
    except DBAPIError as error:
        if not _database_unreachable(error):
            raise
        summary.seconds = time.perf_counter() - started
        raise TierRunCutShort(summary, error) from error
    if stop is not None and stop.is_set():
        summary.status = RunStatus.STOPPED
    summary.seconds = time.perf_counter() - started
    log_tier_run(summary)
    return summary


@dataclass(slots=True)
class SchedulerSummary:
    """What `smart-retention run` did before it stopped."""

    runs: int = 0
    checks: int = 0
    saved: int = 0
    rejected: int = 0
    seconds: float = 0.0
    stopped: bool = False
    # Tier runs cut short by a lost or unreachable database, each tried again later.
    failed_runs: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def add(self, run: TierRunSummary, *, cut_short: bool = False) -> None:
        """Count `run`'s committed checks; a run cut short is not counted as a run."""
        if cut_short:
            self.failed_runs += 1
        else:
            self.runs += 1
            self.by_tier[run.tier] = self.by_tier.get(run.tier, 0) + 1
        self.checks += run.checks
        self.saved += run.saved
        self.rejected += run.rejected
        self.messages.extend(run.messages[: REJECTIONS_KEPT - len(self.messages)])


class EmbeddedScheduler:
    """Runs each tier at its interval in this process until `stop` is set.

    Every tier is run once at the start; after a run, the tier's next deadline is its
    previous one plus its interval (a run that overran its interval is followed by the
    next one at once, not by a burst of missed ones). `now` for a run is the wall clock
    when it starts; the waits use the monotonic clock, so a clock change moves nothing.
    """

    def __init__(
        self,
        engine: Engine,
        source: Source,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        stop: Event | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_run: Callable[[TierRunSummary], None] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.batch_size = batch_size
        self.tiers = tuple(tiers)
        self.stop = stop or Event()
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self.on_run = on_run

    def run(self, once: bool = False) -> SchedulerSummary:
        """Run until stopped; with `once`, run every tier once and return."""
        started = self.monotonic()
        summary = SchedulerSummary()
        deadlines = {tier.name: started for tier in self.tiers}
        while not self.stop.is_set():
            for tier in self.tiers:
                if self.stop.is_set() or deadlines[tier.name] > self.monotonic():
                    continue
                try:
                    run = run_tier(
                        self.engine,
                        self.source,
                        [tier],
                        self.wall_clock(),
                        self.batch_size,
                        self.stop,
                    )
                except TierRunCutShort as cut:
                    if once:
                        raise cut.error from None
                    # A daemon outlives a database restart: what was committed stays (and
                    # is counted), the tier's posts are still due, and the tier is tried
                    # again shortly.
                    log.warning(
                        "smart-run.tier_failed tier=%s checks=%d retry_in_s=%.0f error=%r",
                        tier.name,
                        cut.summary.checks,
                        DATABASE_RETRY_S,
                        str(cut.error.orig).strip(),
                    )
                    summary.add(cut.summary, cut_short=True)
                    deadlines[tier.name] = self.monotonic() + DATABASE_RETRY_S
                    continue
                summary.add(run)
                if self.on_run is not None:
                    self.on_run(run)
                interval = tier.interval.total_seconds()
                deadlines[tier.name] = max(deadlines[tier.name] + interval, self.monotonic())
            if once:
                break
            self.stop.wait(max(0.0, min(deadlines.values()) - self.monotonic()))
        summary.stopped = self.stop.is_set()
        summary.seconds = self.monotonic() - started
        log.info(
            "smart-run.done runs=%d failed_runs=%d checks=%d saved=%d rejected=%d stopped=%s "
            "seconds=%.3f",
            summary.runs,
            summary.failed_runs,
            summary.checks,
            summary.saved,
            summary.rejected,
            summary.stopped,
            summary.seconds,
        )
        return summary


class TierRunCutShort(Exception):
    """A tier run ended by a lost or unreachable database, with what it committed."""

    def __init__(self, summary: TierRunSummary, error: DBAPIError) -> None:
        super().__init__(str(error))
        self.summary = summary
        self.error = error


def _database_unreachable(error: DBAPIError) -> bool:
    """A lost connection, or a server that does not answer: worth waiting out. Anything
    else (a constraint, a missing table) would fail the same way again."""
    return error.connection_invalidated or isinstance(error, OperationalError)


@contextmanager
def stop_on_signals(stop: Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set `stop`; a second SIGINT interrupts at once.

    Only the main thread may install handlers; the previous ones come back on exit.
    """

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("smart-run.stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
