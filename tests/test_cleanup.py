"""Duplicate cleanup (DESIGN.md invariant 3), on SQLite and PostgreSQL.

A row is a duplicate when the row just before it for the same post has the same value in
every counter, unknown equal to unknown and different from any number. The cleanup
deletes duplicates only, never a post's first row, never a row a check row points at; the
dry run counts what the live run deletes; a second run deletes nothing; a run killed
mid-batch and run again ends exactly as an uninterrupted run.
"""

import math
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.engine import make_url

from conftest import postgres_schema_url, require_postgres
from smart_retention.cleanup import (
    DEFAULT_BATCH_SIZE,
    CleanupAlreadyRunning,
    CleanupReport,
    cleanup_lock,
    run_cleanup,
)
from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostInfo, PostKey
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate, repository
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts

T0 = datetime(2026, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=10)
CHANNEL = 5
CLI = os.path.join(os.path.dirname(sys.executable), "smart-retention")

Values = tuple[int | None, int | None, int | None, int | None]
Z: Values = (0, 0, 0, 0)
U: Values = (None, None, None, None)


# --- helpers -------------------------------------------------------------------------


def at(index: int) -> datetime:
    """The moment of a post's `index`-th row: every post's rows share the same moments."""
    return T0 + index * STEP


def store(engine: Engine, series: Mapping[int, Sequence[Values]]) -> None:
    """Posts of CHANNEL (by msg_id) and their rows, the i-th at `at(i)`."""
    infos = [PostInfo(PostKey(CHANNEL, msg_id), T0) for msg_id in series]
    rows = [
        {
            "channel_id": CHANNEL,
            "msg_id": msg_id,
            "snapshot_time": at(index),
            **dict(zip(Counters._fields, values, strict=True)),
        }
        for msg_id, values_list in series.items()
        for index, values in enumerate(values_list)
    ]
    with engine.begin() as connection:
        repository.register_posts(connection, infos, T0)
        if rows:
            connection.execute(post_metrics.insert(), rows)


def point_checks_at(engine: Engine, pointed: Mapping[int, int]) -> None:
    """A check row for each post in `pointed`, its last_saved_at at that row index."""
    with engine.begin() as connection:
        for msg_id, index in pointed.items():
            connection.execute(
                post_metrics_checks.insert().values(
                    channel_id=CHANNEL,
                    msg_id=msg_id,
                    last_checked_at=at(index),
                    last_changed_at=at(index),
                    last_saved_at=at(index),
                    check_count=index + 1,
                    save_count=index + 1,
                    checks_since_save=0,
                    post_age_hours=1.0,
                )
            )


def stored(engine: Engine) -> dict[int, list[Values]]:
    found: dict[int, list[Values]] = {}
    query = select(post_metrics).order_by(post_metrics.c.msg_id, post_metrics.c.snapshot_time)
    with engine.connect() as connection:
        for row in connection.execute(query):
            found.setdefault(row.msg_id, []).append(
                (row.views, row.forwards, row.reactions, row.replies)
            )
    return found


def stored_times(engine: Engine) -> dict[int, list[datetime]]:
    found: dict[int, list[datetime]] = {}
    query = select(post_metrics.c.msg_id, post_metrics.c.snapshot_time).order_by(
        post_metrics.c.msg_id, post_metrics.c.snapshot_time
    )
    with engine.connect() as connection:
        for msg_id, moment in connection.execute(query):
            found.setdefault(msg_id, []).append(moment)
    return found


def kept_by_the_rule(
    series: Mapping[int, Sequence[Values]], pointed: Mapping[int, int] | None = None
) -> dict[int, list[Values]]:
    """The rule, in Python: keep a post's first row, every row that differs from the row
    before it, and the row a check points at."""
    pointed = pointed or {}
    return {
        msg_id: [
            values
            for index, values in enumerate(rows)
            if index == 0 or values != rows[index - 1] or pointed.get(msg_id) == index
        ]
        for msg_id, rows in series.items()
        if rows
    }


def distinct_runs(rows: Sequence[Values]) -> list[Values]:
    return [values for index, values in enumerate(rows) if index == 0 or values != rows[index - 1]]


def clear(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in (post_metrics_checks, post_metrics, posts, channels):
            connection.execute(delete(table))


@contextmanager
def running_in_thread(target: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """Run `target` in a thread; on leaving, wait for it and re-raise what it raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as error:  # handed to the test thread below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(timeout=120)
        assert not thread.is_alive(), "the thread did not finish"
        if "error" in outcome:
            raise outcome["error"]


# --- the duplicate rule --------------------------------------------------------------

# name -> (one post's rows, the rows the cleanup keeps)
EDGE_CASES: dict[str, tuple[list[Values], list[Values]]] = {
    "a first row of zeros is kept, its repeats go": ([Z, Z, Z], [Z]),
    "a post with one row keeps it": ([Z], [Z]),
    "unknown repeats unknown": ([U, U, U], [U]),
    "unknown differs from zero, both ways": ([Z, U, Z, U], [Z, U, Z, U]),
    "unknown differs from a number in one counter": (
        [(5, None, 0, None), (5, None, 0, None), (5, 0, 0, None), (5, 0, 0, None)],
        [(5, None, 0, None), (5, 0, 0, None)],
    ),
    "decreasing counters are a change": (
        [(10, 2, 1, 1), (9, 2, 1, 1), (9, 2, 1, 1), (9, 1, 1, 1), (10, 1, 1, 1)],
        [(10, 2, 1, 1), (9, 2, 1, 1), (9, 1, 1, 1), (10, 1, 1, 1)],
    ),
    "equal to an older row but not to the one before: kept": (
        [(1, 0, 0, 0), (2, 0, 0, 0), (1, 0, 0, 0)],
        [(1, 0, 0, 0), (2, 0, 0, 0), (1, 0, 0, 0)],
    ),
    "a change in replies alone is a change": (
        [(1, 1, 1, 1), (1, 1, 1, 2)],
        [(1, 1, 1, 1), (1, 1, 1, 2)],
    ),
    "views above 2^31 compare exactly": (
        [(3_000_000_000, 0, 0, 0), (3_000_000_000, 0, 0, 0), (3_000_000_001, 0, 0, 0)],
        [(3_000_000_000, 0, 0, 0), (3_000_000_001, 0, 0, 0)],
    ),
}


@pytest.mark.parametrize("batch_size", [1, 2, 3, DEFAULT_BATCH_SIZE])
def test_the_edge_cases_of_the_duplicate_rule_in_any_batch_size(
    engine: Engine, batch_size: int
) -> None:
    """Each case is one post; all posts share their timestamps, and small batches split
    posts, so a batch often starts in the middle of a run of duplicates."""
    names = list(EDGE_CASES)
    store(engine, {msg_id: EDGE_CASES[name][0] for msg_id, name in enumerate(names, 1)})

    report = run_cleanup(engine, batch_size=batch_size)

    after = stored(engine)
    assert {name: after[msg_id] for msg_id, name in enumerate(names, 1)} == {
        name: kept for name, (_, kept) in EDGE_CASES.items()
    }
    removed = sum(len(rows) - len(kept) for rows, kept in EDGE_CASES.values())
    assert report.duplicates_removed == report.duplicates_found == removed


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_many_posts_with_the_same_timestamps_are_each_compared_with_their_own_rows(
    engine: Engine, batch_size: int
) -> None:
    """12 posts polled at the same 6 moments: 72 rows, 12 per timestamp; post n repeats
    its first value n % 3 times, then changes. Batches are counted by rows."""
    series = {
        msg_id: [(msg_id, 0, 0, 0)] * (1 + msg_id % 3)
        + [(msg_id + 100, 0, 0, 0)] * (5 - msg_id % 3)
        for msg_id in range(1, 13)
    }
    store(engine, series)

    dry = run_cleanup(engine, dry_run=True, batch_size=batch_size)
    live = run_cleanup(engine, batch_size=batch_size)

    assert stored(engine) == kept_by_the_rule(series)
    assert dry.duplicates_found == live.duplicates_removed == 72 - 24
    assert dry.batches == live.batches == math.ceil(72 / batch_size)
    assert live.total_before == 72
    assert live.unique_kept == 24


def test_the_dry_run_counts_what_the_live_run_deletes_and_deletes_nothing(engine: Engine) -> None:
    series = {1: [Z] * 5 + [U] * 3, 2: [(1, 1, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1)]}
    store(engine, series)

    dry = run_cleanup(engine, dry_run=True, batch_size=3)
    assert stored(engine) == series
    assert dry.duplicates_removed == 0
    assert dry.table_bytes_after == dry.table_bytes_before

    live = run_cleanup(engine, batch_size=3)
    assert dry.duplicates_found == live.duplicates_found == live.duplicates_removed == 7
    assert (
        dry.as_json().keys()
        == live.as_json().keys()
        >= {
            "total_before",
            "duplicates_found",
            "duplicates_removed",
            "unique_kept",
            "batches",
            "seconds",
            "table_bytes_before",
            "table_bytes_after",
        }
    )


def test_a_second_run_removes_nothing(engine: Engine) -> None:
    store(engine, {1: [Z] * 4, 2: [U, Z, Z, U, U]})
    first = run_cleanup(engine, batch_size=2)
    before = stored(engine)

    second = run_cleanup(engine, batch_size=2)

    assert first.duplicates_removed == 5
    assert second.duplicates_found == second.duplicates_removed == 0
    assert second.total_before == second.unique_kept == 4
    assert stored(engine) == before


def sqlite_pages(engine: Engine) -> tuple[int, int]:
    """(pages in the file, pages on its freelist)."""
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        return pages, connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()


def postgres_table_state(engine: Engine) -> tuple[int, bool, bool]:
    """(the table's file number, whether VACUUM and ANALYZE ran on it)."""
    query = text(
        "SELECT c.relfilenode, s.last_vacuum IS NOT NULL, s.last_analyze IS NOT NULL "
        "FROM pg_class AS c JOIN pg_stat_user_tables AS s ON s.relid = c.oid "
        "WHERE c.oid = 'post_metrics'::regclass"
    )
    with engine.connect() as connection:
        file_number, vacuumed, analyzed = connection.execute(query).one()
    return file_number, vacuumed, analyzed


def test_afterwards_the_freed_space_is_reusable_and_the_sizes_are_reported(
    engine: Engine,
) -> None:
    """SQLite: the freed pages go on the freelist, and new rows take them rather than
    growing the file. PostgreSQL: VACUUM (ANALYZE) ran, and not FULL (the table was not
    rewritten into a new file)."""
    store(engine, {msg_id: [(msg_id, 0, 0, 0)] * 200 for msg_id in range(1, 11)})
    if engine.dialect.name == "postgresql":
        file_number, _, _ = postgres_table_state(engine)

    report = run_cleanup(engine, batch_size=500)

    assert report.duplicates_removed == 10 * 199
    assert report.table_bytes_before is not None and report.table_bytes_before > 0
    assert report.table_bytes_after is not None and report.table_bytes_after > 0
    if engine.dialect.name == "postgresql":
        assert postgres_table_state(engine) == (file_number, True, True)
        return
    # dbstat counts the table's own pages: the freed ones left it.
    assert report.table_bytes_after < report.table_bytes_before
    pages, free = sqlite_pages(engine)
    assert free > 0
    later = [
        {"channel_id": CHANNEL, "msg_id": msg_id, "snapshot_time": at(200 + i), "views": i}
        for msg_id in range(1, 11)
        for i in range(100)
    ]
    with engine.begin() as connection:
        connection.execute(post_metrics.insert(), later)
    assert sqlite_pages(engine)[0] == pages


# --- the property --------------------------------------------------------------------

COUNTER = st.one_of(st.none(), st.integers(0, 2))
VALUES = st.tuples(COUNTER, COUNTER, COUNTER, COUNTER)


@st.composite
def post_series(draw: st.DrawFn) -> list[Values]:
    """A post's rows drawn from a few values, so repeats (and NULLs) are frequent."""
    pool = draw(st.lists(VALUES, min_size=1, max_size=3))
    return draw(st.lists(st.sampled_from(pool), min_size=1, max_size=12))


@st.composite
def tables(draw: st.DrawFn) -> tuple[dict[int, list[Values]], dict[int, int]]:
    series = draw(st.dictionaries(st.integers(1, 6), post_series(), min_size=1, max_size=4))
    pointed = {
        msg_id: draw(st.integers(0, len(rows) - 1))
        for msg_id, rows in series.items()
        if draw(st.booleans())
    }
    return series, pointed


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(table=tables(), batch_size=st.integers(1, 5))
def test_after_cleanup_each_post_keeps_its_first_row_and_its_series_of_distinct_values(
    engine: Engine, table: tuple[dict[int, list[Values]], dict[int, int]], batch_size: int
) -> None:
    series, pointed = table
    clear(engine)
    store(engine, series)
    point_checks_at(engine, pointed)

    dry = run_cleanup(engine, dry_run=True, batch_size=batch_size)
    live = run_cleanup(engine, batch_size=batch_size)
    again = run_cleanup(engine, batch_size=batch_size + 1)

    after = stored(engine)
    assert after == kept_by_the_rule(series, pointed)
    for msg_id, rows in series.items():
        assert after[msg_id][0] == rows[0]
        assert distinct_runs(after[msg_id]) == distinct_runs(rows)
        # No two consecutive rows are identical, but for a row a check points at.
        repeats = [
            i for i in range(1, len(after[msg_id])) if after[msg_id][i] == after[msg_id][i - 1]
        ]
        assert len(repeats) <= (1 if msg_id in pointed else 0)
    removed = sum(len(rows) for rows in series.values()) - sum(len(r) for r in after.values())
    assert dry.duplicates_found == live.duplicates_removed == removed
    assert again.duplicates_removed == 0
    kept_for_checks = sum(
        1 for msg_id, i in pointed.items() if i > 0 and series[msg_id][i] == series[msg_id][i - 1]
    )
    assert dry.duplicates_kept_for_checks == live.duplicates_kept_for_checks == kept_for_checks


# --- check rows and the collector ----------------------------------------------------


def test_a_duplicate_a_check_row_points_at_is_kept_so_the_collector_still_reads_it(
    engine: Engine,
) -> None:
    """An old collector stored post 1 three times at 50 views; this collector's first check
    also sees 50 and stores it (a first observation for it), and its check row points at
    that row. The cleanup removes the old repeats and keeps the pointed-at row; the next
    check reads its last stored values through it."""
    store(engine, {1: [(50, 0, 0, None)] * 3})
    collector = Collector(engine, RecordedSource([]))
    first = Observation(PostKey(CHANNEL, 1), T0, at(3), Counters(50, 0, 0, None))
    assert collector.check([first]).saved == 1

    report = run_cleanup(engine, batch_size=2)

    assert report.duplicates_removed == 2
    assert report.duplicates_kept_for_checks == 1
    assert stored_times(engine) == {1: [at(0), at(3)]}
    with engine.connect() as connection:
        state = repository.load_post_states(connection, [PostKey(CHANNEL, 1)])[PostKey(CHANNEL, 1)]
    assert state.last_saved_at == at(3)
    assert state.last_stored == Counters(50, 0, 0, None)
    # The next identical check stores nothing: the collector still knows what it stored.
    second = Observation(PostKey(CHANNEL, 1), T0, at(4), Counters(50, 0, 0, None))
    assert collector.check([second]).saved == 0


def test_a_collector_cycle_running_during_the_cleanup_completes_and_its_rows_are_untouched(
    engine: Engine,
) -> None:
    """40 posts with 30 old rows each (one value repeated) are cleaned in batches of 20
    rows, slowed down after each batch, while the collector polls every post three times;
    every poll sees a new value, so it stores a row each time."""
    posts_count, history = 40, 30
    store(engine, {msg_id: [(msg_id, 0, 0, None)] * history for msg_id in range(1, 41)})
    polls = [at(history + 6 * n) for n in range(1, 4)]
    source = RecordedSource(
        [
            Observation(
                PostKey(CHANNEL, msg_id), T0, moment, Counters(1000 * n + msg_id, 0, 0, None)
            )
            for n, moment in enumerate(polls, 1)
            for msg_id in range(1, posts_count + 1)
        ]
    )
    collector = Collector(engine, source, batch_size=7)
    batches_done = threading.Event()

    def slowly(scanned: int, total: int) -> None:
        batches_done.set()
        time.sleep(0.03)

    with running_in_thread(lambda: run_cleanup(engine, batch_size=20, progress=slowly)) as run:
        assert batches_done.wait(timeout=60)
        cycles = [collector.run_cycle(polls[0])]
        assert "result" not in run, "the cleanup ended before the collector's cycle did"
        cycles += [collector.run_cycle(moment) for moment in polls[1:]]
    report: CleanupReport = run["result"]

    assert [cycle.checks for cycle in cycles] == [posts_count] * 3
    assert [cycle.saved for cycle in cycles] == [posts_count] * 3
    assert report.duplicates_removed == posts_count * (history - 1)
    times = stored_times(engine)
    assert times == {msg_id: [at(0), *polls] for msg_id in range(1, posts_count + 1)}
    with engine.connect() as connection:
        dangling = connection.execute(
            select(func.count())
            .select_from(post_metrics_checks)
            .outerjoin(
                post_metrics,
                (post_metrics.c.channel_id == post_metrics_checks.c.channel_id)
                & (post_metrics.c.msg_id == post_metrics_checks.c.msg_id)
                & (post_metrics.c.snapshot_time == post_metrics_checks.c.last_saved_at),
            )
            .where(post_metrics.c.snapshot_time.is_(None))
        ).scalar_one()
    assert dangling == 0


# --- one run at a time ---------------------------------------------------------------


def test_a_second_cleanup_while_one_runs_exits_at_once_with_a_clear_message(
    engine: Engine,
) -> None:
    store(engine, {msg_id: [Z] * 10 for msg_id in range(1, 4)})
    first_batch_done, release = threading.Event(), threading.Event()

    def hold(scanned: int, total: int) -> None:
        first_batch_done.set()
        release.wait(timeout=60)

    with running_in_thread(lambda: run_cleanup(engine, batch_size=5, progress=hold)) as run:
        try:
            assert first_batch_done.wait(timeout=60)
            started = time.perf_counter()
            with pytest.raises(CleanupAlreadyRunning, match="another cleanup is running") as error:
                run_cleanup(engine, batch_size=5)
            assert time.perf_counter() - started < 5
            assert error.value.exit_code == 3
        finally:
            release.set()
    assert run["result"].duplicates_removed == 27
    # The lock went with the first run.
    assert run_cleanup(engine).duplicates_removed == 0


def test_a_cleanup_cli_started_while_the_lock_is_held_exits_with_status_3(
    engine: Engine, database_url: str
) -> None:
    store(engine, {1: [Z] * 3})
    with cleanup_lock(engine):
        result = subprocess.run(
            [CLI, "cleanup", "--yes", "--db", database_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: another cleanup is running on ")
    assert "Traceback" not in result.stderr
    assert stored(engine) == {1: [Z] * 3}


def test_a_symlink_to_a_sqlite_database_meets_the_same_lock(tmp_path: Path) -> None:
    """Two names of one file are one database: the second cleanup must wait its turn."""
    engine = make_engine(f"sqlite:///{tmp_path / 'real.sqlite3'}")
    try:
        migrate.upgrade(engine)
        store(engine, {1: [Z] * 3})
        (tmp_path / "link.sqlite3").symlink_to(tmp_path / "real.sqlite3")
        linked = make_engine(f"sqlite:///{tmp_path / 'link.sqlite3'}")
        try:
            with cleanup_lock(engine), pytest.raises(CleanupAlreadyRunning):
                run_cleanup(linked)
        finally:
            linked.dispose()
        assert stored(engine) == {1: [Z] * 3}
    finally:
        engine.dispose()


def test_ctrl_c_during_a_cleanup_says_what_stays_and_how_to_finish(
    engine: Engine, database_url: str
) -> None:
    store(engine, {msg_id: [Z] * 40 for msg_id in range(1, 200)})
    process = subprocess.Popen(
        [CLI, "cleanup", "--yes", "--batch-size", "1", "--db", database_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A suite run in the background passes SIGINT on as ignored; a terminal would not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Interrupt once the cleanup has committed some batches, not while it starts up.
    deadline = time.monotonic() + 60
    while sum(map(len, stored(engine).values())) == 199 * 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: cleanup interrupted: the batches committed so far stay, the one in progress "
        "was rolled back; run the same command again to finish"
    )
    # Running again finishes the work: each post keeps its first row only.
    run_cleanup(engine)
    assert stored(engine) == {msg_id: [Z] for msg_id in range(1, 200)}


# --- killed mid-batch and run again --------------------------------------------------

GENERATED_POSTS = 40
GENERATED_ROWS_PER_POST = 1_000
# About 94% of the generated rows repeat the row before them, as in the reference table.
GENERATE = text(
    """
    INSERT INTO post_metrics (channel_id, msg_id, snapshot_time, views, forwards, reactions)
    SELECT :channel, p, :t0 + i * interval '5 minutes',
           100 + sum(CASE WHEN i > 0 AND (p * 40503 + i * 2654435761) % 4294967291 % 100 < 6
                          THEN 1 ELSE 0 END) OVER (PARTITION BY p ORDER BY i),
           0, 0
    FROM generate_series(1, :posts) AS p CROSS JOIN generate_series(0, :rows - 1) AS i
    ORDER BY i, p
    """
)
CHECKSUM = text(
    "SELECT count(*), md5(string_agg(concat_ws(',', channel_id, msg_id, snapshot_time, views, "
    "forwards, reactions, replies), ';' ORDER BY channel_id, msg_id, snapshot_time)) "
    "FROM post_metrics"
)


def generated_table(url: str) -> Engine:
    engine = make_engine(url)
    migrate.upgrade(engine)
    infos = [PostInfo(PostKey(CHANNEL, p), T0) for p in range(1, GENERATED_POSTS + 1)]
    with engine.begin() as connection:
        repository.register_posts(connection, infos, T0)
        params = {"channel": CHANNEL, "t0": T0, "posts": GENERATED_POSTS}
        connection.execute(GENERATE, {**params, "rows": GENERATED_ROWS_PER_POST})
    return engine


def count_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(post_metrics)).scalar_one()


def checksum(engine: Engine) -> tuple[int, str]:
    with engine.connect() as connection:
        rows, digest = connection.execute(CHECKSUM).one()
    return rows, digest


def a_delete_is_running(engine: Engine, application_name: str) -> bool:
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
        "AND state = 'active' AND query LIKE 'DELETE%'"
    )
    with engine.connect() as connection:
        return connection.execute(query, {"name": application_name}).scalar_one() > 0


def wait_for_the_lock_to_be_free(engine: Engine) -> None:
    """The killed client's server session ends once it notices the closed socket."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with cleanup_lock(engine):
                return
        except CleanupAlreadyRunning:
            time.sleep(0.05)
    pytest.fail("the killed cleanup's lock was not released within 30 seconds")


@pytest.mark.postgres
def test_a_cleanup_killed_mid_batch_and_run_again_ends_exactly_as_an_uninterrupted_run() -> None:
    """40,000 generated rows, two identical copies. One is cleaned in one go; on the other
    `smart-retention cleanup --yes` runs in batches of 200 rows and is SIGKILLed while a
    DELETE runs, after some batches committed; run again, it ends with the same rows."""
    require_postgres()
    name = f"cleanup-{uuid.uuid4().hex[:8]}"
    with postgres_schema_url() as whole_url, postgres_schema_url() as killed_url:
        whole, killed = generated_table(whole_url), generated_table(killed_url)
        total = count_rows(killed)
        assert checksum(whole) == checksum(killed)

        run_cleanup(whole)
        final_rows, _ = checksum(whole)

        url = make_url(killed_url).update_query_dict({"application_name": name})
        command = [CLI, "cleanup", "--yes", "--batch-size", "200", "--json"]
        process = subprocess.Popen(
            [*command, "--db", url.render_as_string(hide_password=False)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                if total - count_rows(killed) >= 1_000 and a_delete_is_running(killed, name):
                    break
                time.sleep(0.005)
            assert process.poll() is None, "the cleanup ended before it could be killed"
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        interrupted = count_rows(killed)
        assert final_rows < interrupted < total

        wait_for_the_lock_to_be_free(killed)
        again = subprocess.run(
            [*command, "--db", killed_url], capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr

        assert checksum(killed) == checksum(whole)
        whole.dispose()
        killed.dispose()


# --- asking before deleting ----------------------------------------------------------


def run_cli_on_a_terminal(args: Sequence[str], answer: str) -> subprocess.CompletedProcess[str]:
    """Run the command with a pseudo-terminal as its stdin and `answer` typed into it."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        return subprocess.run(
            [CLI, *args],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)


def test_without_yes_and_without_a_terminal_the_cleanup_refuses_with_status_2(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'unasked.sqlite3'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    store(engine, {1: [Z] * 3})

    result = subprocess.run(
        [CLI, "cleanup", "--db", url],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: refusing to delete without --yes: there is no terminal to ask on; "
        "count first with --dry-run, then run with --yes"
    )
    assert stored(engine) == {1: [Z] * 3}
    engine.dispose()


def test_on_a_terminal_the_cleanup_asks_first_and_deletes_only_after_yes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'asked.sqlite3'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    store(engine, {1: [Z] * 3, 2: [U] * 2})

    declined = run_cli_on_a_terminal(["cleanup", "--db", url], "n\n")
    assert declined.returncode == 1, declined.stderr
    assert "Delete the duplicates among the 5 rows of post_metrics in sqlite:///" in declined.stderr
    assert "cleanup cancelled: nothing deleted" in declined.stderr
    assert stored(engine) == {1: [Z] * 3, 2: [U] * 2}

    accepted = run_cli_on_a_terminal(["cleanup", "--batch-size", "2", "--db", url], "y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert stored(engine) == {1: [Z], 2: [U]}
    printed = {
        cells[0]: cells[1]
        for line in accepted.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃|").split("│") if c.strip()]) == 2
    }
    assert printed["rows before"] == "5"
    assert printed["duplicates found"] == printed["duplicates removed"] == "3"
    assert printed["unique rows kept"] == "2"
    assert printed["batches"] == "3"
    engine.dispose()
