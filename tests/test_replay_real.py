"""The replay report on the two real Telegram recordings, against independent figures.

Every expected figure below was computed by `tests/reference_replay.py`, a small
reference written from the specification that imports nothing from `smart_retention`,
and agreed with `smart-retention replay ... --json` when it was written. The tests replay
through the real collector and database and check:

* the report's figures equal those constants;
* the database agrees with the report (rows, check and save counts) and never holds two
  identical consecutive snapshots of a post;
* post by post, the stored series and the check counts equal the reference's.

A replay takes tens of seconds (a minute or more on PostgreSQL), so only some
combinations run here: drivernotfound scheduled on both engines, drivernotfound as
recorded and recsyschannel scheduled with --max-age-days 1000 on SQLite. The figures of
the other combinations were verified the same way and are kept in EXPECTED as the record
(docs can quote them). A small hand-worked file checks the reference itself, and the
package, on both engines.
"""

import csv
import gzip
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

import reference_replay as reference
from conftest import require_real_data
from smart_retention.replay import ReplayOptions, ReplayReport, run_replay
from smart_retention.sources.recording import Recording, read_recording
from smart_retention.storage.tables import post_metrics, post_metrics_checks

pytestmark = pytest.mark.realdata

CHANNEL_ID = 1
# The recordings' column names (they have no channel column and no replies).
COLUMN_MAP = {
    "msg_id": "post_id",
    "posted_at": "post_date_utc",
    "observed_at": "snapshot_utc",
    "reactions": "reactions_total",
}
DRIVER = "tg-drivernotfound"
RECSYS = "tg-recsyschannel"
AS_RECORDED, SCHEDULED, MAX_AGE_1000 = "as-recorded", "scheduled", "max-age-days-1000"
BRACKETS = ("under 1h", "1h-24h", "24h-7d", "7d+")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _figures(
    totals: tuple[int, int, int, int, float, int, float],
    by_bracket: Iterable[tuple[int, int, float, int, float]],
) -> dict[str, Any]:
    """A report as `--json` prints it. `totals` is (posts, observations, checks, stored,
    reduction_pct, views_error_max, views_error_mean); each bracket is (checks, stored,
    reduction_pct, views_error_max, views_error_mean), in the order of BRACKETS."""
    posts, observations, checks, stored, reduction_pct, error_max, error_mean = totals
    return {
        "posts": posts,
        "observations": observations,
        "rejected": 0,
        "checks": checks,
        "snapshots_stored": stored,
        "naive_rows": checks,
        "reduction_pct": reduction_pct,
        "views_error_max": error_max,
        "views_error_mean": error_mean,
        "by_bracket": {
            name: {
                "checks": b_checks,
                "snapshots_stored": b_stored,
                "naive_rows": b_checks,
                "reduction_pct": b_reduction,
                "views_error_max": b_max,
                "views_error_mean": b_mean,
            }
            for name, (b_checks, b_stored, b_reduction, b_max, b_mean) in zip(
                BRACKETS, by_bracket, strict=True
            )
        },
    }


# Verified with the reference and with the command line; see the module docstring.
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    (DRIVER, AS_RECORDED): _figures(
        (54, 78659, 78659, 5566, 92.92, 49, 1.467),
        [
            (16, 16, 0.0, 0, 0.0),
            (401, 307, 23.44, 5, 0.424),
            (2279, 548, 75.95, 19, 3.575),
            (75963, 4695, 93.82, 49, 1.41),
        ],
    ),
    (DRIVER, SCHEDULED): _figures(
        (54, 78659, 3210, 1476, 54.02, 19, 0.842),
        [
            (56, 16, 71.43, 0, 0.0),
            (1515, 305, 79.87, 5, 0.478),
            (832, 378, 54.57, 19, 2.38),
            (807, 777, 3.72, 0, 0.0),
        ],
    ),
    (DRIVER, MAX_AGE_1000): _figures(
        (54, 78659, 9280, 5031, 45.79, 19, 0.291),
        [
            (56, 16, 71.43, 0, 0.0),
            (1515, 305, 79.87, 5, 0.478),
            (832, 378, 54.57, 19, 2.38),
            (6877, 4332, 37.01, 0, 0.0),
        ],
    ),
    (RECSYS, AS_RECORDED): _figures(
        (133, 282547, 282547, 9618, 96.6, 49, 0.571),
        [
            (14, 14, 0.0, 0, 0.0),
            (375, 298, 20.53, 7, 0.632),
            (2237, 473, 78.86, 19, 5.419),
            (279921, 8833, 96.84, 49, 0.532),
        ],
    ),
    (RECSYS, SCHEDULED): _figures(
        (133, 282547, 2675, 1295, 51.59, 19, 1.281),
        [
            (24, 9, 62.5, 0, 0.0),
            (1313, 298, 77.3, 7, 0.663),
            (688, 338, 50.87, 19, 3.717),
            (650, 650, 0.0, 0, 0.0),
        ],
    ),
    (RECSYS, MAX_AGE_1000): _figures(
        (133, 282547, 23924, 8744, 63.45, 19, 0.143),
        [
            (24, 9, 62.5, 0, 0.0),
            (1313, 298, 77.3, 7, 0.663),
            (688, 338, 50.87, 19, 3.717),
            (21899, 8099, 63.02, 0, 0.0),
        ],
    ),
}

MODE_ARGS: dict[str, dict[str, Any]] = {
    AS_RECORDED: {"as_recorded": True},
    SCHEDULED: {},
    MAX_AGE_1000: {"max_age_days": 1000},
}


def _options(mode: str) -> ReplayOptions:
    if mode == AS_RECORDED:
        return ReplayOptions(as_recorded=True)
    if mode == MAX_AGE_1000:
        return ReplayOptions(max_age=timedelta(days=1000))
    return ReplayOptions()


@cache
def _recording(name: str) -> Recording:
    return read_recording(require_real_data(name), COLUMN_MAP, channel_id=CHANNEL_ID)


@cache
def _reference_data(name: str) -> reference.RecordingData:
    return reference.load(str(require_real_data(name)))


@cache
def _reference_run(name: str, mode: str) -> tuple[dict[str, Any], dict[int, reference.PostPolicy]]:
    return reference.replay(_reference_data(name), **MODE_ARGS[mode])


def _assert_figures(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Counts exactly; percentages to 2 decimals and error means to 3, as reported."""
    scalar = ("posts", "observations", "rejected", "checks", "snapshots_stored", "naive_rows")
    for key in (*scalar, "views_error_max"):
        assert actual[key] == expected[key], key
    assert actual["reduction_pct"] == pytest.approx(expected["reduction_pct"], abs=0.005)
    assert actual["views_error_mean"] == pytest.approx(expected["views_error_mean"], abs=0.0005)
    assert list(actual["by_bracket"]) == list(BRACKETS)
    for name in BRACKETS:
        got, want = actual["by_bracket"][name], expected["by_bracket"][name]
        for key in ("checks", "snapshots_stored", "naive_rows", "views_error_max"):
            assert got[key] == want[key], (name, key)
        assert got["reduction_pct"] == pytest.approx(want["reduction_pct"], abs=0.005), name
        assert got["views_error_mean"] == pytest.approx(want["views_error_mean"], abs=0.0005), name


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _assert_database_matches(
    engine: Engine, report: ReplayReport, policies: dict[int, reference.PostPolicy]
) -> None:
    with engine.connect() as connection:
        snapshot_count = connection.execute(
            select(func.count()).select_from(post_metrics)
        ).scalar_one()
        check_sum, save_sum = connection.execute(
            select(
                func.coalesce(func.sum(post_metrics_checks.c.check_count), 0),
                func.coalesce(func.sum(post_metrics_checks.c.save_count), 0),
            )
        ).one()
        snapshots = connection.execute(
            select(
                post_metrics.c.channel_id,
                post_metrics.c.msg_id,
                post_metrics.c.snapshot_time,
                post_metrics.c.views,
                post_metrics.c.forwards,
                post_metrics.c.reactions,
                post_metrics.c.replies,
            ).order_by(
                post_metrics.c.channel_id, post_metrics.c.msg_id, post_metrics.c.snapshot_time
            )
        ).all()
        checks = connection.execute(
            select(
                post_metrics_checks.c.channel_id,
                post_metrics_checks.c.msg_id,
                post_metrics_checks.c.check_count,
                post_metrics_checks.c.save_count,
                post_metrics_checks.c.checks_since_save,
                post_metrics_checks.c.last_checked_at,
                post_metrics_checks.c.last_saved_at,
            )
        ).all()

    # The database agrees with the report.
    assert snapshot_count == report.snapshots_stored
    assert check_sum == report.checks
    assert save_sum == report.snapshots_stored

    # Never two identical consecutive snapshots of one post.
    series: dict[int, list[tuple[int, tuple[int | None, ...]]]] = {}
    previous: tuple[Any, ...] | None = None
    for row in snapshots:
        assert row.channel_id == CHANNEL_ID
        values = (row.views, row.forwards, row.reactions, row.replies)
        if previous is not None and previous[0] == row.msg_id:
            assert values != previous[1], f"post {row.msg_id}: duplicate at {row.snapshot_time}"
        previous = (row.msg_id, values)
        series.setdefault(row.msg_id, []).append((_micros(row.snapshot_time), values))

    # Post by post, the stored series and the check rows equal the reference's.
    checked = {msg_id: p for msg_id, p in policies.items() if p.checks}
    assert set(series) == {msg_id for msg_id, p in checked.items() if p.history}
    for msg_id, stored in series.items():
        assert stored == policies[msg_id].history, f"post {msg_id}: stored series differs"
    assert {row.msg_id for row in checks} == set(checked)
    for row in checks:
        want = checked[row.msg_id]
        assert (
            row.check_count,
            row.save_count,
            row.checks_since_save,
            _micros(row.last_checked_at),
            _micros(row.last_saved_at) if row.last_saved_at is not None else None,
        ) == (
            want.checks,
            len(want.history),
            want.checks_since_save,
            want.last_checked_at,
            want.saved_at,
        ), f"post {row.msg_id}: check row differs"


def _replay_and_verify(engine: Engine, name: str, mode: str) -> None:
    report = run_replay(engine, _recording(name), _options(mode))
    _assert_figures(report.as_json(), EXPECTED[name, mode])
    _, policies = _reference_run(name, mode)
    _assert_database_matches(engine, report, policies)


def test_drivernotfound_scheduled_matches_reference(engine: Engine) -> None:
    """On both engines: the schedule's due-post and outlook queries are the SQL that
    differs most between them (timestamps as text on SQLite, timestamptz on PostgreSQL)."""
    _replay_and_verify(engine, DRIVER, SCHEDULED)


# The slow replays run on SQLite only, to keep the file within a few minutes: as recorded
# the same collector, queries and writes run as on the schedule, only 25 times as often.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_drivernotfound_as_recorded_matches_reference(engine: Engine) -> None:
    _replay_and_verify(engine, DRIVER, AS_RECORDED)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_recsyschannel_scheduled_to_1000_days_matches_reference(engine: Engine) -> None:
    _replay_and_verify(engine, RECSYS, MAX_AGE_1000)


@pytest.mark.parametrize("mode", [AS_RECORDED, SCHEDULED, MAX_AGE_1000])
def test_reference_reproduces_the_constants_on_drivernotfound(mode: str) -> None:
    """The constants are the reference's output (no database involved), so a change to
    the specification shows up here as well as in the replay tests."""
    report, _ = _reference_run(DRIVER, mode)
    assert report == EXPECTED[DRIVER, mode]


def test_reference_respects_the_retention_bound_on_drivernotfound() -> None:
    """A check that stored nothing is below both thresholds of its bracket (DESIGN.md):
    the per-bracket maximum error stays under the absolute threshold."""
    for mode in (AS_RECORDED, SCHEDULED, MAX_AGE_1000):
        report, _ = _reference_run(DRIVER, mode)
        for name, _max_age, _relative, absolute in reference.BRACKETS:
            assert report["by_bracket"][name]["views_error_max"] < absolute, (mode, name)


def test_package_and_reference_read_drivernotfound_alike() -> None:
    recording, data = _recording(DRIVER), _reference_data(DRIVER)
    assert recording.post_count == len(data.posts)
    assert len(recording.observations) == data.observations
    assert recording.rejections == [] and data.rejected == 0
    by_post: dict[int, list[tuple[int, tuple[int | None, ...]]]] = {}
    for observation in recording.observations:
        assert observation.posted_at == EPOCH + timedelta(
            microseconds=data.posts[observation.key.msg_id].posted_at
        )
        by_post.setdefault(observation.key.msg_id, []).append(
            (_micros(observation.observed_at), tuple(observation.counters))
        )
    assert by_post == {
        msg_id: list(zip(post.times, post.values, strict=True))
        for msg_id, post in data.posts.items()
    }


def _hand_worked_recording(path: Path) -> Path:
    """One post, ten days old, so every check is in the 7d+ bracket (5% or 50 views)."""
    day10 = datetime(2026, 1, 11, tzinfo=UTC)
    rows = [
        (day10, 10000, 3),  # first: stored
        (day10 + timedelta(hours=1), 10049, 3),  # 49 < 50 and < 5%: not stored, error 49
        (day10 + timedelta(hours=2), 10050, 3),  # 50 views: stored
        (day10 + timedelta(hours=3), 10050, None),  # reactions unknown: not stored, error 0
        (day10 + timedelta(hours=26), 10060, 3),  # 24 h since the last save: checkpoint
    ]
    start = day10 + timedelta(hours=26)
    # 50 checks below the threshold (error 1 each); the 51st is a checkpoint by count.
    rows += [(start + timedelta(minutes=10 * i), 10061, 3) for i in range(1, 52)]
    path = path / "hand.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["snapshot_utc", "post_id", "post_date_utc", "views", "forwards", "reactions_total"]
        )
        for moment, views, reactions in rows:
            writer.writerow(
                [moment.isoformat(), 7, "2026-01-01T00:00:00+00:00", views, 2, reactions or ""]
            )
    return path


HAND_WORKED = {
    AS_RECORDED: _figures(
        (1, 56, 56, 4, 92.86, 49, 1.768),
        [(0, 0, 0.0, 0, 0.0), (0, 0, 0.0, 0, 0.0), (0, 0, 0.0, 0, 0.0), (56, 4, 92.86, 49, 1.768)],
    ),
    # Ticks from 2026-01-11 00:00 to 2026-01-12 10:30; the weekly tier checks once a day:
    # at 00:00 (first) and the next midnight, which sees 10050 (50 views: stored).
    SCHEDULED: _figures(
        (1, 56, 2, 2, 0.0, 0, 0.0),
        [(0, 0, 0.0, 0, 0.0), (0, 0, 0.0, 0, 0.0), (0, 0, 0.0, 0, 0.0), (2, 2, 0.0, 0, 0.0)],
    ),
}


@pytest.mark.parametrize("mode", [AS_RECORDED, SCHEDULED])
def test_hand_worked_recording(engine: Engine, tmp_path: Path, mode: str) -> None:
    """The reference and the package on a file whose figures were worked out by hand:
    the absolute threshold, an unknown counter, checkpoints by time and by count."""
    path = _hand_worked_recording(tmp_path)
    expected = HAND_WORKED[mode]
    report, policies = reference.replay(reference.load(str(path)), **MODE_ARGS[mode])
    assert report == expected
    replayed = run_replay(engine, read_recording(path, COLUMN_MAP, CHANNEL_ID), _options(mode))
    _assert_figures(replayed.as_json(), expected)
    _assert_database_matches(engine, replayed, policies)
