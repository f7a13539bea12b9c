"""A database connection lost in the middle of a batch leaves no partial batch."""

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from conftest import POSTGRES_URL
from smart_retention.collector import BATCH_ATTEMPTS, Collector
from smart_retention.observation import Counters, Observation, PostKey
from smart_retention.sources import FetchResult
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
POSTS = 12
BATCH_SIZE = 4
APPLICATION = "smart-retention-connection-loss-test"


def _recording() -> list[Observation]:
    return [
        Observation(
            PostKey(1, msg_id),
            T0 - timedelta(minutes=30),
            T0 - timedelta(minutes=1),
            Counters(100 + msg_id, 1, 2, None),
        )
        for msg_id in range(1, POSTS + 1)
    ]


def _cut_connections(admin: Engine) -> None:
    """End every connection of the collector's engine, as a database restart would."""
    with admin.begin() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": APPLICATION},
        )


class _ConnectionCuttingSource:
    """Cuts the collector's database connection while it fetches the chosen batches."""

    def __init__(self, admin: Engine, cut_on_fetches: set[int]) -> None:
        self.inner = RecordedSource(_recording())
        self.cut_on_fetches = cut_on_fetches
        self.fetches = 0
        self.admin = admin

    def discover(self, now: datetime) -> Any:
        return self.inner.discover(now)

    def fetch(self, keys: Any, now: datetime) -> FetchResult:
        self.fetches += 1
        if self.fetches in self.cut_on_fetches:
            _cut_connections(self.admin)
        return self.inner.fetch(keys, now)


@pytest.fixture
def collector_engine(postgres_database_url: str) -> Any:
    """An engine whose connections carry a name, so the test can find and cut them."""
    url = make_url(postgres_database_url)
    options = url.query["options"]
    engine = make_engine(
        url.difference_update_query(["options"]).render_as_string(hide_password=False),
        connect_args={"application_name": APPLICATION, "options": options},
    )
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def admin() -> Any:
    engine = create_engine(POSTGRES_URL)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        snapshots = connection.execute(select(func.count()).select_from(post_metrics)).scalar()
        checked = connection.execute(select(func.count()).select_from(post_metrics_checks)).scalar()
        checks = connection.execute(select(func.sum(post_metrics_checks.c.check_count))).scalar()
    return snapshots, checked, checks or 0


def test_a_batch_whose_connection_is_cut_is_retried_and_checks_each_post_once(
    collector_engine: Engine, admin: Engine
) -> None:
    source = _ConnectionCuttingSource(admin, cut_on_fetches={2})
    collector = Collector(collector_engine, source, batch_size=BATCH_SIZE, workers=1)
    stats = collector.run_cycle(T0)
    assert (stats.checks, stats.saved) == (POSTS, POSTS)
    # One fetch per batch plus the repeated one.
    assert source.fetches == POSTS // BATCH_SIZE + 1
    assert _rows(collector_engine) == (POSTS, POSTS, POSTS)


def test_batches_in_parallel_whose_connections_are_cut_are_retried_and_check_each_post_once(
    collector_engine: Engine, admin: Engine
) -> None:
    # Two workers: the cut ends both of their connections, whatever each was doing.
    source = _ConnectionCuttingSource(admin, cut_on_fetches={2})
    collector = Collector(collector_engine, source, batch_size=BATCH_SIZE, workers=2)
    stats = collector.run_cycle(T0)
    assert (stats.checks, stats.saved) == (POSTS, POSTS)
    # At least the batch fetching at the cut was repeated; none was lost or doubled.
    assert source.fetches > POSTS // BATCH_SIZE
    assert _rows(collector_engine) == (POSTS, POSTS, POSTS)


def test_a_connection_cut_on_every_attempt_fails_the_cycle_and_keeps_committed_batches(
    collector_engine: Engine, admin: Engine
) -> None:
    failing = set(range(2, 2 + BATCH_ATTEMPTS))
    collector = Collector(
        collector_engine,
        _ConnectionCuttingSource(admin, cut_on_fetches=failing),
        batch_size=BATCH_SIZE,
        workers=1,
    )
    with pytest.raises(DBAPIError):
        collector.run_cycle(T0)
    # The first batch committed; nothing of the failing batch is there.
    assert _rows(collector_engine) == (BATCH_SIZE, BATCH_SIZE, BATCH_SIZE)
    # The next cycle on the same tick finishes the rest, each post once.
    rest = Collector(
        collector_engine,
        _ConnectionCuttingSource(admin, cut_on_fetches=set()),
        batch_size=BATCH_SIZE,
    ).run_cycle(T0)
    assert rest.checks == POSTS - BATCH_SIZE
    assert _rows(collector_engine) == (POSTS, POSTS, POSTS)


def _cut_before(
    monkeypatch: pytest.MonkeyPatch, admin: Engine, method: str, starts_with: str, on: int
) -> list[str]:
    """Terminate the collector's backends just before the `on`-th statement that psycopg's
    `Cursor.<method>` is given starting with `starts_with` (the claim's lock, the state
    read, the COPY of the check rows: what the collector sends past SQLAlchemy)."""
    seen: list[str] = []
    real = getattr(psycopg.Cursor, method)

    def cutting(cursor: psycopg.Cursor, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if str(statement).startswith(starts_with):
            seen.append(str(statement))
            if len(seen) == on:
                _cut_connections(admin)
        return real(cursor, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, method, cutting)
    return seen


@pytest.mark.parametrize(
    ("method", "starts_with"),
    [
        ("execute", "SELECT posts.channel_id"),  # the claim's lock
        ("execute", "SELECT c.channel_id"),  # the state read under the lock
        ("copy", "COPY staged_post_metrics_checks"),  # the batch's check rows
    ],
)
def test_a_connection_cut_in_any_statement_of_a_batch_is_retried(
    collector_engine: Engine,
    admin: Engine,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    starts_with: str,
) -> None:
    seen = _cut_before(monkeypatch, admin, method, starts_with, on=2)
    source = _ConnectionCuttingSource(admin, cut_on_fetches=set())
    collector = Collector(collector_engine, source, batch_size=BATCH_SIZE, workers=1)
    stats = collector.run_cycle(T0)
    assert len(seen) > 2  # the cut statement was sent again, on a new connection
    assert (stats.checks, stats.saved) == (POSTS, POSTS)
    assert _rows(collector_engine) == (POSTS, POSTS, POSTS)


def test_a_connection_cut_in_a_copy_on_every_attempt_is_reported_as_a_database_error(
    collector_engine: Engine, admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What fails past SQLAlchemy fails as SQLAlchemy's error, naming the statement."""
    real_copy = psycopg.Cursor.copy

    def always_cut(cursor: psycopg.Cursor, statement: Any, *args: Any, **kwargs: Any) -> Any:
        _cut_connections(admin)
        return real_copy(cursor, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", always_cut)
    collector = Collector(
        collector_engine,
        _ConnectionCuttingSource(admin, cut_on_fetches=set()),
        batch_size=BATCH_SIZE,
        workers=1,
    )
    with pytest.raises(DBAPIError, match="COPY staged_post_metrics_checks") as raised:
        collector.run_cycle(T0)
    assert raised.value.connection_invalidated
    monkeypatch.undo()
    assert _rows(collector_engine) == (0, 0, 0)
