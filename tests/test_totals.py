"""The totals row the database keeps equals the sums over the tables, after every writer.

Migration 0003's triggers keep `collection_totals`; these tests change `posts` and
`post_metrics_checks` the ways the product and an owner do, and compare the row with a
count over the tables (`recount_totals`) and with values worked out by hand.
"""

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, text, update

from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostInfo, PostKey
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate, repository
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics_checks, posts
from smart_retention.storage.totals import (
    CollectionTotals,
    read_totals,
    recount_totals,
    reset_totals,
)

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _observation(channel_id: int, msg_id: int, minute: int, views: int) -> Observation:
    return Observation(
        key=PostKey(channel_id, msg_id),
        posted_at=T0,
        observed_at=T0 + minute * MINUTE,
        counters=Counters(views, 0, 0, None),
    )


def _collect(engine: Engine) -> Collector:
    """Channel 1, posts 1-3, and channel 2, post 1, checked three times 10 minutes apart.

    Post 1/1: 100, 100, 100 -> saves the first; stable from the second check.
    Post 1/2: 100, 200, 200 -> saves the first two; stable from the third.
    Post 1/3: 100, 200, 300 -> saves all three; not stable.
    Post 2/1: 5,000, 5,000, 5,001 -> saves the first (1 view: under 5 and under 0.5%);
    stable.
    That is 12 checks and 1 + 2 + 3 + 1 = 7 saves; stable posts 1/1, 1/2 and 2/1.
    """
    views = {(1, 1): (100, 100, 100), (1, 2): (100, 200, 200), (1, 3): (100, 200, 300)}
    views[(2, 1)] = (5_000, 5_000, 5_001)
    rounds = [
        [_observation(c, m, 5 + 10 * i, series[i]) for (c, m), series in views.items()]
        for i in range(3)
    ]
    collector = Collector(engine, RecordedSource([o for r in rounds for o in r]))
    with engine.begin() as connection:
        infos = [PostInfo(PostKey(c, m), T0) for c, m in views]
        repository.register_posts(connection, infos, T0)
    for observations in rounds:
        collector.check(observations)
    return collector


def test_the_kept_totals_follow_the_collector(engine: Engine) -> None:
    _collect(engine)
    with engine.connect() as connection:
        kept, counted = read_totals(connection), recount_totals(connection)
    assert kept == CollectionTotals(posts=4, checks=12, saves=7, stable_posts=3)
    assert kept == counted


def test_the_kept_totals_follow_a_removed_channel_and_its_cascade(engine: Engine) -> None:
    _collect(engine)
    with engine.begin() as connection:
        repository.delete_channels(connection, [2])
    with engine.begin() as connection:
        # A post deleted by hand: its check row goes with it (ON DELETE CASCADE).
        connection.execute(delete(posts).where(posts.c.channel_id == 1, posts.c.msg_id == 3))
    with engine.connect() as connection:
        kept, counted = read_totals(connection), recount_totals(connection)
    # Left: posts 1/1 (1 save, stable) and 1/2 (2 saves, stable), 3 checks each.
    assert kept == CollectionTotals(posts=2, checks=6, saves=3, stable_posts=2)
    assert kept == counted


def test_the_kept_totals_follow_a_manual_repair_of_check_rows(engine: Engine) -> None:
    _collect(engine)
    with engine.begin() as connection:
        connection.execute(
            update(post_metrics_checks)
            .where(post_metrics_checks.c.channel_id == 1)
            .values(check_count=post_metrics_checks.c.check_count + 10, stable_since=None)
        )
    with engine.connect() as connection:
        kept, counted = read_totals(connection), recount_totals(connection)
    assert kept == CollectionTotals(posts=4, checks=42, saves=7, stable_posts=1)
    assert kept == counted


def test_a_rolled_back_batch_leaves_the_totals_as_they_were(engine: Engine) -> None:
    _collect(engine)
    with engine.connect() as connection:
        before = read_totals(connection)
    with engine.connect() as connection, connection.begin() as transaction:
        connection.execute(delete(post_metrics_checks))
        assert read_totals(connection).checks == 0
        transaction.rollback()
    with engine.connect() as connection:
        assert read_totals(connection) == before == recount_totals(connection)


def test_upgrading_a_database_with_rows_counts_them_into_the_totals(bare_engine: Engine) -> None:
    """Migration 0003 starts the row from the tables as they are."""
    migrate.upgrade(bare_engine, "0002")
    _collect(bare_engine)
    migrate.upgrade(bare_engine)
    with bare_engine.connect() as connection:
        assert read_totals(connection) == CollectionTotals(
            posts=4, checks=12, saves=7, stable_posts=3
        )
    # Downgrading removes the table and its triggers, and leaves the check rows alone.
    migrate.downgrade(bare_engine, "0002")
    with bare_engine.connect() as connection:
        check_rows = connection.execute(text("SELECT check_count FROM post_metrics_checks"))
        assert sorted(check_rows.scalars()) == [3, 3, 3, 3]
        connection.execute(delete(post_metrics_checks))


def test_reset_totals_repairs_a_row_a_bulk_load_left_behind(engine: Engine) -> None:
    """A load that bypassed the triggers (replica mode on PostgreSQL) leaves the row stale;
    reset_totals sets it to the recount."""
    _collect(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE collection_totals SET posts = 0, checks = 0"))
        assert read_totals(connection).checks == 0
        assert reset_totals(connection) == CollectionTotals(
            posts=4, checks=12, saves=7, stable_posts=3
        )
    with engine.connect() as connection:
        assert read_totals(connection) == recount_totals(connection)


def test_a_writer_with_another_search_path_counts_in_the_tables_own_schema(
    postgres_database_url: str,
) -> None:
    """PostgreSQL: the triggers find the totals row beside the table they fired on, so a
    schema-qualified write from a session whose search_path names another schema (a
    copy between schemas, another tool) is counted, not refused."""
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        _collect(engine)
        with engine.begin() as connection:
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
            connection.execute(text("SET LOCAL search_path TO public"))
            connection.execute(
                text(
                    f'INSERT INTO "{schema}".posts (channel_id, msg_id, posted_at) '
                    "VALUES (1, 99, now()), (1, 100, now())"
                )
            )
        with engine.connect() as connection:
            assert read_totals(connection).posts == 6
            assert read_totals(connection) == recount_totals(connection)
    finally:
        engine.dispose()


def test_db_recount_totals_sets_a_stale_row_and_says_what_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'stale.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        _collect(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE collection_totals SET checks = 0"))
    finally:
        engine.dispose()
    cli = Path(sys.executable).with_name("smart-retention")
    first = subprocess.run(
        [cli, "db", "recount-totals", "--db", url], capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    # Joined again: Rich wraps the line at the width it guesses for a pipe.
    assert " ".join(first.stdout.split()) == (
        "totals: 4 posts, 12 checks, 7 saves, 3 stable posts "
        "(were 4 posts, 0 checks, 7 saves, 3 stable posts)"
    )
    again = subprocess.run(
        [cli, "db", "recount-totals", "--db", url], capture_output=True, text=True, check=False
    )
    assert again.stdout.split()[-1] == "(unchanged)"
