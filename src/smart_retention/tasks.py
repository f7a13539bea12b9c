"""The Celery app: collection by tier on workers, driven by beat, and the cleanup.

Run with `celery -A smart_retention.tasks worker --loglevel=INFO` and
`celery -A smart_retention.tasks beat`. Broker and result backend come from
`SMART_RETENTION_BROKER_URL` / `SMART_RETENTION_RESULT_BACKEND` (Redis).

A tier run, `smart_collect_post_metrics`, is three kinds of task:

1. The tier task takes the tier's lock, registers the posts the source announces, lists
   the due posts and cuts the tier into age slices of about `collect_chunk_size` due
   posts (scheduler.plan_slices); it sends one chunk task (`collect_chunk`) per slice
   and replaces itself with a chord of them, so its result is the whole run's summary.
2. Each chunk runs one collector cycle over its slice on whichever worker is free:
   claim, fetch and write, one transaction per batch.
3. `finish_tier_run` adds the chunks up, logs the run's one line and frees the lock
   (`abort_tier_run` frees it if a chunk failed for good).

What keeps this safe, and what each piece is for:

- Correctness never depends on the lock: every batch claims its posts (FOR UPDATE SKIP
  LOCKED / BEGIN IMMEDIATE) and checks due-ness again under the claim, so a redelivered
  or duplicated chunk finds the work done and does nothing. Chunks use the run's `now`.
- The lock (one Redis key per tier, the run's id as token, `SET NX` with a time-to-live)
  keeps a second run of a tier from starting while one is in progress: it exits at once
  and says so. Its time-to-live outlasts the time limit of every task of the run and ends
  before the tier's next beat tick, so a run killed with its lock held costs one tick at
  most. A redelivered tier task holds its own token and carries on.
- Tasks are acknowledged late: a worker killed mid-run leaves its messages unacked and the
  broker hands them out again after the visibility timeout, which is longer than the
  longest task so a running task is never handed out twice. A chunk whose worker process
  died is put back at once (reject_on_worker_lost); chunks expire at the run's deadline,
  so neither a poison chunk nor a stale redelivery outlives its run.
"""

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import redis
from celery import Celery, Task, chord
from celery.signals import worker_process_shutdown, worker_shutdown
from redis.exceptions import LockError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from smart_retention.config import Settings, load_settings
from smart_retention.errors import SmartRetentionError
from smart_retention.schedule import DEFAULT_TIERS, Tier
from smart_retention.scheduler import (
    REJECTIONS_KEPT,
    RunStatus,
    TierRunSummary,
    collect_slice,
    log_tier_run,
    plan_slices,
    register_discovered,
    tier_label,
    tiers_in_age_range,
)
from smart_retention.sources import Source
from smart_retention.sources.factory import build_source
from smart_retention.storage.engine import make_engine

log = logging.getLogger(__name__)

COLLECT_TASK = "smart_retention.tasks.smart_collect_post_metrics"
CHUNK_TASK = "smart_retention.tasks.collect_chunk"
FINISH_TASK = "smart_retention.tasks.finish_tier_run"
ABORT_TASK = "smart_retention.tasks.abort_tier_run"
CLEANUP_TASK = "smart_retention.tasks.cleanup_duplicate_post_metrics"

# Time limits. A collection task (listing a tier, or one chunk) must end within the
# shortest tier interval (10 min) less the lock margin; the soft limit lets it stop
# between batches first. The cleanup is resumable, so its limit only bounds one run.
COLLECT_SOFT_TIME_LIMIT_S = 480
COLLECT_TIME_LIMIT_S = 540
CLEANUP_SOFT_TIME_LIMIT_S = 3300
CLEANUP_TIME_LIMIT_S = 3600
LONGEST_TASK_S = max(COLLECT_TIME_LIMIT_S, CLEANUP_TIME_LIMIT_S)
# The broker hands an unacknowledged message out again after this long; twice the
# longest task, so a task still running is never given to a second worker.
VISIBILITY_TIMEOUT_S = 2 * LONGEST_TASK_S
# A tier's lock lives until its next beat tick less this margin (and never less than a
# collection task's time limit plus it), so a killed run blocks at most one tick.
LOCK_MARGIN_S = 30
# A beat entry expires after this share of its interval: a missed tick is dropped,
# not piled up behind the next one.
BEAT_EXPIRES_SHARE = 0.9
# Retries on a lost database or broker connection, with exponential backoff.
MAX_RETRIES = 3
RETRY_BACKOFF_MAX_S = 60
RESULT_EXPIRES = timedelta(days=1)
LOCK_PREFIX = "smart-retention:lock:"


class TaskConfigurationError(SmartRetentionError):
    """A task was called with arguments that name no work (e.g. an empty age range)."""


class CleanupUnavailable(SmartRetentionError):
    """The cleanup module cannot be imported in this worker."""


def create_app(settings: Settings) -> Celery:
    """The Celery app for `settings`: the module's `app`, or a client in tests."""
    celery_app = Celery("smart_retention")
    celery_app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend or settings.broker_url,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        timezone="UTC",
        enable_utc=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        # One message at a time per worker process: chunks go to whoever is free.
        worker_prefetch_multiplier=1,
        # `smart-retention deploy` broadcasts pool_restart so that worker processes drop
        # connections opened before a migration; workers refuse it unless this is on.
        worker_pool_restarts=True,
        result_expires=RESULT_EXPIRES,
        result_extended=True,
        beat_schedule=build_beat_schedule(DEFAULT_TIERS),
    )
    return celery_app


def age_range_kwargs(tier: Tier) -> dict[str, float]:
    """The task's age arguments for `tier`: whole days where they fit, else hours."""
    bounds = {"min": tier.min_age, "max": tier.max_age}
    if all(bound % timedelta(days=1) == timedelta(0) for bound in bounds.values()):
        return {f"{side}_age_days": bound / timedelta(days=1) for side, bound in bounds.items()}
    return {f"{side}_age_hours": bound / timedelta(hours=1) for side, bound in bounds.items()}


def build_beat_schedule(tiers: Sequence[Tier]) -> dict[str, dict[str, Any]]:
    """One beat entry per tier, `smart-collect-<tier>-posts`, every tier interval."""
    schedule = {}
    for tier in tiers:
        interval_s = tier.interval.total_seconds()
        schedule[f"smart-collect-{tier.name}-posts"] = {
            "task": COLLECT_TASK,
            "schedule": interval_s,
            "kwargs": age_range_kwargs(tier),
            "options": {"expires": interval_s * BEAT_EXPIRES_SHARE},
        }
    return schedule


def run_ttl_s(tiers: Sequence[Tier]) -> float:
    """How long a run's lock lives: see LOCK_MARGIN_S."""
    shortest = min(tier.interval.total_seconds() for tier in tiers)
    return max(shortest - LOCK_MARGIN_S, COLLECT_TIME_LIMIT_S + LOCK_MARGIN_S)


settings = load_settings()
app = create_app(settings)


# --- per-process resources: built on first use, after a worker process has forked ---


@cache
def _engine() -> Engine:
    return make_engine(settings.database_url)


@cache
def _source() -> Source:
    return build_source(settings.source)


@worker_process_shutdown.connect  # a prefork pool's child process
@worker_shutdown.connect  # the solo and thread pools run tasks in the worker itself
def close_source(**_kwargs: Any) -> None:
    """A worker process that built a live source closes it (its connection and event
    loop) on the way out. A thread pool shares the one source: its Telegram requests
    take turns (sources/telegram/source.py)."""
    if _source.cache_info().currsize:
        close = getattr(_source(), "close", None)
        if close is not None:
            close()


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


# --- the tier lock ---


@dataclass(frozen=True, slots=True)
class TierLock:
    """One Redis lock per tier of a run, all taken or none; the run id is the token."""

    tiers: tuple[str, ...]
    token: str
    ttl_s: float

    def _locks(self) -> list[redis.lock.Lock]:
        return [
            _redis().lock(f"{LOCK_PREFIX}{name}", timeout=self.ttl_s, thread_local=False)
            for name in sorted(self.tiers)
        ]

    def acquire(self) -> str | None:
        """Take every lock; None on success, else the token of the run holding one."""
        taken = []
        for lock in self._locks():
            if lock.acquire(blocking=False, token=self.token) or self._ours(lock):
                taken.append(lock)
                continue
            holder = _redis().get(lock.name)
            for mine in taken:
                self._release(mine)
            return holder.decode() if holder is not None else "(expired just now)"
        return None

    def release(self) -> None:
        for lock in self._locks():
            self._release(lock)

    def _ours(self, lock: redis.lock.Lock) -> bool:
        """A redelivered or retried run finds its own token and takes the lock anew."""
        if _redis().get(lock.name) != self.token.encode():
            return False
        lock.local.token = self.token.encode()
        try:
            lock.reacquire()
        except LockError:
            return False
        return True

    def _release(self, lock: redis.lock.Lock) -> None:
        lock.local.token = self.token.encode()
        try:
            lock.release()
        except LockError:
            # Expired, and maybe taken by the next run: that lock is not ours to free.
            log.warning("smart-collect.lock-lost lock=%s run=%s", lock.name, self.token)


def _run_lock(run: dict[str, Any]) -> TierLock:
    return TierLock(tuple(run["tiers"]), run["id"], run["lock_ttl_s"])


MICROSECOND = timedelta(microseconds=1)


def _slice_message(slice_tier: Tier) -> dict[str, Any]:
    """A slice as JSON, exact to the microsecond."""
    return {
        "name": slice_tier.name,
        "min_age_us": slice_tier.min_age // MICROSECOND,
        "max_age_us": slice_tier.max_age // MICROSECOND,
        "interval_us": slice_tier.interval // MICROSECOND,
    }


def _slice_from_message(message: dict[str, Any]) -> Tier:
    return Tier(
        message["name"],
        message["min_age_us"] * MICROSECOND,
        message["max_age_us"] * MICROSECOND,
        message["interval_us"] * MICROSECOND,
    )


def _age(hours: float | None, days: float | None, side: str) -> timedelta | None:
    if hours is not None and days is not None:
        raise TaskConfigurationError(
            f"{side}_age_hours={hours} and {side}_age_days={days}: give one of them"
        )
    if hours is not None:
        return timedelta(hours=hours)
    return None if days is None else timedelta(days=days)


# --- the tasks ---

COLLECT_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (OperationalError, redis.ConnectionError),
    "max_retries": MAX_RETRIES,
    "retry_backoff": True,
    "retry_backoff_max": RETRY_BACKOFF_MAX_S,
    "soft_time_limit": COLLECT_SOFT_TIME_LIMIT_S,
    "time_limit": COLLECT_TIME_LIMIT_S,
}


@app.task(name=COLLECT_TASK, **COLLECT_OPTIONS)
def smart_collect_post_metrics(
    self: Task,
    min_age_hours: float | None = None,
    max_age_hours: float | None = None,
    max_age_days: float | None = None,
    min_age_days: float | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """One collection cycle over the due posts aged in [min_age, max_age).

    `now` (ISO-8601 with a time zone) fixes the moment of the run, e.g. to replay one;
    by default it is the time the task starts.
    """
    started = time.time()
    min_age = _age(min_age_hours, min_age_days, "min")
    max_age = _age(max_age_hours, max_age_days, "max")
    tiers = tiers_in_age_range(DEFAULT_TIERS, min_age, max_age)
    if not tiers:
        raise TaskConfigurationError(f"no tier has posts aged from {min_age} to {max_age}")
    moment = datetime.fromisoformat(now) if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise TaskConfigurationError(f"now={now!r} has no time zone")
    run = {
        "id": self.request.id or uuid.uuid4().hex,
        "tier": tier_label(tiers),
        "tiers": [tier.name for tier in tiers],
        "now": moment.isoformat(),
        "started_at": started,
        "lock_ttl_s": run_ttl_s(tiers),
    }
    lock = _run_lock(run)
    holder = lock.acquire()
    if holder is not None:
        log.warning(
            "smart-collect tier=%s status=skipped reason=in-progress running=%s",
            run["tier"],
            holder,
        )
        return {
            **TierRunSummary(run["tier"], moment, RunStatus.SKIPPED).as_result(),
            "running": holder,
        }
    try:
        slices = _plan(tiers, moment)
    except BaseException:
        lock.release()
        raise
    if not slices:
        return _finish(run, [])
    # The run's deadline: a chunk not started by then is dropped (the lock is gone too).
    expires = datetime.fromtimestamp(started + run["lock_ttl_s"], UTC)
    header = [collect_chunk.s(run, _slice_message(s)).set(expires=expires) for s in slices]
    body = finish_tier_run.s(run).on_error(abort_tier_run.s(run=run))
    log.debug("smart-collect.fan-out tier=%s chunks=%d", run["tier"], len(slices))
    return self.replace(chord(header, body))


def _plan(tiers: Sequence[Tier], now: datetime) -> list[Tier]:
    """Register new posts, then cut the due posts into slices of `collect_chunk_size`."""
    engine = _engine()
    register_discovered(engine, _source(), now, settings.batch_size)
    return plan_slices(engine, tiers, now, settings.collect_chunk_size)


@app.task(name=CHUNK_TASK, reject_on_worker_lost=True, **COLLECT_OPTIONS)
def collect_chunk(self: Task, run: dict[str, Any], slice_message: dict[str, Any]) -> dict[str, Any]:
    """Collect one slice of a run at the run's `now`, batch by batch."""
    now = datetime.fromisoformat(run["now"])
    slice_tier = _slice_from_message(slice_message)
    stats = collect_slice(_engine(), _source(), slice_tier, now, settings.batch_size)
    return {
        "checks": stats.checks,
        "saved": stats.saved,
        "rejected": stats.rejected,
        "batches": stats.batches,
        "messages": [str(rejection) for rejection in stats.rejections[:REJECTIONS_KEPT]],
    }


@app.task(name=FINISH_TASK, acks_late=True, max_retries=MAX_RETRIES)
def finish_tier_run(results: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The chord's body: add the chunks up, log the run, free the tier."""
    return _finish(run, results if isinstance(results, list) else [results])


def _finish(run: dict[str, Any], chunk_results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = TierRunSummary(run["tier"], datetime.fromisoformat(run["now"]))
    for result in chunk_results:
        summary.checks += result["checks"]
        summary.saved += result["saved"]
        summary.rejected += result["rejected"]
        summary.batches += result["batches"]
        summary.messages.extend(result["messages"][: REJECTIONS_KEPT - len(summary.messages)])
    summary.seconds = time.time() - run["started_at"]
    log_tier_run(summary)
    _run_lock(run).release()
    return {**summary.as_result(), "chunks": len(chunk_results)}


@app.task(name=ABORT_TASK, acks_late=True, max_retries=MAX_RETRIES)
def abort_tier_run(request: Any, exc: BaseException, traceback: Any, run: dict[str, Any]) -> None:
    """A chunk failed for good: the run is over, so free its tier for the next one."""
    log.error("smart-collect tier=%s status=failed run=%s error=%r", run["tier"], run["id"], exc)
    _run_lock(run).release()


@app.task(
    name=CLEANUP_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    max_retries=MAX_RETRIES,
    retry_backoff=True,
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    soft_time_limit=CLEANUP_SOFT_TIME_LIMIT_S,
    time_limit=CLEANUP_TIME_LIMIT_S,
)
def cleanup_duplicate_post_metrics(dry_run: bool = True, batch_size: int = 10000) -> dict[str, Any]:
    """Remove stored snapshots that repeat the one before them, and report (cleanup.py).

    The cleanup takes its own lock in the database (one run at a time) and resumes where a
    killed or timed-out run stopped, so a redelivered or retried task is safe.
    """
    # Imported when a cleanup runs: collection workers need nothing of it.
    try:
        from smart_retention import cleanup
    except ImportError as error:
        raise CleanupUnavailable(f"the cleanup cannot be imported: {error}") from None
    try:
        report = cleanup.run_cleanup(_engine(), dry_run=dry_run, batch_size=batch_size)
    except cleanup.CleanupAlreadyRunning as error:
        log.warning("smart-cleanup status=skipped reason=in-progress detail=%r", str(error))
        return {"status": RunStatus.SKIPPED.value, "reason": str(error)}
    return {"status": RunStatus.DONE.value, **report.as_json()}
