"""The schema comes from the Alembic migrations, on both engines."""

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, inspect, select, text

from smart_retention.storage import migrate
from smart_retention.storage.tables import metadata, post_metrics

TABLES = {"channels", "posts", "post_metrics", "post_metrics_checks"}


def test_the_migrations_have_exactly_one_head() -> None:
    assert len(migrate.heads()) == 1


def test_upgrade_creates_every_table_at_the_head_revision(bare_engine: Engine) -> None:
    migrate.upgrade(bare_engine)
    assert set(inspect(bare_engine).get_table_names()) >= TABLES
    assert migrate.current_revision(bare_engine) == migrate.heads()[0]


def test_upgrade_then_downgrade_to_base_then_upgrade_again(bare_engine: Engine) -> None:
    migrate.upgrade(bare_engine)
    migrate.downgrade(bare_engine, "base")
    assert not TABLES & set(inspect(bare_engine).get_table_names())
    assert migrate.current_revision(bare_engine) is None
    migrate.upgrade(bare_engine)
    assert set(inspect(bare_engine).get_table_names()) >= TABLES


def test_the_migrated_columns_match_the_table_definitions(engine: Engine) -> None:
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        migrated = {column["name"] for column in inspector.get_columns(table.name)}
        assert migrated == set(table.columns.keys()), table.name


def test_a_count_over_two_to_the_31_round_trips_exactly(engine: Engine) -> None:
    from smart_retention.observation import PostInfo, PostKey
    from smart_retention.storage import repository

    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        repository.register_posts(connection, [PostInfo(PostKey(1, 1), moment)], moment)
        repository.insert_snapshots(
            connection,
            [
                {
                    "channel_id": 1,
                    "msg_id": 1,
                    "snapshot_time": moment,
                    "views": 3_000_000_000,
                    "forwards": 2**63 - 1,
                    "reactions": None,
                    "replies": 0,
                }
            ],
        )
    with engine.connect() as connection:
        row = connection.execute(select(post_metrics)).one()
    assert row.views == 3_000_000_000
    assert row.forwards == 2**63 - 1
    assert row.reactions is None
    assert row.snapshot_time == moment and row.snapshot_time.tzinfo is not None


def test_a_naive_timestamp_is_refused_at_the_storage_boundary(engine: Engine) -> None:
    from sqlalchemy.exc import StatementError

    from smart_retention.storage.tables import channels

    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as connection:
        connection.execute(
            channels.insert(),
            {"channel_id": 1, "created_at": datetime(2026, 1, 1)},  # noqa: DTZ001
        )


def _fill_every_table(engine: Engine) -> None:
    """Two channels, three posts, snapshots and check rows, at the head revision."""
    from smart_retention.storage.tables import channels, post_metrics_checks, posts

    moment = datetime(2026, 1, 1, tzinfo=UTC)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            channels.insert(),
            [
                {"channel_id": 1, "username": "one", "title": "One", "created_at": moment,
                 "access_hash": -5, "deferred_until": later},
                {"channel_id": 2, "username": None, "title": "Two", "created_at": moment,
                 "access_hash": None, "deferred_until": None},
            ],
        )  # fmt: skip
        keys = [(1, 10), (1, 11), (2, 20)]
        connection.execute(
            posts.insert(),
            [{"channel_id": c, "msg_id": m, "posted_at": moment} for c, m in keys],
        )
        connection.execute(
            post_metrics.insert(),
            [
                {"channel_id": c, "msg_id": m, "snapshot_time": when, "views": m + hour,
                 "forwards": 1, "reactions": None, "replies": 0}
                for c, m in keys
                for hour, when in enumerate((moment, later))
            ],
        )  # fmt: skip
        connection.execute(
            post_metrics_checks.insert(),
            [
                {"channel_id": c, "msg_id": m, "last_checked_at": later,
                 "last_changed_at": later, "last_saved_at": later, "check_count": 3,
                 "save_count": 2, "checks_since_save": 1,
                 "stable_since": later if m == 10 else None, "post_age_hours": 24.0,
                 "last_views": m + 1, "last_forwards": 1, "last_reactions": None,
                 "last_replies": 0, "policy_state": {"step": m}, "miss_count": 1}
                for c, m in keys
            ],
        )  # fmt: skip


# Columns of revision 0001, which every revision keeps.
_COLUMNS_0001 = {
    "channels": ("channel_id", "username", "title", "created_at"),
    "posts": ("channel_id", "msg_id", "posted_at", "deleted_at"),
    "post_metrics": ("channel_id", "msg_id", "snapshot_time", "views", "forwards",
                     "reactions", "replies"),
    "post_metrics_checks": ("channel_id", "msg_id", "last_checked_at", "last_changed_at",
                            "last_saved_at", "check_count", "save_count", "checks_since_save",
                            "stable_since", "post_age_hours", "last_views", "last_forwards",
                            "last_reactions", "last_replies", "policy_state"),
}  # fmt: skip


def _contents(engine: Engine) -> dict[str, list[tuple]]:
    found = {}
    with engine.connect() as connection:
        for table, columns in _COLUMNS_0001.items():
            listed = ", ".join(columns)
            rows = connection.execute(text(f"SELECT {listed} FROM {table}")).all()
            found[table] = sorted(tuple(repr(value) for value in row) for row in rows)
    return found


def test_downgrading_step_by_step_to_0001_and_back_keeps_every_row(bare_engine: Engine) -> None:
    """No migration step deletes rows: on SQLite a table recreation (batch mode) with
    foreign keys on would cascade-delete the posts and snapshots of a recreated
    `channels`."""
    from smart_retention.storage import totals

    migrate.upgrade(bare_engine)
    _fill_every_table(bare_engine)
    original = _contents(bare_engine)
    assert [len(original[table]) for table in _COLUMNS_0001] == [2, 3, 6, 3]
    with bare_engine.connect() as connection:
        original_totals = totals.read_totals(connection)
    steps = ["0002", "0001"]
    for revision in steps:
        migrate.downgrade(bare_engine, revision)
        assert migrate.current_revision(bare_engine) == revision
        assert _contents(bare_engine) == original, revision
    for revision in ["0002", "0003", "0004"]:
        migrate.upgrade(bare_engine, revision)
        assert _contents(bare_engine) == original, revision
    assert migrate.current_revision(bare_engine) == migrate.heads()[0]
    with bare_engine.connect() as connection:
        assert totals.read_totals(connection) == original_totals
    # The totals triggers are back and count new rows.
    with bare_engine.begin() as connection:
        connection.execute(text("DELETE FROM posts WHERE channel_id = 2"))
    with bare_engine.connect() as connection:
        kept = totals.read_totals(connection)
        assert kept.posts == original_totals.posts - 1
        assert kept == totals.recount_totals(connection)


def test_no_migration_recreates_a_table_through_batch_mode() -> None:
    """Batch mode on SQLite copies, drops and renames a table: the drop cascades."""
    from pathlib import Path

    import smart_retention.storage.migrations.versions as versions

    folder = Path(versions.__file__).parent
    users = [p.name for p in folder.glob("*.py") if "batch_alter_table" in p.read_text()]
    assert users == []


def _check_row_indexes(engine: Engine) -> list[str]:
    return sorted(index["name"] for index in inspect(engine).get_indexes("post_metrics_checks"))


def _check_row_fillfactor(engine: Engine) -> str | None:
    with engine.connect() as connection:
        options = connection.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = to_regclass('post_metrics_checks')")
        ).scalar_one()
    found = [option for option in options or [] if option.startswith("fillfactor=")]
    return found[0] if found else None


def test_0004_leaves_the_check_rows_no_index_but_their_key(bare_engine: Engine) -> None:
    """Every check rewrites its check row: an index on a column it changes would make
    each update an index insert too (and rule out PostgreSQL's in-place updates)."""
    migrate.upgrade(bare_engine, "0003")
    assert _check_row_indexes(bare_engine) == ["ix_post_metrics_checks_last_checked_at"]
    migrate.upgrade(bare_engine, "0004")
    assert _check_row_indexes(bare_engine) == []
    if bare_engine.dialect.name == "postgresql":
        assert _check_row_fillfactor(bare_engine) == "fillfactor=50"
    migrate.downgrade(bare_engine, "0003")
    assert _check_row_indexes(bare_engine) == ["ix_post_metrics_checks_last_checked_at"]
    if bare_engine.dialect.name == "postgresql":
        assert _check_row_fillfactor(bare_engine) is None


def test_0004_runs_on_tables_that_already_lack_the_index(bare_engine: Engine) -> None:
    """A database adopted at 0003 may be a 0004 one without its record: the migration
    must then do nothing rather than fail on the missing index."""
    migrate.upgrade(bare_engine)
    with bare_engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
    from smart_retention.storage.adoption import migrate_to_head

    result = migrate_to_head(bare_engine)
    assert (result.adopted, result.after) == ("0003", "0004")
    assert _check_row_indexes(bare_engine) == []


@pytest.mark.postgres
def test_check_rows_are_updated_in_place_on_postgresql(postgres_database_url: str) -> None:
    """Two cycles of the collector over the same posts: PostgreSQL rewrites the check
    rows on their own pages (HOT updates), which 0004 makes possible."""
    from datetime import timedelta

    from smart_retention.collector import Collector
    from smart_retention.sources.synthetic import SYNTHETIC_START, SyntheticSource
    from smart_retention.storage.engine import make_engine

    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        source = SyntheticSource(2, 200, 1.0, seed=3)
        first = SYNTHETIC_START + timedelta(days=3)
        collector = Collector(engine, source)
        assert collector.run_cycle(first).checks == 400
        assert collector.run_cycle(first + timedelta(hours=6)).checks == 400
        # A backend reports its table statistics when it ends (or after a while idle).
        engine.dispose()
        counts: tuple[int, ...] = (0, 0)
        deadline = time.monotonic() + 20
        while counts[0] < 400 and time.monotonic() < deadline:
            time.sleep(0.2)
            with engine.connect() as connection:
                counts = tuple(
                    connection.execute(
                        text(
                            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                            "WHERE relid = to_regclass('post_metrics_checks')"
                        )
                    ).one()
                )
        updated, in_place = counts
        assert updated == 400
        # Not quite all: a version that grows (stable_since set where it was NULL) may not
        # fit beside the old ones on a full page. With the index of 0003, none would.
        assert in_place >= 0.9 * updated, counts
    finally:
        engine.dispose()
