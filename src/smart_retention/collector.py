"""One collection cycle: due posts -> fetch -> validate -> decide -> write.

The collector joins the pure parts (schedule, policy) to storage and a source. Its
transaction boundary is the batch: a batch's snapshots and check rows are written in one
transaction, so a check is never counted without its snapshot nor the reverse
(DESIGN.md invariant 1). A rejected observation is left out of its batch and reported;
the rest of the batch goes on, and nothing stored before is touched.
"""

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from smart_retention import policy
from smart_retention.observation import Observation, ObservationError, PostKey, Rejection
from smart_retention.policy import DEFAULT_PROFILE, Decision, Profile
from smart_retention.schedule import DEFAULT_TIERS, DueWindow, Tier, due_windows, earliest_due
from smart_retention.sources import FetchResult, Source
from smart_retention.storage import channels as channel_store
from smart_retention.storage import outcomes, repository
from smart_retention.storage.engine import write_transaction
from smart_retention.storage.repository import ClaimedPost, LockedPost, PostState

log = logging.getLogger(__name__)
T = TypeVar("T")

# Posts per batch, i.e. per transaction. Each batch costs a few milliseconds of fixed
# work on either side (statements to plan, COPYs to start, a commit to flush), so
# larger batches go faster (bench/collect.py: 100,000 posts in 3.9 s at 500, 3.3 s at
# 2,000); but a live source fetches inside the transaction (Telegram: 100 posts per
# request at 1 request/s, so 20 s at 2,000), holding the batch's post locks that long.
DEFAULT_BATCH_SIZE = 2000
# Batches in flight at once on PostgreSQL, each on its own connection (SQLite: one).
DEFAULT_WORKERS = 2
# After registering this many new posts at once, refresh the planner's statistics.
ANALYZE_AFTER_NEW_POSTS = 10_000
# A batch whose database connection is lost is tried this many times in all.
BATCH_ATTEMPTS = 3
# The report keeps this many rejection messages; the count is always complete.
REJECTIONS_KEPT = 1000
SECONDS_PER_HOUR = 3600.0


@dataclass(slots=True)
class BracketStats:
    """Checks, saves and the retention error (observed views minus stored series)."""

    checks: int = 0
    saved: int = 0
    error_checks: int = 0
    error_sum: int = 0
    error_max: int = 0

    def add(self, stored: bool, views_error: int | None) -> None:
        self.checks += 1
        self.saved += stored
        if views_error is not None:
            self.error_checks += 1
            self.error_sum += views_error
            self.error_max = max(self.error_max, views_error)

    def merge(self, other: "BracketStats") -> None:
        self.checks += other.checks
        self.saved += other.saved
        self.error_checks += other.error_checks
        self.error_sum += other.error_sum
        self.error_max = max(self.error_max, other.error_max)

    @property
    def error_mean(self) -> float:
        return self.error_sum / self.error_checks if self.error_checks else 0.0


@dataclass(slots=True)
class CollectionStats:
    checks: int = 0
    saved: int = 0
    rejected: int = 0
    # Posts the source found gone, and posts left unfetched because a channel is deferred.
    missing: int = 0
    deferred: int = 0
    batches: int = 0
    seconds: float = 0.0
    reasons: Tally[str] = field(default_factory=Tally)
    by_bracket: dict[str, BracketStats] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    def record_rejection(self, rejection: Rejection) -> None:
        self.rejected += 1
        if len(self.rejections) < REJECTIONS_KEPT:
            self.rejections.append(rejection)

    def record_check(self, decision: Decision, views_error: int | None) -> None:
        self.checks += 1
        self.saved += decision.store
        self.reasons[decision.reason.value] += 1
        bracket = self.by_bracket.get(decision.bracket.name)
        if bracket is None:
            bracket = self.by_bracket[decision.bracket.name] = BracketStats()
        bracket.add(decision.store, views_error)

    def merge(self, other: "CollectionStats") -> None:
        self.checks += other.checks
        self.saved += other.saved
        self.missing += other.missing
        self.deferred += other.deferred
        self.batches += other.batches
        self.seconds += other.seconds
        self.reasons.update(other.reasons)
        for name, stats in other.by_bracket.items():
            self.by_bracket.setdefault(name, BracketStats()).merge(stats)
        self.rejected += other.rejected
        room = REJECTIONS_KEPT - len(self.rejections)
        self.rejections.extend(other.rejections[:room])


class PlannedCheck(NamedTuple):
    decision: Decision
    # The check row to write; with save_count 1 it also stands for the stored snapshot
    # (repository.write_checks).
    check_row: dict[str, Any]
    views_error: int | None


def plan_check(
    observation: Observation, state: PostState | None, profile: Profile = DEFAULT_PROFILE
) -> PlannedCheck:
    """The decision for one observation and the rows that record it. Pure."""
    now = observation.observed_at
    counters = observation.counters
    post_age = now - observation.posted_at
    if state is None:
        decision = policy.decide(counters, None, post_age, 0, None, profile)
    else:
        since_save = now - state.last_saved_at if state.last_saved_at is not None else None
        decision = policy.decide(
            counters,
            state.last_stored,
            post_age,
            state.checks_since_save,
            since_save,
            profile,
            state.policy_state,
        )

    # The rows are spelled out key by key: this runs once per check, and literal dicts
    # cost a fraction of merged ones (`**`) in a 100,000-post cycle.
    channel_id, msg_id = observation.key
    views, forwards, reactions, replies = counters
    store = decision.store
    if state is None:
        last_changed_at, last_saved_at, checks_since_save, stable_since = now, now, 0, None
    else:
        seen_views, seen_forwards, seen_reactions, seen_replies = state.last_observed
        # A counter the source left out (None) is unknown, not a change.
        changed = (
            (views is not None and views != seen_views)
            or (forwards is not None and forwards != seen_forwards)
            or (reactions is not None and reactions != seen_reactions)
            or (replies is not None and replies != seen_replies)
        )
        last_changed_at = now if changed else state.last_changed_at
        last_saved_at = now if store else state.last_saved_at
        checks_since_save = 0 if store else state.checks_since_save + 1
        stable_since = None if store else (state.stable_since or now)
    check_row = {
        "channel_id": channel_id,
        "msg_id": msg_id,
        "last_checked_at": now,
        "last_changed_at": last_changed_at,
        "last_saved_at": last_saved_at,
        "check_count": 1,
        "save_count": int(store),
        "checks_since_save": checks_since_save,
        "stable_since": stable_since,
        "post_age_hours": post_age.total_seconds() / SECONDS_PER_HOUR,
        "last_views": views,
        "last_forwards": forwards,
        "last_reactions": reactions,
        "last_replies": replies,
        "policy_state": decision.state,
        # An observation ends any run of misses and any deferral (storage/outcomes.py).
        "miss_count": 0,
        "missing_since": None,
        "deferred_until": None,
    }
    return PlannedCheck(decision, check_row, _views_error(counters.views, decision, state))


def _views_error(observed: int | None, decision: Decision, state: PostState | None) -> int | None:
    """How far the stored series is from what this check saw, in views."""
    if observed is None:
        return None
    if decision.store:
        return 0
    stored = state.last_stored.views if state and state.last_stored else None
    return abs(observed - stored) if stored is not None else None


class Collector:
    def __init__(
        self,
        engine: Engine,
        source: Source,
        *,
        profile: Profile = DEFAULT_PROFILE,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.engine = engine
        self.source = source
        self.profile = profile
        self.tiers = tuple(tiers)
        self.batch_size = batch_size
        self.workers = workers
        self._fetch_lock = threading.Lock()

    def run_cycle(self, now: datetime, tier_names: Sequence[str] | None = None) -> CollectionStats:
        """Register newly discovered posts, then check every due post, batch by batch."""
        started = time.perf_counter()
        stats = CollectionStats()
        discovered = 0
        # Streamed a batch at a time: a source may announce a million posts at once.
        for infos in chunked(self.source.discover(now), self.batch_size):
            with self.engine.begin() as connection:
                repository.register_posts(connection, infos, now)
            discovered += len(infos)
        if discovered >= ANALYZE_AFTER_NEW_POSTS:
            with self.engine.begin() as connection:
                repository.refresh_planner_statistics(connection)
        windows = due_windows(now, self.tiers, tier_names)
        workers = self._workers()
        if workers == 1:
            stats.merge(self._work_through(_DuePages(windows, self.batch_size), now))
        else:
            stats.merge(self._work_through_in_parallel(windows, now, workers))
        stats.seconds = time.perf_counter() - started
        log.debug(
            "collect.cycle now=%s discovered=%d checks=%d saved=%d rejected=%d batches=%d "
            "workers=%d seconds=%.3f",
            now.isoformat(),
            discovered,
            stats.checks,
            stats.saved,
            stats.rejected,
            stats.batches,
            workers,
            stats.seconds,
        )
        return stats

    def _workers(self) -> int:
        # SQLite takes one writer at a time (and an in-memory database is one per
        # thread), so batches in parallel would only wait for each other there.
        return 1 if self.engine.dialect.name == "sqlite" else self.workers

    def _work_through_in_parallel(
        self, windows: Sequence[DueWindow], now: datetime, workers: int
    ) -> CollectionStats:
        """Batches on `workers` connections at once, each in its own transaction: this
        thread is one worker, helper threads the others.

        One batch's database work (its statements and commit, run by the server) overlaps
        another's Python work (deciding, encoding rows), which is what keeps a 2-core
        machine busy. The helpers start with the first full page: a cycle of one batch
        (most cycles of a replay, or of a quiet tier) runs without them. The first error
        stops every worker after its current batch and is raised once they have all
        stopped; Ctrl-C is raised at once.
        """
        helpers: list[_Helper] = []

        def start_helpers() -> None:
            for number in range(1, workers):
                helpers.append(_Helper(self, pages, now, number))
                helpers[-1].start()

        pages = _DuePages(windows, self.batch_size, on_full_page=start_helpers)
        try:
            stats = self._work_through(pages, now)
            for helper in helpers:
                helper.join()
        except KeyboardInterrupt:
            # Not waiting for the helpers: their batches in flight commit, or roll back
            # with their connections if the process ends first (they are daemon threads).
            pages.stop()
            raise
        except BaseException:
            pages.stop()
            for helper in helpers:
                helper.join()
            raise
        for helper in helpers:
            if helper.error is not None:
                raise helper.error
            stats.merge(helper.stats)
        return stats

    def _work_through(self, pages: "_DuePages", now: datetime) -> CollectionStats:
        """Claim and check batches until no due post is left (or `pages` is stopped)."""
        stats = CollectionStats()
        try:
            while (batch_stats := self._collect_next_batch_retrying(pages, now)) is not None:
                stats.merge(batch_stats)
        except BaseException:
            pages.stop()
            raise
        return stats

    def _collect_next_batch_retrying(
        self, pages: "_DuePages", now: datetime
    ) -> CollectionStats | None:
        """`_collect_next_batch`, tried again when the database connection is lost.

        A lost connection rolls the batch back whole (nothing partial is committed) and
        releases its claim, so trying again claims the same page of posts afresh.
        """
        page: _Page | None = None
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            try:
                return self._collect_next_batch(pages, page, now)
            except _PageFailed as failed:
                error, page = failed.error, failed.page
                if not error.connection_invalidated or attempt == BATCH_ATTEMPTS:
                    raise error from None
                log.warning(
                    "collect.batch_retry attempt=%d page=%s error=%r",
                    attempt,
                    page,
                    str(error.orig).strip(),
                )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _collect_next_batch(
        self, pages: "_DuePages", page: "_Page | None", now: datetime
    ) -> CollectionStats | None:
        """Claim the next page of due posts (or `page` again), fetch them and write their
        checks, in one transaction; None when no due post is left.

        The claim comes first, so two collectors on the same tick (or a slow cycle and
        the next one) never fetch or check the same post twice.
        """
        started = time.perf_counter()
        stats = CollectionStats(batches=1)
        try:
            with write_transaction(self.engine) as connection:
                # TODO: the claim takes every due post, not only the source's channels'
                # (a channel filter in the claim and outlook queries is missing). Posts
                # the source cannot answer for (imported history, another source's) stay
                # due and are claimed every tick: a replay into a database that holds
                # other channels slows down and briefly locks a live collector's posts.
                locked = pages.lock(connection, page)
                if locked is None:
                    return None
                # Known from here on, so a failure below retries this page, not the next.
                page, locked_posts = locked
                claimed_posts = repository.claim_locked_posts(
                    connection, locked_posts, pages.windows
                )
                keys = [post.key for post in claimed_posts]
                # Every post on the page may have been checked meanwhile by another collector.
                fetched = self._fetch(keys, now) if keys else FetchResult()
                states = {post.key: post.state for post in claimed_posts if post.state is not None}
                self._write_checks(connection, fetched.observations, stats, states)
                if fetched.missing or fetched.deferred:
                    _write_outcomes(connection, claimed_posts, fetched, now, stats)
        except DBAPIError as error:
            raise _PageFailed(error, page) from error
        for rejection in fetched.rejections:
            stats.record_rejection(rejection)
        self._log_batch(stats, started)
        return stats

    def _fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        # A source is not required to be thread-safe: workers take turns at it.
        with self._fetch_lock:
            return self.source.fetch(keys, now)

    def next_due_at(self, now: datetime) -> datetime | None:
        """The earliest moment after `now`'s cycle when a post may be due (a lower bound)."""
        windows = due_windows(now, self.tiers)
        with self.engine.connect() as connection:
            outlooks = repository.tier_outlooks(connection, windows)
        return earliest_due(now, outlooks)

    def check(self, observations: Sequence[Observation]) -> CollectionStats:
        """Decide and write one batch of observations (one per post) in one transaction."""
        started = time.perf_counter()
        stats = CollectionStats(batches=1)
        with write_transaction(self.engine) as connection:
            self._write_checks(connection, observations, stats)
        self._log_batch(stats, started)
        return stats

    def _write_checks(
        self,
        connection: Connection,
        observations: Sequence[Observation],
        stats: CollectionStats,
        states: Mapping[PostKey, PostState] | None = None,
    ) -> None:
        """Decide every observation and write the batch's snapshots and check rows
        (`repository.write_checks`: a fixed number of statements per batch).

        `states` are the posts' check rows as already read under the claim; without
        them they are read here, in one statement.
        """
        check_rows: list[dict[str, Any]] = []
        if states is None:
            states = repository.load_post_states(connection, [o.key for o in observations])
        for observation in observations:
            state = states.get(observation.key)
            if state is not None and observation.observed_at <= state.last_checked_at:
                stats.record_rejection(_out_of_order(observation, state))
                continue
            planned = plan_check(observation, state, self.profile)
            stats.record_check(planned.decision, planned.views_error)
            check_rows.append(planned.check_row)
        repository.write_checks(connection, check_rows)

    @staticmethod
    def _log_batch(stats: CollectionStats, started: float) -> None:
        stats.seconds = time.perf_counter() - started
        log.debug(
            "collect.batch checks=%d saved=%d rejected=%d seconds=%.3f",
            stats.checks,
            stats.saved,
            stats.rejected,
            stats.seconds,
        )


class _Helper(threading.Thread):
    """A worker thread of `Collector._work_through_in_parallel`, keeping what it did or
    the error that stopped it."""

    def __init__(self, collector: Collector, pages: "_DuePages", now: datetime, number: int):
        super().__init__(name=f"collector-worker-{number}", daemon=True)
        self.collector, self.pages, self.now = collector, pages, now
        self.stats = CollectionStats()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.stats = self.collector._work_through(self.pages, self.now)
        except BaseException as error:  # handed to the calling thread, which raises it
            self.error = error


@dataclass(frozen=True, slots=True)
class _Page:
    """A claimed page of due posts: those after `after` (None: from the first), through
    `through`, in key order."""

    after: PostKey | None
    through: PostKey

    def __str__(self) -> str:
        return f"({self.after}, {self.through}]"


class _PageFailed(Exception):
    """A batch's database error, with the page it had claimed (None: the claim failed)."""

    def __init__(self, error: DBAPIError, page: _Page | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.page = page


class _DuePages:
    """Hands out consecutive pages of a cycle's due posts to the workers.

    The claim runs under a lock, so pages are disjoint and follow each other in key
    order, each locked in the claiming worker's transaction; the work after the claim
    (fetch, decide, write, commit) runs in parallel.
    """

    def __init__(
        self,
        windows: Sequence[DueWindow],
        batch_size: int,
        on_full_page: Callable[[], None] | None = None,
    ) -> None:
        self.windows = windows
        self._batch_size = batch_size
        # Called once, by the worker that claims the first full page (more may follow).
        self._on_full_page = on_full_page
        self._lock = threading.Lock()
        self._after: PostKey | None = None
        self._done = False

    def stop(self) -> None:
        with self._lock:
            self._done = True

    def lock(
        self, connection: Connection, page: _Page | None
    ) -> tuple[_Page, list[LockedPost]] | None:
        """Lock `page` again, or else the next page; None when no due post is left.

        The first half of a claim (`repository.lock_due_posts`). Only the locking
        statement runs under the lock, so the next worker's claim waits for it alone;
        the state read that completes the claim runs in parallel.
        """
        if page is None:
            with self._lock:
                if self._done:
                    return None
                locked = repository.lock_due_posts(
                    connection, self.windows, self._after, self._batch_size
                )
                if not locked:
                    self._done = True
                    return None
                page = _Page(self._after, locked[-1].key)
                self._after = page.through
                on_full_page = None
                if len(locked) < self._batch_size:
                    # A short page is the last: no due post is left after it but those
                    # another collector holds, which are its to check.
                    self._done = True
                else:
                    on_full_page, self._on_full_page = self._on_full_page, None
            if on_full_page is not None:
                on_full_page()
        else:
            locked = repository.lock_due_posts(
                connection, self.windows, page.after, self._batch_size, through=page.through
            )
        return page, locked


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _out_of_order(observation: Observation, state: PostState) -> Rejection:
    error = ObservationError(
        "observed_at",
        observation.observed_at.isoformat(),
        f"is not after this post's last check at {state.last_checked_at.isoformat()}",
        observation.key,
    )
    return Rejection.from_error(error)


def _write_outcomes(
    connection: Connection,
    claimed: Sequence[ClaimedPost],
    fetched: FetchResult,
    now: datetime,
    stats: CollectionStats,
) -> None:
    """Record what the source could not observe, in the batch's transaction: misses
    (no snapshot; polling ends after `fetched.max_misses` in a row) and deferrals (the
    channel and the check rows of its unfetched posts)."""
    posted = {post.key: post.posted_at for post in claimed}
    missing = {key: posted[key] for key in fetched.missing if key in posted}
    gone = outcomes.record_misses(connection, missing, now, fetched.max_misses)
    stats.missing += len(missing)
    if gone:
        log.info("collect.posts_gone count=%d first=%s", len(gone), gone[0])
    if fetched.deferred:
        handled = {o.key for o in fetched.observations} | set(missing)
        handled.update(r.post for r in fetched.rejections if r.post is not None)
        waiting = [k for k in posted if k.channel_id in fetched.deferred and k not in handled]
        outcomes.mark_deferred(connection, waiting, fetched.deferred)
        channel_store.defer_channels(connection, fetched.deferred)
        stats.deferred += len(waiting)
