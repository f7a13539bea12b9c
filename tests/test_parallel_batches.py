"""Two batches in flight in one collector (PostgreSQL): the same rows as one at a time,
and an error or Ctrl-C in either worker leaves only whole batches behind."""

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostKey
from smart_retention.sources import FetchResult
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
POSTS = 40
BATCH_SIZE = 4


def _recording() -> list[Observation]:
    return [
        Observation(
            PostKey(1 + msg_id % 3, msg_id),
            T0 - timedelta(minutes=30),
            T0 - timedelta(minutes=1),
            Counters(100 + msg_id, msg_id % 4, 2, None),
        )
        for msg_id in range(1, POSTS + 1)
    ]


class _Failing(Exception):
    pass


class _TroubledSource:
    """The recorded source; the `fail_on`-th fetch raises `error`, after `delay_s`."""

    def __init__(self, fail_on: int | None = None, error: BaseException | None = None) -> None:
        self.inner = RecordedSource(_recording())
        self.fail_on = fail_on
        self.error = error
        self.fetches = 0
        self.threads: set[str] = set()

    def discover(self, now: datetime) -> Any:
        return self.inner.discover(now)

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        self.fetches += 1
        self.threads.add(threading.current_thread().name)
        # Slow enough that the other worker's batch is in flight meanwhile.
        time.sleep(0.02)
        if self.fetches == self.fail_on and self.error is not None:
            raise self.error
        return self.inner.fetch(keys, now)


@pytest.fixture
def pg_engine(postgres_database_url: str) -> Any:
    engine = make_engine(postgres_database_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _stored(engine: Engine) -> tuple[int, int, int, int]:
    """Snapshots, check rows, summed check counts, and posts with a snapshot but no check
    row or the reverse (a partial batch would show there)."""
    with engine.connect() as connection:
        snapshots = connection.execute(select(func.count()).select_from(post_metrics)).scalar()
        checked = connection.execute(select(func.count()).select_from(post_metrics_checks))
        checks = connection.execute(select(func.sum(post_metrics_checks.c.check_count))).scalar()
        snapshot_keys = set(
            connection.execute(select(post_metrics.c.channel_id, post_metrics.c.msg_id))
        )
        check_keys = set(
            connection.execute(
                select(post_metrics_checks.c.channel_id, post_metrics_checks.c.msg_id)
            )
        )
    return snapshots, checked.scalar(), checks or 0, len(snapshot_keys ^ check_keys)


def test_two_workers_store_what_one_stores(pg_engine: Engine) -> None:
    parallel = _TroubledSource()
    stats = Collector(pg_engine, parallel, batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    assert (stats.checks, stats.saved, stats.batches) == (POSTS, POSTS, POSTS // BATCH_SIZE)
    # Both threads fetched: the batches really were in flight side by side.
    assert parallel.threads == {"MainThread", "collector-worker-1"}
    with pg_engine.connect() as connection:
        rows = connection.execute(
            select(post_metrics).order_by(post_metrics.c.channel_id, post_metrics.c.msg_id)
        ).all()
    expected = sorted((o.key.channel_id, o.key.msg_id, T0, *o.counters) for o in _recording())
    assert [tuple(row) for row in rows] == expected
    assert _stored(pg_engine) == (POSTS, POSTS, POSTS, 0)


def test_a_cycle_of_one_short_page_starts_no_helper(pg_engine: Engine) -> None:
    source = _TroubledSource()
    stats = Collector(pg_engine, source, batch_size=POSTS + 1, workers=2).run_cycle(T0)
    assert (stats.checks, stats.batches) == (POSTS, 1)
    assert source.threads == {"MainThread"}
    assert _stored(pg_engine) == (POSTS, POSTS, POSTS, 0)


@pytest.mark.parametrize("fail_on", [1, 2, 5])
def test_an_error_in_either_worker_fails_the_cycle_leaving_whole_batches(
    pg_engine: Engine, fail_on: int
) -> None:
    source = _TroubledSource(fail_on=fail_on, error=_Failing("source broke"))
    with pytest.raises(_Failing, match="source broke"):
        Collector(pg_engine, source, batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    snapshots, checked, checks, unmatched = _stored(pg_engine)
    # Whole batches only: every stored post has both rows, and the failed batch none.
    assert unmatched == 0
    assert snapshots == checked == checks
    assert snapshots % BATCH_SIZE == 0
    assert snapshots <= POSTS - BATCH_SIZE
    # The next cycle on the same tick checks the rest, each post once.
    rest = Collector(pg_engine, _TroubledSource(), batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    assert rest.checks == POSTS - snapshots
    assert _stored(pg_engine) == (POSTS, POSTS, POSTS, 0)


def test_ctrl_c_in_the_calling_thread_stops_at_once_and_leaves_whole_batches(
    pg_engine: Engine,
) -> None:
    class _CtrlCSource(_TroubledSource):
        """The helper's fetches are slow; the calling thread's second one is a Ctrl-C."""

        interrupted_at = 0.0

        def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(1.0)
                return super().fetch(keys, now)
            fetched = super().fetch(keys, now)
            if self.fetches >= 2:
                self.interrupted_at = time.monotonic()
                raise KeyboardInterrupt
            return fetched

    source = _CtrlCSource()
    with pytest.raises(KeyboardInterrupt):
        Collector(pg_engine, source, batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    # Raised without waiting for the helper, whose slow batch is still in flight.
    assert time.monotonic() - source.interrupted_at < 0.5
    helpers = [t for t in threading.enumerate() if t.name.startswith("collector-worker-")]
    assert helpers and all(helper.daemon for helper in helpers)
    # Its batch commits whole and it takes no other: wait for it to end.
    for helper in helpers:
        helper.join(timeout=10)
    snapshots, checked, checks, unmatched = _stored(pg_engine)
    assert unmatched == 0
    assert snapshots == checked == checks < POSTS
    rest = Collector(pg_engine, _TroubledSource(), batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    assert rest.checks == POSTS - snapshots
    assert _stored(pg_engine) == (POSTS, POSTS, POSTS, 0)


def test_sqlite_runs_one_batch_at_a_time(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'collect.sqlite3'}")
    migrate.upgrade(engine)
    source = _TroubledSource()
    stats = Collector(engine, source, batch_size=BATCH_SIZE, workers=2).run_cycle(T0)
    assert stats.checks == POSTS
    assert source.threads == {"MainThread"}
    assert _stored(engine) == (POSTS, POSTS, POSTS, 0)
    engine.dispose()
