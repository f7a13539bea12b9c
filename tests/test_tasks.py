"""The Celery app: its configuration, and tier runs on real worker processes.

The worker tests start `celery -A smart_retention.tasks worker` as a subprocess against
Redis (a database of its own, emptied before and after each test) and a PostgreSQL
schema of the test's own, and collect from the synthetic source. They skip when Redis or
PostgreSQL does not answer, and fail instead when the variable CI is set.
"""

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, func, select

from conftest import require_redis
from smart_retention import cleanup, tasks
from smart_retention.collector import Collector
from smart_retention.config import Settings
from smart_retention.schedule import DEFAULT_TIERS, Tier
from smart_retention.scheduler import tiers_in_age_range
from smart_retention.sources.synthetic import SyntheticSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts

REDIS_URL = os.environ.get("SMART_RETENTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
START = NOW - 31 * DAY
# 1,200 posts published over the 31 days before NOW: every tier has some.
CHANNELS, POSTS_PER_CHANNEL = 2, 600
SYNTHETIC_SPEC = (
    f"synthetic?channels={CHANNELS}&posts={POSTS_PER_CHANNEL}&days=31&start={START.isoformat()}"
)
BATCH_SIZE = 50
CHUNK_SIZE = 100
# How long a worker may take to answer a ping, and a tier run to end.
WORKER_START_TIMEOUT_S = 60
RESULT_TIMEOUT_S = 90
WORKER_STOP_TIMEOUT_S = 20

postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


# --- configuration: no services needed ---


def test_beat_has_one_entry_per_tier_named_timed_and_aged_from_the_tier_table() -> None:
    schedule = tasks.app.conf.beat_schedule
    assert {name: (entry["schedule"], entry["kwargs"]) for name, entry in schedule.items()} == {
        "smart-collect-fresh-posts": (600, {"min_age_hours": 0, "max_age_hours": 1}),
        "smart-collect-recent-posts": (1800, {"min_age_hours": 1, "max_age_hours": 24}),
        "smart-collect-daily-posts": (21600, {"min_age_days": 1, "max_age_days": 7}),
        "smart-collect-weekly-posts": (86400, {"min_age_days": 7, "max_age_days": 30}),
    }
    for entry, tier in zip(schedule.values(), DEFAULT_TIERS, strict=True):
        assert entry["task"] == tasks.COLLECT_TASK
        assert 0 < entry["options"]["expires"] < entry["schedule"], "expires within its interval"
        ages = {key.rpartition("_")[2]: value for key, value in entry["kwargs"].items()}
        unit = timedelta(days=1) if ages.get("days") else timedelta(hours=1)
        bounds = [entry["kwargs"][k] * unit for k in sorted(entry["kwargs"], reverse=True)]
        assert tiers_in_age_range(DEFAULT_TIERS, *bounds) == (tier,)


def test_changing_a_tier_changes_its_beat_interval_and_age_range_together() -> None:
    tiers = (
        Tier("fresh", timedelta(0), timedelta(hours=2), timedelta(minutes=5)),
        Tier("old", timedelta(hours=2), timedelta(days=3), timedelta(hours=12)),
    )
    schedule = tasks.build_beat_schedule(tiers)
    assert schedule["smart-collect-fresh-posts"]["schedule"] == 300
    assert schedule["smart-collect-fresh-posts"]["kwargs"] == {
        "min_age_hours": 0,
        "max_age_hours": 2,
    }
    assert schedule["smart-collect-old-posts"]["kwargs"] == {
        "min_age_hours": 2,
        "max_age_hours": 72,
    }


def test_beat_and_workers_run_in_utc() -> None:
    assert tasks.app.conf.timezone == "UTC"
    assert tasks.app.conf.enable_utc is True


def test_every_task_has_an_explicit_name_late_acks_and_bounded_retries() -> None:
    ours = {name: task for name, task in tasks.app.tasks.items() if "smart_retention" in name}
    assert set(ours) == {
        "smart_retention.tasks.smart_collect_post_metrics",
        "smart_retention.tasks.collect_chunk",
        "smart_retention.tasks.finish_tier_run",
        "smart_retention.tasks.abort_tier_run",
        "smart_retention.tasks.cleanup_duplicate_post_metrics",
    }
    for task in ours.values():
        assert task.acks_late is True, task.name
        assert task.max_retries is not None and task.max_retries <= 5, task.name
    assert tasks.collect_chunk.reject_on_worker_lost is True


def test_the_visibility_timeout_is_pinned_and_longer_than_the_longest_task() -> None:
    """A message is handed out again only after this long: never while its task runs."""
    visibility_s = tasks.app.conf.broker_transport_options["visibility_timeout"]
    assert visibility_s == 7200
    limits = [task.time_limit for task in tasks.app.tasks.values() if task.time_limit]
    assert len(limits) >= 3
    assert visibility_s > max(limits)


def test_a_tier_lock_outlives_every_collection_task_and_ends_before_the_next_tick() -> None:
    for tier in DEFAULT_TIERS:
        ttl_s = tasks.run_ttl_s([tier])
        assert ttl_s > tasks.collect_chunk.time_limit
        assert ttl_s > tasks.smart_collect_post_metrics.time_limit
        assert ttl_s < tier.interval.total_seconds()


def test_an_age_given_in_both_hours_and_days_is_refused() -> None:
    result = tasks.smart_collect_post_metrics.apply(
        kwargs={"min_age_hours": 1, "min_age_days": 1, "max_age_days": 7}
    )
    assert isinstance(result.result, tasks.TaskConfigurationError)
    assert "min_age_hours=1 and min_age_days=1: give one of them" in str(result.result)


def test_an_age_range_outside_every_tier_is_refused() -> None:
    result = tasks.smart_collect_post_metrics.apply(kwargs={"min_age_days": 40})
    assert isinstance(result.result, tasks.TaskConfigurationError)


def test_a_failed_run_frees_its_own_tier_lock_and_never_another_runs(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "_redis", lambda: broker)
    run = {"id": "run-1", "tier": "daily", "tiers": ["daily"], "lock_ttl_s": 60}
    key = f"{tasks.LOCK_PREFIX}daily"
    broker.set(key, "run-1", ex=60)
    tasks.abort_tier_run(None, RuntimeError("chunk failed"), None, run=run)
    assert broker.get(key) is None

    broker.set(key, "run-2", ex=60)  # run-1's lock expired and run-2 took the tier
    with caplog.at_level(logging.WARNING, "smart_retention"):
        tasks.abort_tier_run(None, RuntimeError("chunk failed"), None, run=run)
    assert broker.get(key) == b"run-2"
    assert "smart-collect.lock-lost lock=smart-retention:lock:daily run=run-1" in caplog.messages


def _store_repeating_snapshots(engine: Engine) -> None:
    """One post with five snapshots: the first, three repeats of it, then a change."""
    with engine.begin() as connection:
        connection.execute(channels.insert(), [{"channel_id": 1, "created_at": START}])
        connection.execute(posts.insert(), [{"channel_id": 1, "msg_id": 1, "posted_at": START}])
        connection.execute(
            post_metrics.insert(),
            [
                {"channel_id": 1, "msg_id": 1, "snapshot_time": START + timedelta(minutes=m),
                 "views": views, "forwards": 0, "reactions": 0, "replies": 0}
                for m, views in ((1, 10), (2, 10), (3, 10), (4, 10), (5, 11))
            ],
        )  # fmt: skip


def test_the_cleanup_task_dry_run_counts_what_the_live_run_removes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "_engine", lambda: engine)
    _store_repeating_snapshots(engine)

    dry = tasks.cleanup_duplicate_post_metrics.apply().get()
    assert (dry["status"], dry["dry_run"], dry["duplicates_found"]) == ("done", True, 3)
    assert _count(engine, post_metrics) == 5
    live = tasks.cleanup_duplicate_post_metrics.apply(
        kwargs={"dry_run": False, "batch_size": 2}
    ).get()
    assert (live["duplicates_found"], live["duplicates_removed"]) == (3, 3)
    assert _count(engine, post_metrics) == 2
    again = tasks.cleanup_duplicate_post_metrics.apply(kwargs={"dry_run": False}).get()
    assert again["duplicates_removed"] == 0, "running twice changes nothing"


def test_a_cleanup_while_another_runs_exits_at_once_and_says_so(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tasks, "_engine", lambda: engine)
    _store_repeating_snapshots(engine)
    with cleanup.cleanup_lock(engine), caplog.at_level(logging.WARNING, "smart_retention"):
        result = tasks.cleanup_duplicate_post_metrics.apply(kwargs={"dry_run": False}).get()
    assert result["status"] == "skipped"
    assert caplog.messages[0].startswith("smart-cleanup status=skipped reason=in-progress")
    assert _count(engine, post_metrics) == 5


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


# --- real workers ---


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    require_redis(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def client(broker: redis.Redis) -> Iterator[Celery]:
    """A Celery app that sends to the test broker and reads results from it."""
    app = tasks.create_app(Settings(broker_url=REDIS_URL, result_backend=REDIS_URL))
    yield app
    app.close()


class Workers:
    """Worker processes on one database; each in a process group of its own."""

    def __init__(self, client: Celery, database_url: str, tmp_path: Path) -> None:
        self.client = client
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_RETENTION_")}
        self.env.update(
            SMART_RETENTION_DATABASE_URL=database_url,
            SMART_RETENTION_BROKER_URL=REDIS_URL,
            SMART_RETENTION_RESULT_BACKEND=REDIS_URL,
            SMART_RETENTION_SOURCE=SYNTHETIC_SPEC,
            SMART_RETENTION_BATCH_SIZE=str(BATCH_SIZE),
            SMART_RETENTION_COLLECT_CHUNK_SIZE=str(CHUNK_SIZE),
        )
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, *names: str, concurrency: int = 2, **env: str) -> None:
        """Start a worker per name, all at once, and wait until every one answers."""
        for name in names:
            log_file = (self.tmp_path / f"{name}.log").open("ab")
            command = [
                sys.executable, "-m", "celery", "-A", "smart_retention.tasks", "worker",
                "--pool=prefork", f"--concurrency={concurrency}", f"--hostname={name}@test",
                "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            self.processes[name] = subprocess.Popen(
                command,
                env={**self.env, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log_file.close()
        waiting = {f"{name}@test" for name in names}
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while waiting:
            for reply in self.client.control.ping(destination=sorted(waiting), timeout=0.5):
                waiting -= set(reply)
            for name in names:
                assert self.processes[name].poll() is None, self.log(name)
            assert time.monotonic() < deadline, f"workers {waiting} did not start"

    def kill(self, name: str) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine crash would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        """Cold shutdown (SIGQUIT): by now no task is running; SIGKILL if it hangs."""
        for process in self.processes.values():
            process.send_signal(signal.SIGQUIT)
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")


@pytest.fixture
def workers(client: Celery, database_url: str, engine: Engine, tmp_path: Path) -> Iterator[Workers]:
    running = Workers(client, database_url, tmp_path)
    with ExitStack() as cleanup:
        cleanup.callback(running.stop_all)
        yield running


def _send(client: Celery, tier: str) -> Any:
    entry = client.conf.beat_schedule[f"smart-collect-{tier}-posts"]
    return client.send_task(entry["task"], kwargs={**entry["kwargs"], "now": NOW.isoformat()})


def _state(engine: Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as connection:
        snapshots = connection.execute(
            select(post_metrics).order_by(*post_metrics.primary_key.columns)
        ).all()
        checks = connection.execute(
            select(post_metrics_checks).order_by(*post_metrics_checks.primary_key.columns)
        ).all()
    return snapshots, checks


def _reference(tmp_path: Path, tier_names: list[str]) -> tuple[tuple[list, list], dict[str, int]]:
    """What one collector in one process stores for these tiers at NOW, and its checks."""
    engine = make_engine(f"sqlite:///{tmp_path / 'reference.sqlite3'}")
    migrate.upgrade(engine)
    source = SyntheticSource(CHANNELS, POSTS_PER_CHANNEL, 31, start=START)
    collector = Collector(engine, source, batch_size=BATCH_SIZE)
    checks = {name: collector.run_cycle(NOW, [name]).checks for name in tier_names}
    state = _state(engine)
    engine.dispose()
    return state, checks


@contextmanager
def _diagnostics(workers: Workers) -> Iterator[None]:
    """On failure, show the workers' logs."""
    try:
        yield
    except BaseException:
        for path in sorted(workers.tmp_path.glob("*.log")):
            print(f"--- {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        raise


@postgres_only
def test_each_tier_task_collects_its_tier_end_to_end_as_one_collector_would(
    workers: Workers, client: Celery, engine: Engine, tmp_path: Path
) -> None:
    names = [tier.name for tier in DEFAULT_TIERS]
    expected_state, expected_checks = _reference(tmp_path, names)
    with _diagnostics(workers):
        workers.start("w1")
        results = {name: _send(client, name).get(timeout=RESULT_TIMEOUT_S) for name in names}
        again = _send(client, "weekly").get(timeout=RESULT_TIMEOUT_S)

        for name, result in results.items():
            assert result["tier"] == name and result["status"] == "done"
            assert result["checks"] == expected_checks[name] > 0
            assert result["now"] == NOW.isoformat()
        assert results["weekly"]["chunks"] > 1, "a large tier is fanned out"
        assert again["checks"] == 0, "a second run at the same moment finds nothing due"
        assert not workers.client.backend.client.keys(f"{tasks.LOCK_PREFIX}*"), "tiers freed"
        assert _state(engine) == expected_state

        log = workers.log("w1")
        for name, result in results.items():
            assert (
                f"smart-collect tier={name} status=done checks={result['checks']} "
                f"saved={result['saved']} rejected=0 seconds="
            ) in log


def test_a_run_of_a_tier_already_in_progress_exits_at_once_and_says_so(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock is looked at before anything else, so no database is needed here."""
    monkeypatch.setattr(tasks, "_redis", lambda: broker)
    broker.set(f"{tasks.LOCK_PREFIX}fresh", "another-run", ex=60)
    with caplog.at_level(logging.INFO, logger="smart_retention"):
        started = time.monotonic()
        result = tasks.smart_collect_post_metrics.apply(
            kwargs={"min_age_hours": 0, "max_age_hours": 1}
        ).get()
    assert time.monotonic() - started < 1
    assert result["status"] == "skipped" and result["running"] == "another-run"
    assert (result["tier"], result["checks"], result["saved"]) == ("fresh", 0, 0)
    assert caplog.messages == [
        "smart-collect tier=fresh status=skipped reason=in-progress running=another-run"
    ]
    assert broker.get(f"{tasks.LOCK_PREFIX}fresh") == b"another-run", "left as it was"


def test_a_run_of_two_tiers_takes_both_locks_or_none(
    broker: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "_redis", lambda: broker)
    broker.set(f"{tasks.LOCK_PREFIX}recent", "another-run", ex=60)
    result = tasks.smart_collect_post_metrics.apply(kwargs={"max_age_hours": 24}).get()
    assert result["status"] == "skipped" and result["tier"] == "fresh+recent"
    assert broker.get(f"{tasks.LOCK_PREFIX}fresh") is None, "the lock it got is given back"


@postgres_only
def test_two_workers_and_two_runs_of_a_tier_at_once_store_what_one_run_stores(
    workers: Workers, client: Celery, engine: Engine, tmp_path: Path
) -> None:
    expected_state, expected_checks = _reference(tmp_path, ["weekly"])
    with _diagnostics(workers):
        workers.start("w1", "w2", concurrency=1)
        first, second = _send(client, "weekly"), _send(client, "weekly")
        results = [first.get(timeout=RESULT_TIMEOUT_S), second.get(timeout=RESULT_TIMEOUT_S)]

        assert sorted(r["status"] for r in results) == ["done", "skipped"]
        assert sum(r["checks"] for r in results) == expected_checks["weekly"]
        assert _state(engine) == expected_state
        for name in ("w1", "w2"):
            assert "Task smart_retention.tasks.collect_chunk[" in workers.log(name), (
                f"{name} collected no chunk: the tier was not spread over both workers"
            )


def _restore_unacked(broker: redis.Redis, client: Celery) -> int:
    """Hand out again every unacknowledged message now, as the broker does once the
    visibility timeout has passed."""
    tags = [tag.decode() for tag in broker.hkeys("unacked")]
    with client.connection_for_write() as connection:
        qos = connection.default_channel.qos
        for tag in tags:
            qos.restore_by_tag(tag)
    return len(tags)


@postgres_only
def test_a_worker_killed_mid_run_loses_no_committed_batch_and_redelivery_completes_it(
    workers: Workers, client: Celery, broker: redis.Redis, engine: Engine, tmp_path: Path
) -> None:
    expected_state, expected_checks = _reference(tmp_path, ["weekly"])
    total = expected_checks["weekly"]
    slow = {"SMART_RETENTION_BATCH_SIZE": "10", "SMART_RETENTION_COLLECT_CHUNK_SIZE": "100"}
    with _diagnostics(workers):
        workers.start("w1", **slow)
        run = _send(client, "weekly")
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while _count_checks(engine) < total // 4:
            assert time.monotonic() < deadline and not run.ready(), "no progress to interrupt"
            time.sleep(0.02)
        workers.kill("w1")

        committed = _count_checks(engine)
        assert 0 < committed < total, "killed in the middle of the run"
        snapshots, checks = _state(engine)
        assert all(row.check_count == 1 for row in checks)
        assert sum(row.save_count for row in checks) == len(snapshots), "no partial batch"
        assert not run.ready()

        # Only the killed worker's messages are unacknowledged now: hand them out again
        # before a new worker takes any, as the broker would after the visibility timeout.
        assert _restore_unacked(broker, client) > 0
        workers.start("w2", **slow)
        result = run.get(timeout=RESULT_TIMEOUT_S)
        assert result["status"] == "done"
        assert _state(engine) == expected_state


def _count_checks(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(post_metrics_checks)
        ).scalar_one()
