"""Tier runs, the embedded scheduler (`smart-retention run`) and the source setting."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from threading import Event
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError
from typer.testing import CliRunner

from smart_retention import cli
from smart_retention.collector import BATCH_ATTEMPTS, Collector
from smart_retention.errors import UserError
from smart_retention.observation import PostKey
from smart_retention.schedule import DEFAULT_TIERS, Tier
from smart_retention.scheduler import (
    DATABASE_RETRY_S,
    EmbeddedScheduler,
    plan_slices,
    register_discovered,
    run_tier,
    slice_bounds,
    tiers_in_age_range,
)
from smart_retention.sources import FetchResult
from smart_retention.sources.factory import (
    SourceSettingError,
    build_source,
    default_synthetic_start,
)
from smart_retention.sources.recording import RecordedSource
from smart_retention.sources.synthetic import SyntheticSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks

CLI = Path(sys.executable).parent / "smart-retention"
SOURCE_VARIABLE = "SMART_RETENTION_SOURCE"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# 600 posts spread over the last 31 days before NOW: every tier has some, a few are
# older than the schedule polls.
SYNTHETIC = {"channels": 2, "posts_per_channel": 300, "days": 31.0, "start": NOW - 31 * DAY}
BATCH_SIZE = 25
# Long enough for a subprocess to start, migrate and run every tier once.
CLI_TIMEOUT_S = 60


def _synthetic() -> SyntheticSource:
    return SyntheticSource(**SYNTHETIC)  # type: ignore[arg-type]


def _state(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as connection:
        snapshots = connection.execute(
            select(post_metrics).order_by(*post_metrics.primary_key.columns)
        ).all()
        checks = connection.execute(
            select(post_metrics_checks).order_by(*post_metrics_checks.primary_key.columns)
        ).all()
    return snapshots, checks


def _reference_state(tmp_path: Path, tier_names: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """What the collector's own cycle stores for these tiers at NOW, on SQLite."""
    reference = make_engine(f"sqlite:///{tmp_path / 'reference.sqlite3'}")
    migrate.upgrade(reference)
    collector = Collector(reference, _synthetic(), batch_size=BATCH_SIZE)
    for name in tier_names:
        collector.run_cycle(NOW, [name])
    state = _state(reference)
    reference.dispose()
    return state


# --- age ranges and slices ---


@pytest.mark.parametrize(
    ("min_age", "max_age", "expected"),
    [
        (None, None, [("fresh", 0 * HOUR, HOUR), ("recent", HOUR, 24 * HOUR),
                      ("daily", DAY, 7 * DAY), ("weekly", 7 * DAY, 30 * DAY)]),
        (0 * HOUR, HOUR, [("fresh", 0 * HOUR, HOUR)]),
        (7 * DAY, 30 * DAY, [("weekly", 7 * DAY, 30 * DAY)]),
        (HOUR / 2, 2 * HOUR, [("fresh", HOUR / 2, HOUR), ("recent", HOUR, 2 * HOUR)]),
        (30 * DAY, None, []),
        (2 * HOUR, 2 * HOUR, []),
    ],
)  # fmt: skip
def test_an_age_range_selects_the_tiers_cut_to_it_keeping_their_intervals(
    min_age: timedelta | None, max_age: timedelta | None, expected: list[tuple]
) -> None:
    tiers = tiers_in_age_range(DEFAULT_TIERS, min_age, max_age)
    assert [(t.name, t.min_age, t.max_age) for t in tiers] == expected
    intervals = {t.name: t.interval for t in DEFAULT_TIERS}
    assert all(t.interval == intervals[t.name] for t in tiers)


T = NOW


@pytest.mark.parametrize(
    ("posted_minutes", "size", "expected_sizes"),
    [
        ([], 3, []),
        ([1, 2, 3], 3, [3]),
        ([1, 2, 3, 4], 3, [3, 1]),
        ([1, 2, 3, 4, 5, 6], 3, [3, 3]),
        ([1, 2, 2, 2, 3], 2, [4, 1]),  # equal moments are never split
        ([5, 5, 5, 5], 1, [4]),
    ],
)
def test_slices_hold_size_posts_each_and_never_split_equal_moments(
    posted_minutes: list[int], size: int, expected_sizes: list[int]
) -> None:
    posted = [T + timedelta(minutes=m) for m in posted_minutes]
    bounds = slice_bounds(T, T + HOUR, posted, size)
    assert [sum(lo < p <= hi for p in posted) for lo, hi in bounds] == expected_sizes


@given(
    st.lists(st.integers(min_value=1, max_value=60), max_size=80).map(sorted),
    st.integers(min_value=1, max_value=10),
)
def test_slices_cover_the_range_without_overlap_and_are_as_few_as_possible(
    posted_minutes: list[int], size: int
) -> None:
    posted = [T + timedelta(minutes=m) for m in posted_minutes]
    bounds = slice_bounds(T, T + HOUR, posted, size)
    if not posted:
        assert bounds == []
        return
    assert bounds[0][0] == T and bounds[-1][1] == T + HOUR
    assert all(a[1] == b[0] for a, b in pairwise(bounds))
    counts = [sum(lo < p <= hi for p in posted) for lo, hi in bounds]
    assert sum(counts) == len(posted), "every post is in exactly one slice"
    assert all(count >= size for count in counts[:-1]), "only the last slice is short"
    assert all(count > 0 for count in counts)


def test_the_slices_of_a_tier_hold_every_due_post_once(engine: Engine) -> None:
    register_discovered(engine, _synthetic(), NOW, BATCH_SIZE)
    weekly = [t for t in DEFAULT_TIERS if t.name == "weekly"]
    slices = plan_slices(engine, weekly, NOW, 100)
    assert len(slices) > 3
    assert slices[0].max_age == 30 * DAY and slices[-1].min_age == 7 * DAY
    for older, younger in pairwise(slices):
        assert older.min_age == younger.max_age
    assert {s.interval for s in slices} == {DAY}


# --- tier runs ---


def test_a_tier_run_stores_what_the_collectors_own_cycle_stores(
    engine: Engine, tmp_path: Path
) -> None:
    source = _synthetic()
    summaries = [run_tier(engine, source, [tier], NOW, BATCH_SIZE) for tier in DEFAULT_TIERS]
    assert all(s.status == "done" and s.checks > 0 for s in summaries)
    assert _state(engine) == _reference_state(tmp_path, [t.name for t in DEFAULT_TIERS])

    again = [run_tier(engine, source, [tier], NOW, BATCH_SIZE) for tier in DEFAULT_TIERS]
    assert [s.checks for s in again] == [0, 0, 0, 0], "a second run at the same moment"


def test_a_finished_tier_run_records_its_cycle_metrics(engine: Engine) -> None:
    """What /metrics shows per tier: cycle duration and last successful cycle."""
    from smart_retention.api.metrics import CYCLE_SECONDS, LAST_SUCCESS

    before = LAST_SUCCESS.labels(tier="weekly")._value.get()
    observed_before = CYCLE_SECONDS.labels(tier="weekly")._sum.get()
    summary = run_tier(engine, _synthetic(), [DEFAULT_TIERS[-1]], NOW, BATCH_SIZE)
    assert summary.status == "done" and summary.checks > 0
    assert LAST_SUCCESS.labels(tier="weekly")._value.get() > before
    assert CYCLE_SECONDS.labels(tier="weekly")._sum.get() > observed_before


class _StopAfterFirstFetch:
    """The synthetic source; asks the run to stop once its first batch is fetched."""

    def __init__(self, stop: Event) -> None:
        self.inner = _synthetic()
        self.stop = stop

    def discover(self, now: datetime) -> Any:
        return self.inner.discover(now)

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        self.stop.set()
        return self.inner.fetch(keys, now)


def test_a_stop_lands_between_batches_and_the_next_run_completes_the_work(
    engine: Engine, tmp_path: Path
) -> None:
    stop = Event()
    weekly = [t for t in DEFAULT_TIERS if t.name == "weekly"]
    stopped = run_tier(engine, _StopAfterFirstFetch(stop), weekly, NOW, BATCH_SIZE, stop)

    assert stopped.status == "stopped"
    assert stopped.checks == BATCH_SIZE and stopped.batches == 1
    snapshots, checks = _state(engine)
    assert len(checks) == BATCH_SIZE, "the first batch is committed, nothing after it"
    assert sum(row.save_count for row in checks) == len(snapshots)

    finished = run_tier(engine, _synthetic(), weekly, NOW, BATCH_SIZE)
    assert finished.status == "done" and finished.checks > 0
    assert _state(engine) == _reference_state(tmp_path, ["weekly"])


class _Clock:
    """A monotonic clock that only moves when the scheduler waits."""

    def __init__(self, stop: Event, until_s: float) -> None:
        self.now_s = 0.0
        self.stop = stop
        self.until_s = until_s
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.now_s += timeout or 0.0
        if self.now_s > self.until_s:
            self.stop.set()
        return self.stop.is_set()


def _on_a_fake_clock(
    engine: Engine,
    until_s: float,
    wall_clock: Callable[[float], datetime],
    tiers: Sequence[Tier] = DEFAULT_TIERS,
) -> tuple[EmbeddedScheduler, _Clock, list[tuple[str, float]]]:
    """A scheduler of the synthetic source on a clock that moves only when it waits, and
    the (tier, seconds) of each run it makes, until `until_s`."""
    stop = Event()
    clock = _Clock(stop, until_s=until_s)
    stop.wait = clock.wait  # type: ignore[method-assign]
    runs: list[tuple[str, float]] = []
    scheduler = EmbeddedScheduler(
        engine,
        _synthetic(),
        batch_size=BATCH_SIZE,
        tiers=tiers,
        stop=stop,
        monotonic=clock.monotonic,
        wall_clock=lambda: wall_clock(clock.now_s),
        on_run=lambda run: runs.append((run.tier, clock.now_s)),
    )
    return scheduler, clock, runs


def test_the_embedded_scheduler_runs_each_tier_at_its_interval(engine: Engine) -> None:
    scheduler, clock, runs = _on_a_fake_clock(
        engine, until_s=3600, wall_clock=lambda seconds: NOW + timedelta(seconds=seconds)
    )
    summary = scheduler.run()

    def times(name: str) -> list[float]:
        return [at for tier, at in runs if tier == name]

    assert times("fresh") == [0, 600, 1200, 1800, 2400, 3000, 3600]
    assert times("recent") == [0, 1800, 3600]
    assert times("daily") == [0] and times("weekly") == [0]
    assert summary.runs == len(runs) and summary.stopped
    assert summary.checks > 0
    assert all(wait > 0 for wait in clock.waits), "it never spins"


def test_the_scheduler_outlives_a_lost_database_and_tries_the_tier_again(
    postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch's connection is cut on every attempt (as while a database
    restarts): the tier run ends with its first batch committed, and is tried again
    DATABASE_RETRY_S later; the summary counts every committed check."""
    application = "smart-retention-scheduler-test"
    url = make_url(postgres_database_url)
    engine = make_engine(
        url.difference_update_query(["options"]).render_as_string(hide_password=False),
        connect_args={"application_name": application, "options": url.query["options"]},
    )
    admin = make_engine(postgres_database_url)
    claims: list[str] = []
    real_execute = psycopg.Cursor.execute

    def cut_second_batch(cursor: psycopg.Cursor, query: Any, *args: Any, **kwargs: Any) -> Any:
        if str(query).startswith("SELECT posts.channel_id"):  # a batch's claim
            claims.append(str(query))
            if 2 <= len(claims) < 2 + BATCH_ATTEMPTS:
                with admin.begin() as connection:
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name"
                        ),
                        {"name": application},
                    )
        return real_execute(cursor, query, *args, **kwargs)

    try:
        migrate.upgrade(engine)
        monkeypatch.setattr(psycopg.Cursor, "execute", cut_second_batch)
        scheduler, _, runs = _on_a_fake_clock(
            engine,
            until_s=DATABASE_RETRY_S + 1,
            wall_clock=lambda _seconds: NOW,
            tiers=[tier for tier in DEFAULT_TIERS if tier.name == "daily"],
        )
        summary = scheduler.run()
        monkeypatch.undo()
        # The first run lost its connection and was tried again DATABASE_RETRY_S later.
        assert (summary.failed_runs, runs) == (1, [("daily", DATABASE_RETRY_S)])
        state = _state(engine)
        assert state == _reference_state(tmp_path, ["daily"])
        assert summary.checks == sum(check.check_count for check in state[1])
    finally:
        engine.dispose()
        admin.dispose()


def test_the_scheduler_stops_on_a_database_error_that_would_come_back(
    postgres_database_url: str,
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE post_metrics_checks CASCADE"))
        # Not a lost connection: the same failure would come back, so it is raised.
        with pytest.raises(ProgrammingError):
            EmbeddedScheduler(engine, _synthetic(), batch_size=BATCH_SIZE).run()
    finally:
        engine.dispose()


def test_once_runs_every_tier_one_time_and_returns(engine: Engine) -> None:
    summary = EmbeddedScheduler(engine, _synthetic(), batch_size=BATCH_SIZE).run(once=True)
    assert summary.by_tier == {"fresh": 1, "recent": 1, "daily": 1, "weekly": 1}
    assert not summary.stopped


# --- the command ---


def _run_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_RETENTION_")}
    live_start = (datetime.now(UTC) - 31 * DAY).isoformat()
    env.update(
        SMART_RETENTION_SOURCE=f"synthetic?channels=2&posts=300&days=31&start={live_start}",
        SMART_RETENTION_BATCH_SIZE=str(BATCH_SIZE),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def test_run_once_collects_every_due_tier_on_sqlite_and_a_second_run_finds_nothing(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    env = _run_env()
    first = subprocess.run(
        [CLI, "run", "--once", "--db", db], env=env, capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    for name in ("fresh", "recent", "daily", "weekly"):
        assert f" {name}: done, " in first.stdout
    assert "run done: 4 tier runs" in first.stdout
    _, checks = _state(make_engine(db))
    assert len(checks) > 0
    assert f"{len(checks):,} checks" in first.stdout

    second = subprocess.run(
        [CLI, "run", "--once", "--db", db], env=env, capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "run done: 4 tier runs, 0 checks" in second.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_a_signal_with_a_summary(tmp_path: Path, signum: int) -> None:
    db = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    process = subprocess.Popen(
        [CLI, "run", "--db", db],
        env=_run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + CLI_TIMEOUT_S
        seen = ""
        while " weekly: " not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert " weekly: done" in seen, seen
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert "run stopped: 4 tier runs" in out
    assert "smart-run.stopping signal=" in err


def test_a_missing_or_unknown_source_setting_is_a_one_line_error_naming_it(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'run.sqlite3'}"
    missing = runner.invoke(cli.app, ["run", "--once", "--db", db], env={SOURCE_VARIABLE: None})
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [
        "error: SMART_RETENTION_SOURCE is not set; set it to telegram (live channels, see "
        "README.md 'Collect from Telegram'), replay:FILE or synthetic (see docs/operations.md)"
    ]
    unknown = runner.invoke(
        cli.app, ["run", "--once", "--db", db], env={SOURCE_VARIABLE: "telegran"}
    )
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: SMART_RETENTION_SOURCE='telegran': unknown source kind 'telegran'; "
        "known kinds: replay, synthetic, telegram"
    ]
    option = runner.invoke(cli.app, ["run", "--once", "--db", db, "--source", "synthetic?x=1"])
    assert option.exit_code == 2
    assert option.stderr.startswith("error: --source='synthetic?x=1': unknown option(s) x;")


# --- the source setting ---


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (None, "SMART_RETENTION_SOURCE is not set"),
        ("  ", "SMART_RETENTION_SOURCE is not set"),
        ("kafka:topic", "unknown source kind 'kafka'; known kinds: replay, synthetic, telegram"),
        ("synthetic?posts", "options must read ?name=value&name=value"),
        ("synthetic?posts=1&posts=2", "options must read ?name=value&name=value"),
        ("synthetic?posts=many", "option posts='many' is not a whole number"),
        ("synthetic?colour=red", "unknown option(s) colour; synthetic takes"),
        ("synthetic?start=2026-12-01T00:00:00", "option start='2026-12-01T00:00:00' has no time"),
        ("synthetic?channels=0", "channels and posts_per_channel must be at least 1"),
        ("synthetic:extra", "synthetic takes options, not an argument"),
        ("replay", "replay needs a file: replay:PATH"),
        ("replay:/no/such/file.csv", "/no/such/file.csv: no such file"),
        ("replay:/no/such/file.csv?msgid=x", "unknown option(s) msgid; replay takes"),
    ],
)
def test_a_bad_source_setting_is_one_line_naming_the_setting(
    spec: str | None, message: str
) -> None:
    with pytest.raises(SourceSettingError) as raised:
        build_source(spec)
    text = str(raised.value)
    assert message in text
    assert text.startswith("SMART_RETENTION_SOURCE")
    assert "\n" not in text
    assert isinstance(raised.value, UserError)


def test_synthetic_options_reach_the_source_and_a_plus_in_start_stays_a_plus() -> None:
    source = build_source(
        "synthetic?channels=3&posts=7&days=2&seed=11&start=2026-12-01T00:00:00+00:00"
        "&changed_fraction=0.5"
    )
    assert isinstance(source, SyntheticSource)
    assert (source.channels, source.posts_per_channel, source.seed) == (3, 7, 11)
    assert source.start == datetime(2026, 12, 1, tzinfo=UTC)
    assert source.end == datetime(2026, 12, 3, tzinfo=UTC)
    assert source.changed_fraction == 0.5


def test_synthetic_starts_by_default_half_its_days_before_the_utc_day_began() -> None:
    moment = datetime(2026, 12, 3, 17, 45, tzinfo=UTC)
    assert default_synthetic_start(30, moment) == datetime(2026, 11, 18, tzinfo=UTC)
    assert isinstance(build_source("synthetic"), SyntheticSource)


def test_replay_reads_the_file_with_its_column_names_and_channel(tmp_path: Path) -> None:
    path = tmp_path / "poll-log.csv"
    path.write_text(
        "post_id,post_date_utc,snapshot_utc,views\n"
        "5,2026-12-01T10:00:00+00:00,2026-12-01T10:05:00+00:00,40\n"
        "5,2026-12-01T10:00:00+00:00,2026-12-01T10:15:00+00:00,90\n"
    )
    source = build_source(
        f"replay:{path}?channel_id=9&msg_id=post_id&posted_at=post_date_utc"
        "&observed_at=snapshot_utc"
    )
    assert isinstance(source, RecordedSource)
    moment = datetime(2026, 12, 1, 10, 20, tzinfo=UTC)
    assert [info.key for info in source.discover(moment)] == [PostKey(9, 5)]
    assert source.fetch([PostKey(9, 5)], moment).observations[0].counters.views == 90
