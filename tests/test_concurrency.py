"""Concurrent collectors, in real processes, end as one collector would (invariant 2)."""

import multiprocessing
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostKey
from smart_retention.sources import FetchResult
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks
from smart_retention.storage.totals import read_totals, recount_totals

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
POSTS = 60
BATCH_SIZE = 5
FRESH_INTERVAL = timedelta(minutes=10)
SPAWN = multiprocessing.get_context("spawn")


def _recording(posts: int = POSTS) -> list[Observation]:
    """Fresh posts, each seen twice before T0 and again before T0 + 10 min."""
    observations = []
    for msg_id in range(1, posts + 1):
        posted_at = T0 - timedelta(minutes=30)
        for minutes, views in ((-20, 100 + msg_id), (-1, 130 + msg_id), (9, 200 + msg_id)):
            observations.append(
                Observation(
                    PostKey(1, msg_id),
                    posted_at,
                    T0 + timedelta(minutes=minutes),
                    Counters(views, msg_id % 3, 0, None),
                )
            )
    return sorted(observations, key=lambda o: (o.observed_at, o.key))


class _LoggingSource:
    """The recorded source, slowed down, reporting every fetched post and moment."""

    def __init__(self, fetch_log: Any, delay_s: float, posts: int) -> None:
        self.inner = RecordedSource(_recording(posts))
        self.fetch_log = fetch_log
        self.delay_s = delay_s

    def discover(self, now: datetime) -> Any:
        return self.inner.discover(now)

    def fetch(self, keys: Any, now: datetime) -> FetchResult:
        time.sleep(self.delay_s)
        for key in keys:
            self.fetch_log.put((tuple(key), now.isoformat()))
        return self.inner.fetch(keys, now)


def _run_collector(
    url: str, now_iso: str, start_at: float, delay_s: float, log: Any, posts: int
) -> None:
    engine = make_engine(url)
    collector = Collector(engine, _LoggingSource(log, delay_s, posts), batch_size=BATCH_SIZE)
    time.sleep(max(0.0, start_at - time.time()))
    collector.run_cycle(datetime.fromisoformat(now_iso))
    engine.dispose()


def _run_in_processes(
    url: str, runs: list[tuple[datetime, float, float]], posts: int = POSTS
) -> list[tuple]:
    """Run one collection cycle per (now, start delay, fetch delay), each in its own process."""
    fetch_log = SPAWN.Queue()
    start = time.time() + 2.0  # time for both children to import and connect
    children = [
        SPAWN.Process(
            target=_run_collector,
            args=(url, now.isoformat(), start + start_delay, fetch_delay, fetch_log, posts),
        )
        for now, start_delay, fetch_delay in runs
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0, f"collector process failed with exit code {child.exitcode}"
    fetched = []
    while not fetch_log.empty():
        fetched.append(fetch_log.get())
    return fetched


def _database_state(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as connection:
        snapshots = connection.execute(
            select(post_metrics).order_by(*post_metrics.primary_key.columns)
        ).all()
        checks = connection.execute(
            select(post_metrics_checks).order_by(*post_metrics_checks.primary_key.columns)
        ).all()
    return snapshots, checks


@pytest.mark.parametrize(
    ("posts", "fetch_delay_s"),
    [
        pytest.param(POSTS, 0.05, id="slow-fetches-interleave"),
        # With instant fetches a batch often commits while the other collector's claim
        # statement runs: the case that needs the claim's fresh re-read.
        pytest.param(600, 0.0, id="instant-fetches-race"),
    ],
)
def test_two_collectors_on_the_same_tick_write_what_one_would(
    database_url: str, engine: Engine, tmp_path: Path, posts: int, fetch_delay_s: float
) -> None:
    """No post checked twice, no duplicate snapshot, no lost check_count increment."""
    runs = [(T0, 0.0, fetch_delay_s), (T0, 0.0, fetch_delay_s)]
    fetched = _run_in_processes(database_url, runs, posts)

    per_post = Counter(key for key, _ in fetched)
    assert len(per_post) == posts
    assert set(per_post.values()) == {1}, "a post was fetched by both collectors"

    reference = make_engine(f"sqlite:///{tmp_path / 'one-collector.sqlite3'}")
    migrate.upgrade(reference)
    Collector(reference, RecordedSource(_recording(posts)), batch_size=BATCH_SIZE).run_cycle(T0)
    expected = _database_state(reference)
    reference.dispose()
    assert _database_state(engine) == expected
    snapshots, checks = _database_state(engine)
    assert len(snapshots) == posts
    assert all(row.check_count == 1 for row in checks)
    # Both processes' batches added to the one totals row: nothing lost, nothing twice.
    with engine.connect() as connection:
        assert read_totals(connection) == recount_totals(connection)
        assert read_totals(connection).checks == posts


def test_a_slow_cycle_overlapping_the_next_tick_does_not_double_the_work(
    database_url: str, engine: Engine
) -> None:
    """The tick at T0 runs slowly; the tick at T0 + 10 min starts while it is running.

    No post is fetched twice for one tick, checks of a post are at least one interval
    apart, and the check rows count exactly the checks that were made.
    """
    later = T0 + FRESH_INTERVAL
    fetched = _run_in_processes(database_url, [(T0, 0.0, 0.15), (later, 0.4, 0.0)])

    assert len(fetched) == len(set(fetched)), "a post was fetched twice for the same tick"
    moments: dict[tuple, list[datetime]] = {}
    for key, moment in fetched:
        moments.setdefault(key, []).append(datetime.fromisoformat(moment))
    assert len(moments) == POSTS
    for key, times in moments.items():
        times.sort()
        gaps = [later - earlier for earlier, later in pairwise(times)]
        assert all(gap >= FRESH_INTERVAL for gap in gaps), (key, times)

    _, checks = _database_state(engine)
    check_counts = {(row.channel_id, row.msg_id): row.check_count for row in checks}
    assert check_counts == {key: len(times) for key, times in moments.items()}
    with engine.connect() as connection:
        stored = connection.execute(select(post_metrics.c.msg_id)).scalars().all()
    assert sum(row.save_count for row in checks) == len(stored)
    with engine.connect() as connection:
        assert read_totals(connection) == recount_totals(connection)
