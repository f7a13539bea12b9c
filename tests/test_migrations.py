"""The schema comes from the Alembic migrations, on both engines."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, inspect, select

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
