"""The collection cycle against real databases: what a batch writes, and how."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch

import psycopg
import pytest
from sqlalchemy import Engine, event, select

from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostKey
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import repository
from smart_retention.storage.tables import post_metrics, post_metrics_checks, posts

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CHANNEL = 7


def observation(
    msg_id: int,
    at: datetime,
    views: int | None,
    forwards: int | None = 0,
    reactions: int | None = 0,
    replies: int | None = None,
    posted_at: datetime = T0,
) -> Observation:
    return Observation(
        PostKey(CHANNEL, msg_id), posted_at, at, Counters(views, forwards, reactions, replies)
    )


def collector_for(
    engine: Engine, observations: list[Observation], batch_size: int = 500
) -> Collector:
    source = RecordedSource(sorted(observations, key=lambda o: (o.observed_at, o.key)))
    return Collector(engine, source, batch_size=batch_size)


def register(engine: Engine, collector: Collector, now: datetime) -> None:
    with engine.begin() as connection:
        repository.register_posts(connection, collector.source.discover(now), now)


def check_row(engine: Engine, msg_id: int) -> dict:
    with engine.connect() as connection:
        query = select(post_metrics_checks).where(post_metrics_checks.c.msg_id == msg_id)
        return dict(connection.execute(query).mappings().one())


def stored_views(engine: Engine, msg_id: int) -> list[int | None]:
    with engine.connect() as connection:
        query = (
            select(post_metrics.c.views)
            .where(post_metrics.c.msg_id == msg_id)
            .order_by(post_metrics.c.snapshot_time)
        )
        return list(connection.execute(query).scalars())


@contextmanager
def counted_statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement sent to the database. On PostgreSQL they are counted at the
    driver, since the collector sends some (COPY, the claim and the state read) on
    psycopg's cursor directly; on SQLite through SQLAlchemy."""
    statements: list[str] = []
    if engine.dialect.name != "postgresql":

        def count(conn, cursor, statement, parameters, context, executemany):
            # Transaction control (SQLite's explicit BEGIN) is not a data statement.
            if not statement.startswith("BEGIN"):
                statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return

    real_execute, real_copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def counted_execute(cursor: psycopg.Cursor, query: Any, *args: Any, **kwargs: Any) -> Any:
        # The pool's pre-ping (an empty statement at checkout) is no data statement.
        if str(query).strip() != ";":
            statements.append(str(query))
        return real_execute(cursor, query, *args, **kwargs)

    def counted_copy(cursor: psycopg.Cursor, statement: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(statement))
        return real_copy(cursor, statement, *args, **kwargs)

    with (
        patch.object(psycopg.Cursor, "execute", counted_execute),
        patch.object(psycopg.Cursor, "copy", counted_copy),
    ):
        yield statements


# Statements per batch. SQLite: read the states, insert the snapshots, upsert the check
# rows. PostgreSQL: read the states, make sure the staging table exists, COPY the check
# rows into it, then one statement inserts the snapshots and merges the check rows.
WRITE_STATEMENTS = {"sqlite": 3, "postgresql": 4}


def test_a_check_row_follows_every_check_and_save(engine: Engine) -> None:
    """check_count, save_count, last_changed_at, stable_since and the last values."""
    t = [T0 + timedelta(minutes=10 * i) for i in range(1, 5)]
    history = [
        observation(1, t[0], 10_000),  # first: stored
        observation(1, t[1], 10_000),  # identical: not stored
        observation(1, t[2], 10_003),  # under both 5 views and 0.5% (50): not stored
        observation(1, t[3], 10_006),  # 6 views over the stored 10,000: stored
    ]
    collector = collector_for(engine, history)
    register(engine, collector, t[3])

    collector.check([history[0]])
    row = check_row(engine, 1)
    assert (row["check_count"], row["save_count"], row["checks_since_save"]) == (1, 1, 0)
    assert row["last_changed_at"] == t[0] and row["last_saved_at"] == t[0]
    assert row["stable_since"] is None

    collector.check([history[1]])
    row = check_row(engine, 1)
    assert (row["check_count"], row["save_count"], row["checks_since_save"]) == (2, 1, 1)
    assert row["last_changed_at"] == t[0]
    assert row["stable_since"] == t[1]

    collector.check([history[2]])
    row = check_row(engine, 1)
    assert (row["check_count"], row["save_count"], row["last_views"]) == (3, 1, 10_003)
    assert row["last_changed_at"] == t[2]
    assert row["stable_since"] == t[1]

    collector.check([history[3]])
    row = check_row(engine, 1)
    assert (row["check_count"], row["save_count"], row["checks_since_save"]) == (4, 2, 0)
    assert row["last_saved_at"] == t[3] and row["stable_since"] is None
    assert row["post_age_hours"] == pytest.approx(40 / 60)
    assert stored_views(engine, 1) == [10_000, 10_006]


def test_unknown_counters_are_stored_as_null_not_zero(engine: Engine) -> None:
    first = observation(1, T0 + timedelta(minutes=5), 50, forwards=None, reactions=None)
    collector = collector_for(engine, [first])
    register(engine, collector, first.observed_at)
    collector.check([first])
    with engine.connect() as connection:
        row = connection.execute(select(post_metrics)).one()
    assert (row.views, row.forwards, row.reactions, row.replies) == (50, None, None, None)
    assert check_row(engine, 1)["last_forwards"] is None


@pytest.mark.parametrize("batch_posts", [1, 4, 50])
def test_statements_per_batch_do_not_grow_with_the_batch(engine: Engine, batch_posts: int) -> None:
    """A batch reads states once, inserts snapshots once and upserts check rows once."""
    first = [observation(m, T0 + timedelta(minutes=5), 100) for m in range(1, batch_posts + 1)]
    second = [
        observation(m, T0 + timedelta(minutes=15), 100 + 10 * (m % 2))
        for m in range(1, batch_posts + 1)
    ]
    collector = collector_for(engine, first + second)
    register(engine, collector, T0 + timedelta(minutes=15))
    collector.check(first)
    with counted_statements(engine) as statements:
        collector.check(second)
    assert len(statements) == WRITE_STATEMENTS[engine.dialect.name], statements


@pytest.mark.parametrize("batch_size", [2, 8, 40])
def test_statements_per_cycle_batch_do_not_grow_with_the_batch(
    engine: Engine, batch_size: int
) -> None:
    """A cycle's batch: lock the due posts, read their states, insert, upsert."""
    history = [observation(m, T0 + timedelta(minutes=1), 10 * m) for m in range(1, 41)]
    collector = collector_for(engine, history, batch_size=batch_size)
    now = T0 + timedelta(minutes=10)
    register(engine, collector, now)
    with counted_statements(engine) as statements:
        stats = collector.run_cycle(now)
    batches = 40 // batch_size
    assert stats.batches == batches
    # Per batch: the claim's lock, then the writes (whose state read is the claim's fresh
    # read under the lock); then one more claim finds nothing left.
    per_batch = 1 + WRITE_STATEMENTS[engine.dialect.name]
    assert len(statements) == per_batch * batches + 1, statements


def test_a_cycle_checks_due_posts_in_batches_of_the_given_size(engine: Engine) -> None:
    history = [observation(m, T0 + timedelta(minutes=1), 10 * m) for m in range(1, 11)]
    collector = collector_for(engine, history, batch_size=3)
    now = T0 + timedelta(minutes=10)
    stats = collector.run_cycle(now)
    assert (stats.checks, stats.saved, stats.batches) == (10, 10, 4)
    # Nothing is due again until the fresh tier's interval has passed.
    assert collector.run_cycle(now + timedelta(minutes=9)).checks == 0
    assert collector.run_cycle(now + timedelta(minutes=10)).checks == 10


def test_posts_past_the_last_tier_are_not_polled(engine: Engine) -> None:
    old = observation(1, T0, 500, posted_at=T0 - timedelta(days=30))
    young = observation(2, T0, 500, posted_at=T0 - timedelta(days=29, hours=23))
    collector = collector_for(engine, [old, young])
    stats = collector.run_cycle(T0)
    assert stats.checks == 1
    with engine.connect() as connection:
        assert connection.execute(select(post_metrics_checks.c.msg_id)).scalars().all() == [2]
        # The old post is still registered: it is known, just no longer polled.
        assert sorted(connection.execute(select(posts.c.msg_id)).scalars()) == [1, 2]


def test_a_failure_mid_batch_leaves_nothing_partial(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's snapshots and check rows are written, then the batch fails before
    its commit: neither stays."""
    first = [observation(m, T0 + timedelta(minutes=5), 100) for m in (1, 2)]
    second = [observation(m, T0 + timedelta(minutes=15), 200) for m in (1, 2)]
    collector = collector_for(engine, first + second)
    register(engine, collector, T0 + timedelta(minutes=15))
    collector.check(first)
    real_write_checks = repository.write_checks
    written: list[int] = []

    def write_then_fail(connection, rows):
        real_write_checks(connection, rows)
        written.append(len(connection.execute(select(post_metrics)).all()))
        raise RuntimeError("injected failure after the batch's writes")

    monkeypatch.setattr(repository, "write_checks", write_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        collector.check(second)
    monkeypatch.undo()

    # Inside the failed transaction both new snapshots were there; none is now.
    assert written == [4]
    assert stored_views(engine, 1) == [100] and stored_views(engine, 2) == [100]
    assert check_row(engine, 1)["check_count"] == 1
    # The same batch succeeds afterwards, as if the failed attempt never happened.
    assert collector.check(second).saved == 2
    assert stored_views(engine, 1) == [100, 200]


def test_an_observation_not_after_the_last_check_is_rejected_and_the_batch_goes_on(
    engine: Engine,
) -> None:
    first = [observation(m, T0 + timedelta(minutes=20), 100) for m in (1, 2)]
    late = observation(1, T0 + timedelta(minutes=10), 999)
    fine = observation(2, T0 + timedelta(minutes=30), 999)
    collector = collector_for(engine, [*first, late, fine])
    register(engine, collector, T0 + timedelta(minutes=30))
    collector.check(first)

    stats = collector.check([late, fine])
    assert (stats.checks, stats.saved, stats.rejected) == (1, 1, 1)
    message = str(stats.rejections[0])
    assert "post 7/1" in message and "field observed_at" in message
    assert stored_views(engine, 1) == [100]
    assert stored_views(engine, 2) == [100, 999]


def test_a_count_of_three_billion_round_trips_through_a_check(engine: Engine) -> None:
    big = observation(1, T0 + timedelta(minutes=5), 3_000_000_000)
    collector = collector_for(engine, [big])
    register(engine, collector, big.observed_at)
    collector.check([big])
    assert stored_views(engine, 1) == [3_000_000_000]
    assert check_row(engine, 1)["last_views"] == 3_000_000_000


def test_next_due_at_is_never_later_than_a_real_due_check(engine: Engine) -> None:
    """Skipping to the schedule's lower bound cannot miss a check."""
    history = [
        observation(m, T0 + timedelta(minutes=m), 10, posted_at=T0 + timedelta(minutes=m))
        for m in range(1, 6)
    ]
    collector = collector_for(engine, history)
    now = T0 + timedelta(minutes=10)
    collector.run_cycle(now)
    wake = collector.next_due_at(now)
    assert wake is not None
    probe = now + timedelta(minutes=1)
    while probe < wake:
        assert collector.run_cycle(probe).checks == 0
        probe += timedelta(minutes=1)
    assert collector.run_cycle(wake).checks > 0
