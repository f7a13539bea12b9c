"""A whole collection cycle with the Telegram source into PostgreSQL, through the same
tier run that `smart-retention run` and the Celery tasks use."""

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from smart_retention.schedule import DEFAULT_TIERS
from smart_retention.scheduler import run_tier
from smart_retention.storage import migrate
from smart_retention.storage.channels import StoredChannels, save_channel
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks, posts
from telegram_fakes import Clock, FakeTelegram, make_source, post, service

T0 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
A, B = 1234567890, 1987654321


def test_a_whole_telegram_cycle_into_postgresql(postgres_database_url: str) -> None:
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as connection:
            for channel_id, name in ((A, "alpha"), (B, "beta")):
                save_channel(
                    connection, channel_id, access_hash=channel_id * 7, username=name,
                    title=name.title(), now=T0 - timedelta(days=1),
                )  # fmt: skip
        telegram = FakeTelegram()
        # Channel A: 120 posts over the last two days, a service message among them.
        telegram.add(
            *(post(A, i, T0 - timedelta(hours=48) + timedelta(minutes=20 * i), views=10 * i)
              for i in range(1, 121))
        )  # fmt: skip
        telegram.add(service(A, 121, T0 - timedelta(hours=1)))
        # Channel B: three fresh posts, one with counters the API leaves out.
        telegram.add(
            post(B, 1, T0 - timedelta(minutes=45), views=5, reactions=()),
            post(B, 2, T0 - timedelta(minutes=40), views=None, forwards=None, replies=None,
                 reactions=None),
            post(B, 3, T0 - timedelta(minutes=30), views=7),
        )  # fmt: skip
        clock = Clock(T0)
        source = make_source(telegram, StoredChannels(engine), clock)
        first = run_tier(engine, source, DEFAULT_TIERS, T0, batch_size=50)
        assert (first.checks, first.saved, first.rejected) == (123, 123, 0)

        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(posts)).scalar() == 123
            views = connection.execute(
                select(post_metrics.c.views).where(
                    post_metrics.c.channel_id == B, post_metrics.c.msg_id == 2
                )
            ).scalar_one()
            assert views is None

        # Ten minutes later: the fresh posts are due again; one changed, one was deleted.
        later = T0 + timedelta(minutes=10)
        clock.now = later
        telegram.add(post(B, 1, T0 - timedelta(minutes=45), views=500, reactions=(2,)))
        telegram.delete(B, 3)
        second = run_tier(engine, source, DEFAULT_TIERS, later, batch_size=50)
        assert (second.checks, second.saved) == (2, 1)
        with engine.connect() as connection:
            checks = {
                row.msg_id: row
                for row in connection.execute(
                    select(post_metrics_checks).where(post_metrics_checks.c.channel_id == B)
                )
            }
            assert (
                connection.execute(select(func.count()).select_from(post_metrics)).scalar() == 124
            )
        assert (checks[1].last_views, checks[1].last_reactions, checks[1].check_count) == (
            500,
            2,
            2,
        )
        assert (checks[3].miss_count, checks[3].missing_since, checks[3].last_views) == (
            1,
            later,
            7,
        )
        source.close()
    finally:
        engine.dispose()
