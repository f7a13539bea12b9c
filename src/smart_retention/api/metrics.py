"""Prometheus metrics, served at /metrics.

Two sources, so each figure comes from where it is true:

- The database, read at scrape time, whichever process did the collecting:
  `smart_retention_checks_total` and `smart_retention_snapshots_stored_total` (sums over
  the check rows), posts by state (`active`, `stable`, all), and the channels a
  Telegram FloodWait defers (`smart_retention_channels_deferred`, and per channel
  `smart_retention_channel_deferred_until_timestamp_seconds`).
- The process that ran a collection cycle, through `record_cycle`: rows rejected, cycle
  duration per tier, and the time of the last successful cycle per tier. Within one
  process these live in memory. When collection runs in other processes (Celery workers,
  `smart-retention run`), give every process the same PROMETHEUS_MULTIPROC_DIR: each
  writes its values there, and the API merges them (prometheus-client's multiprocess mode).
"""

import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from smart_retention import analysis

log = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Cycle durations, in seconds: a fresh tier of a few posts up to a weekly tier of millions.
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

ROWS_REJECTED = Counter(
    "smart_retention_rows_rejected",
    "Observations rejected by validation during collection cycles.",
    ["tier"],
    registry=None,
)
CYCLE_SECONDS = Histogram(
    "smart_retention_cycle_seconds",
    "Duration of a collection cycle, per tier.",
    ["tier"],
    buckets=CYCLE_BUCKETS,
    registry=None,
)
LAST_SUCCESS = Gauge(
    "smart_retention_last_successful_cycle_timestamp_seconds",
    "Unix time at which the last successful collection cycle of a tier ended.",
    ["tier"],
    multiprocess_mode="max",
    registry=None,
)
CYCLE_METRICS = (ROWS_REJECTED, CYCLE_SECONDS, LAST_SUCCESS)


def record_cycle(tier: str, *, seconds: float, rejected: int, finished_at: datetime) -> None:
    """Record one successful collection cycle of `tier`; the collecting process calls it."""
    ROWS_REJECTED.labels(tier=tier).inc(rejected)
    CYCLE_SECONDS.labels(tier=tier).observe(seconds)
    LAST_SUCCESS.labels(tier=tier).set(finished_at.timestamp())


class DatabaseTotals(Collector):
    """Checks, saves and posts, read from the database at every scrape (one statement)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "smart_retention_database_up", "1 when the last scrape could read the database."
        )
        try:
            with self.engine.connect() as connection:
                counts = analysis.totals(connection, self.clock())
        except SQLAlchemyError as error:
            log.warning("metrics.database_unreadable error=%s", type(error).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield CounterMetricFamily(
            "smart_retention_checks", "Checks ever made (sum of check_count).", counts.checks
        )
        yield CounterMetricFamily(
            "smart_retention_snapshots_stored",
            "Snapshots stored by checks (sum of save_count).",
            counts.saved,
        )
        by_state = GaugeMetricFamily(
            "smart_retention_posts", "Posts by state (see docs/api.md).", labels=["state"]
        )
        by_state.add_metric(["all"], counts.posts)
        by_state.add_metric(["active"], counts.active)
        by_state.add_metric(["stable"], counts.stable)
        yield by_state


class ChannelDeferrals(Collector):
    """Channels a rate limit (Telegram's FloodWait) keeps collection away from, read from
    the database at every scrape, so a deferral made by any worker shows."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        # Imported here: storage.channels is only needed when the gauge is scraped.
        from smart_retention.storage.channels import deferred_channels

        try:
            with self.engine.connect() as connection:
                deferred = deferred_channels(connection, self.clock())
        except SQLAlchemyError:
            return  # smart_retention_database_up already says the database is unreadable
        count = GaugeMetricFamily(
            "smart_retention_channels_deferred",
            "Tracked channels whose collection is deferred by a rate limit right now.",
        )
        count.add_metric([], len(deferred))
        yield count
        until = GaugeMetricFamily(
            "smart_retention_channel_deferred_until_timestamp_seconds",
            "Unix time until which collection from the channel is deferred (FloodWait).",
            labels=["channel_id", "username"],
        )
        for channel in deferred:
            assert channel.deferred_until is not None
            until.add_metric(
                [str(channel.channel_id), channel.username or ""],
                channel.deferred_until.timestamp(),
            )
        yield until


def build_registry(engine: Engine, clock: Callable[[], datetime]) -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        MultiProcessCollector(registry)
    else:
        for metric in CYCLE_METRICS:
            registry.register(metric)
    registry.register(DatabaseTotals(engine, clock))
    registry.register(ChannelDeferrals(engine, clock))
    return registry
