"""Collection cycles with the Telegram source into real databases (SQLite and PostgreSQL):
discovery, misses, FloodWait deferrals, and what /metrics shows of them."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select
from telethon.errors import ChannelPrivateError

from smart_retention.api.metrics import build_registry
from smart_retention.collector import Collector
from smart_retention.sources.telegram.client import TelegramUnreachable
from smart_retention.sources.telegram.limits import FLOOD_WAIT_MARGIN_S
from smart_retention.storage import migrate
from smart_retention.storage.channels import (
    StoredChannels,
    save_channel,
    tracked_channels,
    untrack_channel,
)
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts
from telegram_fakes import Clock, FakeTelegram, make_source, post

T0 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
A = 1234567890
HASH_A = -4511234567890123456
FRESH_INTERVAL = timedelta(minutes=10)


def track(engine: Engine, channel_id: int = A, access_hash: int = HASH_A) -> None:
    with engine.begin() as connection:
        save_channel(
            connection,
            channel_id,
            access_hash=access_hash,
            username="recsys",
            title="RecSys",
            now=T0 - timedelta(days=1),
        )


def cycle(engine: Engine, telegram: FakeTelegram, now: datetime, batch_size: int = 100) -> Any:
    """One collection cycle at `now` by a source of its own, as a new worker would run it."""
    clock = Clock(now)
    source = make_source(telegram, StoredChannels(engine), clock)
    try:
        return Collector(engine, source, batch_size=batch_size).run_cycle(now)
    finally:
        source.close()


def check_rows(engine: Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(post_metrics_checks)).mappings()
        return {row["msg_id"]: dict(row) for row in rows}


def snapshots(engine: Engine, msg_id: int) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = (
            select(post_metrics.c.views, post_metrics.c.reactions)
            .where(post_metrics.c.msg_id == msg_id)
            .order_by(post_metrics.c.snapshot_time)
        )
        return [tuple(row) for row in connection.execute(query)]


def deleted_at(engine: Engine) -> dict[int, datetime | None]:
    with engine.connect() as connection:
        query = select(posts.c.msg_id, posts.c.deleted_at)
        return {msg_id: moment for msg_id, moment in connection.execute(query)}


def scrape(engine: Engine, now: datetime) -> dict[tuple[str, tuple[Any, ...]], float]:
    """The deferral samples of /metrics at `now`."""
    text = generate_latest(build_registry(engine, lambda: now)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "deferred" in sample.name
    }


def test_a_cycle_discovers_new_posts_and_stores_their_first_observation(engine: Engine) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=30), views=10 * i) for i in range(1, 6)))
    stats = cycle(engine, telegram, T0)
    assert (stats.checks, stats.saved, stats.missing, stats.deferred) == (5, 5, 0, 0)
    with engine.connect() as connection:
        registered = connection.execute(select(posts.c.msg_id, posts.c.posted_at)).all()
        assert tracked_channels(connection)[0].last_msg_id == 5
    assert sorted(registered) == [(i, T0 - timedelta(minutes=30)) for i in range(1, 6)]
    assert all(moment.tzinfo is not None for _, moment in registered)
    assert snapshots(engine, 3) == [(30, 7)]
    # A second cycle reads only after message 5: one history request, nothing new.
    calls_before = len(telegram.calls)
    cycle(engine, telegram, T0 + timedelta(minutes=1))
    assert telegram.calls[calls_before:] == [("get_history", A, 5)]


def test_a_post_missing_max_misses_times_in_a_row_is_no_longer_polled(engine: Engine) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=100) for i in range(1, 4)))
    cycle(engine, telegram, T0)
    telegram.delete(A, 2)
    telegram.omitted.add((A, 3))  # post 3 is left out once, then comes back
    now = T0 + FRESH_INTERVAL
    stats = cycle(engine, telegram, now)
    assert (stats.checks, stats.missing) == (1, 2)
    rows = check_rows(engine)
    assert (rows[2]["miss_count"], rows[2]["missing_since"]) == (1, now)
    assert rows[2]["last_checked_at"] == now and rows[2]["check_count"] == 1
    assert rows[2]["last_views"] == 100  # the live numbers stay the last observed ones

    telegram.omitted.clear()
    for misses in (2, 3):
        now += FRESH_INTERVAL
        cycle(engine, telegram, now)
        assert check_rows(engine)[2]["miss_count"] == misses
    rows = check_rows(engine)
    assert rows[2]["missing_since"] == T0 + FRESH_INTERVAL
    assert (rows[3]["miss_count"], rows[3]["missing_since"]) == (0, None)
    assert deleted_at(engine) == {1: None, 2: now, 3: None}
    # Its snapshot stays; no miss stored one.
    assert snapshots(engine, 2) == [(100, 7)]

    calls_before = len(telegram.calls)
    cycle(engine, telegram, now + FRESH_INTERVAL)
    fetched = [ids for name, _, ids in telegram.calls[calls_before:] if name == "get_messages"]
    assert fetched == [[1, 3]]


def test_a_never_checked_post_that_is_gone_gets_a_check_row_marked_missing(
    engine: Engine,
) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(post(A, 1, T0 - timedelta(minutes=5)), post(A, 2, T0 - timedelta(minutes=5)))
    with engine.begin() as connection:
        # Discovered by an earlier run, deleted before its first check.
        from smart_retention.observation import PostInfo, PostKey
        from smart_retention.storage import repository

        infos = [PostInfo(PostKey(A, i), T0 - timedelta(minutes=5)) for i in (1, 2)]
        repository.register_posts(connection, infos, T0)
    telegram.delete(A, 2)
    stats = cycle(engine, telegram, T0)
    assert (stats.checks, stats.saved, stats.missing) == (1, 1, 1)
    row = check_rows(engine)[2]
    assert (row["miss_count"], row["check_count"], row["save_count"]) == (1, 0, 0)
    assert row["last_views"] is None and row["last_saved_at"] is None
    assert snapshots(engine, 2) == []


def test_reactions_going_down_are_stored(engine: Engine) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(post(A, 1, T0 - timedelta(minutes=5), views=100, reactions=(6, 4)))
    cycle(engine, telegram, T0)
    telegram.add(post(A, 1, T0 - timedelta(minutes=5), views=100, reactions=(3,)))
    cycle(engine, telegram, T0 + FRESH_INTERVAL)
    assert snapshots(engine, 1) == [(100, 10), (100, 3)]


def test_a_flood_wait_in_the_middle_of_a_run_keeps_committed_batches_and_defers(
    engine: Engine,
) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=i) for i in range(1, 251)))
    assert cycle(engine, telegram, T0).checks == 250

    second = T0 + FRESH_INTERVAL
    # The second run: a history request, then the first batch's request succeeds and the
    # second batch's is told to wait ten minutes.
    telegram.floods[len(telegram.calls) + 3] = 600
    calls_before = len(telegram.calls)
    stats = cycle(engine, telegram, second)
    until = second + timedelta(seconds=600 + FLOOD_WAIT_MARGIN_S)
    assert (stats.checks, stats.deferred, stats.batches) == (100, 150, 3)
    assert [name for name, _, _ in telegram.calls[calls_before:]] == [
        "get_history",
        "get_messages",
        "get_messages",  # told to wait; the third batch sends nothing
    ]
    rows = check_rows(engine)
    assert {rows[i]["last_checked_at"] for i in range(1, 101)} == {second}
    assert {rows[i]["deferred_until"] for i in range(1, 101)} == {None}
    assert {rows[i]["last_checked_at"] for i in range(101, 251)} == {T0}
    assert {rows[i]["deferred_until"] for i in range(101, 251)} == {until}
    with engine.connect() as connection:
        stored = connection.execute(select(channels.c.deferred_until)).scalar_one()
    assert stored == until

    # /metrics shows the deferral.
    assert scrape(engine, second) == {
        ("smart_retention_channels_deferred", ()): 1.0,
        (
            "smart_retention_channel_deferred_until_timestamp_seconds",
            (("channel_id", str(A)), ("username", "recsys")),
        ): until.timestamp(),
    }

    # Another worker, before the wait ends: asks Telegram nothing, still defers.
    calls_before = len(telegram.calls)
    stats = cycle(engine, telegram, second + timedelta(minutes=5))
    assert (stats.checks, stats.deferred) == (0, 150)
    assert telegram.calls[calls_before:] == []

    # After the wait: everything due is collected and the marks are cleared.
    after = until + timedelta(minutes=1)
    stats = cycle(engine, telegram, after)
    assert (stats.checks, stats.deferred) == (250, 0)
    assert {row["deferred_until"] for row in check_rows(engine).values()} == {None}
    assert scrape(engine, after) == {("smart_retention_channels_deferred", ()): 0.0}


def test_a_channel_the_account_cannot_read_for_a_while_loses_no_posts(engine: Engine) -> None:
    """ChannelPrivateError on every run (more than max_misses of them) defers the
    channel; its posts never get deleted_at, and are collected once access is back."""
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=10) for i in range(1, 4)))
    cycle(engine, telegram, T0)
    now = T0
    for _ in range(5):
        now += timedelta(hours=2)  # after each deferral ended
        # Discovery's history request passes; the fetch is refused.
        telegram.errors[len(telegram.calls) + 2] = ChannelPrivateError(request=None)
        stats = cycle(engine, telegram, now)
        assert (stats.checks, stats.missing, stats.deferred) == (0, 0, 3)
    assert deleted_at(engine) == {1: None, 2: None, 3: None}
    assert {row["miss_count"] for row in check_rows(engine).values()} == {0}
    with engine.connect() as connection:
        assert tracked_channels(connection)[0].deferred_until == now + timedelta(hours=1)
    stats = cycle(engine, telegram, now + timedelta(hours=2))
    assert (stats.checks, stats.missing) == (3, 0)


def test_a_lost_connection_rolls_back_its_batch_and_keeps_the_committed_ones(
    engine: Engine,
) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=i) for i in range(1, 251)))
    # Discovery (backfill, three history pages), the first batch's fetch; the second fails.
    telegram.errors[6] = ConnectionError("Cannot send requests while disconnected")
    with pytest.raises(TelegramUnreachable, match="cannot reach Telegram"):
        cycle(engine, telegram, T0)
    rows = check_rows(engine)
    assert sorted(rows) == list(range(1, 101))
    # The next run goes on from there.
    assert cycle(engine, telegram, T0 + timedelta(minutes=1)).checks == 150


def test_re_adding_a_channel_polls_its_posts_that_misses_ended(engine: Engine) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=10) for i in (1, 2)))
    cycle(engine, telegram, T0)
    telegram.omitted.add((A, 2))  # e.g. a restricted post, for a while
    now = T0
    for _ in range(3):
        now += FRESH_INTERVAL
        cycle(engine, telegram, now)
    assert deleted_at(engine)[2] == now
    telegram.omitted.clear()
    track(engine)  # channels add, again
    assert deleted_at(engine) == {1: None, 2: None}
    assert check_rows(engine)[2]["miss_count"] == 0
    stats = cycle(engine, telegram, now + FRESH_INTERVAL)
    assert (stats.checks, stats.missing) == (2, 0)


def test_a_removed_channel_is_not_polled_nor_rejected_and_its_data_stays(engine: Engine) -> None:
    track(engine)
    telegram = FakeTelegram()
    telegram.add(*(post(A, i, T0 - timedelta(minutes=5), views=10) for i in (1, 2)))
    cycle(engine, telegram, T0)
    removed_at = T0 + timedelta(minutes=1)
    with engine.begin() as connection:
        untrack_channel(connection, A, removed_at)
    calls_before = len(telegram.calls)
    stats = cycle(engine, telegram, T0 + FRESH_INTERVAL)
    assert (stats.checks, stats.rejected, stats.missing) == (0, 0, 0)
    assert telegram.calls[calls_before:] == []
    assert deleted_at(engine) == {1: removed_at, 2: removed_at}
    assert snapshots(engine, 1) == [(10, 7)]
    # Added again: polled again.
    track(engine)
    stats = cycle(engine, telegram, T0 + 2 * FRESH_INTERVAL)
    assert (stats.checks, stats.rejected) == (2, 0)


def test_migration_0002_downgrades_and_upgrades_with_data(bare_engine: Engine) -> None:
    migrate.upgrade(bare_engine)
    track(bare_engine)
    migrate.downgrade(bare_engine, "0001")
    assert migrate.current_revision(bare_engine) == "0001"
    with bare_engine.connect() as connection:
        columns = connection.exec_driver_sql("SELECT * FROM channels").keys()
    assert "access_hash" not in columns and "deferred_until" not in columns
    migrate.upgrade(bare_engine)
    with bare_engine.connect() as connection:
        row = connection.execute(select(channels)).mappings().one()
    assert row["channel_id"] == A and row["access_hash"] is None and row["username"] == "recsys"
