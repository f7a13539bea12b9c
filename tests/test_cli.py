"""The `smart-retention` command line, run as a real subprocess, as users run it.

Each run costs a second or two (interpreter start, migrations), so one run checks many
things: a single file carries every kind of bad row, and its report, its messages and the
database it wrote are all inspected.
"""

import csv
import gzip
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, inspect, select

from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks, posts

CLI = Path(sys.executable).parent / "smart-retention"
TABLES = {"channels", "posts", "post_metrics", "post_metrics_checks"}
HEADER = [
    "channel_id",
    "msg_id",
    "posted_at",
    "observed_at",
    "views",
    "forwards",
    "reactions",
    "replies",
]
REPORT_KEYS = {
    "posts",
    "observations",
    "rejected",
    "checks",
    "snapshots_stored",
    "naive_rows",
    "reduction_pct",
    "views_error_max",
    "views_error_mean",
    "by_bracket",
}
DEMO_DATABASE_FILE = "smart-retention-demo.sqlite3"
REJECTED_LINE = re.compile(r"^rejected: line (\d+): post (\d+/\d+): field (\w+): (.*)$")
# A moment on the 10-minute grid, so a scheduled replay checks it exactly.
POSTED = "2026-01-01T00:00:00+00:00"
SEEN = "2026-01-01T00:30:00+00:00"
CHANNEL = 42
# Posts of the "rich" recording: polled every 10 minutes for 6 hours, views levelling off.
RICH_POSTS = 3
RICH_HOURS = 6


# --- helpers -------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The terminal width of whoever runs pytest must not change what the command prints.
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=180,
        check=False,
    )


def write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:  # type: ignore[operator]
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rich_rows() -> list[list[object]]:
    """Three posts polled every 10 minutes for 6 hours; views level off within about 3 hours,
    forwards and reactions step up a few times."""
    start = datetime(2026, 1, 1, 8, tzinfo=UTC)
    rows: list[list[object]] = []
    for msg_id in range(1, RICH_POSTS + 1):
        posted_at = start + timedelta(minutes=20 * (msg_id - 1))
        for poll in range(RICH_HOURS * 6 + 1):
            hours = poll / 6
            rows.append(
                [
                    CHANNEL,
                    msg_id,
                    posted_at.isoformat(),
                    (posted_at + timedelta(minutes=10 * poll)).isoformat(),
                    int(1000 * msg_id * (1 - math.exp(-hours / 0.5))),
                    1 if hours >= 1 else 0,
                    min(int(hours), 2),
                    0,
                ]
            )
    return rows


def report_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rejections(stderr: str) -> dict[int, tuple[str, str, str]]:
    """line -> (post, field, reason) for every `rejected:` line on stderr."""
    found = {}
    for text in stderr.splitlines():
        match = REJECTED_LINE.match(text)
        if match:
            line, post, field, reason = match.groups()
            found[int(line)] = (post, field, reason)
    return found


def message_lines(stderr: str) -> list[str]:
    """Stderr without log records (those start with a date)."""
    return [
        text for text in stderr.splitlines() if text.strip() and not re.match(r"\d{4}-\d\d-", text)
    ]


def one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def snapshots_by_post(connection: Connection) -> dict[int, list[Any]]:
    found: dict[int, list[Any]] = {}
    query = select(post_metrics).order_by(post_metrics.c.msg_id, post_metrics.c.snapshot_time)
    for row in connection.execute(query):
        found.setdefault(row.msg_id, []).append(row)
    return found


def count(connection: Connection, table: Any) -> int:
    return connection.execute(select(func.count()).select_from(table)).scalar_one()


# --- bad input -----------------------------------------------------------------------

GOOD_POSTS = {1: (100, 1, 2, 0), 10: (200, 0, 5, 1), 11: (300, 3, 4, 2)}
# line number (the header is line 1) -> (row, field named in the rejection, reason snippet)
BAD_ROWS = {
    3: ([CHANNEL, 2, POSTED, SEEN, -5, 1, 2, 0], "views", "is negative"),
    4: ([CHANNEL, 3, POSTED, SEEN, 10, "1.5", 2, 0], "forwards", "is fractional"),
    5: ([CHANNEL, 4, POSTED, SEEN, 10, 1, "NaN", 0], "reactions", "is not a number"),
    6: ([CHANNEL, 5, POSTED, SEEN, 10, 1, 2, "abc"], "replies", "is not a number"),
    7: ([CHANNEL, 6, POSTED, SEEN, 2**63, 1, 2, 0], "views", "larger than 2^63-1"),
    8: ([CHANNEL, 7, "yesterday", SEEN, 10, 1, 2, 0], "posted_at", "not an ISO-8601 timestamp"),
    9: ([CHANNEL, 8, POSTED, "2026-01-01T00:30:00", 10, 1, 2, 0], "observed_at", "no timezone"),
    10: (
        [CHANNEL, 9, "2026-01-01T01:00:00+00:00", SEEN, 10, 1, 2, 0],
        "observed_at",
        "is before posted_at",
    ),
}


def bad_recording(path: Path) -> Path:
    good = [[CHANNEL, msg_id, POSTED, SEEN, *values] for msg_id, values in GOOD_POSTS.items()]
    # Line 2 is a good row, lines 3-10 the bad ones, then two more good rows.
    rows = [good[0], *(row for row, _, _ in BAD_ROWS.values()), *good[1:]]
    return write_csv(path, rows)


def test_every_kind_of_bad_row_is_rejected_by_line_post_and_field_and_the_rest_is_stored(
    database_url: str, tmp_path: Path
) -> None:
    recording = bad_recording(tmp_path / "bad.csv")
    result = run_cli("replay", str(recording), "--json", "--db", database_url)

    assert "Traceback" not in result.stderr
    report = report_of(result)
    assert report["rejected"] == len(BAD_ROWS)
    assert report["posts"] == len(GOOD_POSTS)
    assert report["observations"] == len(GOOD_POSTS)
    assert report["checks"] == len(GOOD_POSTS)
    assert report["snapshots_stored"] == len(GOOD_POSTS)

    found = rejections(result.stderr)
    assert {line: (post, field) for line, (post, field, _) in found.items()} == {
        line: (f"{CHANNEL}/{row[1]}", field) for line, (row, field, _) in BAD_ROWS.items()
    }

    with connect(database_url) as connection:
        stored = snapshots_by_post(connection)
        assert {
            msg_id: [(r.views, r.forwards, r.reactions, r.replies) for r in rows]
            for msg_id, rows in stored.items()
        } == {msg_id: [values] for msg_id, values in GOOD_POSTS.items()}
        checks = connection.execute(select(post_metrics_checks)).all()
        assert {row.msg_id: row.check_count for row in checks} == dict.fromkeys(GOOD_POSTS, 1)
        assert set(connection.execute(select(posts.c.msg_id)).scalars()) == set(GOOD_POSTS)

    # Each rejection is one whole line: the reason is not wrapped onto the next line.
    for line, (_, _, snippet) in BAD_ROWS.items():
        assert snippet in found[line][2], (line, found[line])
    assert found[4][2].endswith("a count is a whole number")


def test_a_views_count_of_three_billion_round_trips_exactly(
    database_url: str, tmp_path: Path
) -> None:
    recording = write_csv(
        tmp_path / "big.csv", [[CHANNEL, 1, POSTED, SEEN, 3_000_000_000, 0, 0, 0]]
    )
    report = report_of(run_cli("replay", str(recording), "--json", "--db", database_url))
    assert report["rejected"] == 0

    with connect(database_url) as connection:
        assert connection.execute(select(post_metrics.c.views)).scalar_one() == 3_000_000_000
        last = connection.execute(select(post_metrics_checks.c.last_views)).scalar_one()
        assert last == 3_000_000_000


def test_missing_counters_are_stored_as_null_not_zero(database_url: str, tmp_path: Path) -> None:
    # No reactions or replies column at all; post 2 has empty views and forwards cells.
    recording = write_csv(
        tmp_path / "partial.csv",
        [[CHANNEL, 1, POSTED, SEEN, 50, 3], [CHANNEL, 2, POSTED, SEEN, "", ""]],
        header=["channel_id", "msg_id", "posted_at", "observed_at", "views", "forwards"],
    )
    report = report_of(run_cli("replay", str(recording), "--json", "--db", database_url))
    assert report["rejected"] == 0
    assert report["snapshots_stored"] == 2

    with connect(database_url) as connection:
        stored = snapshots_by_post(connection)
        assert [(r.views, r.forwards, r.reactions, r.replies) for r in stored[1]] == [
            (50, 3, None, None)
        ]
        assert [(r.views, r.forwards, r.reactions, r.replies) for r in stored[2]] == [
            (None, None, None, None)
        ]
        checks = {
            row.msg_id: (row.last_views, row.last_forwards, row.last_reactions, row.last_replies)
            for row in connection.execute(select(post_metrics_checks))
        }
        assert checks == {1: (50, 3, None, None), 2: (None, None, None, None)}


def test_strict_turns_the_first_rejection_into_exit_status_1_with_one_line(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'strict.sqlite3'}"
    recording = write_csv(
        tmp_path / "strict.csv",
        [[CHANNEL, 1, POSTED, SEEN, 5, 0, 0, 0], [CHANNEL, 2, POSTED, SEEN, -1, 0, 0, 0]],
    )
    result = run_cli("replay", str(recording), "--strict", "--db", url)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --strict: line 3: post {CHANNEL}/2: field views:")
    assert "negative" in lines[0]


# --- one-line errors with status 2 ---------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The message of an expected failure: status 2, no traceback, one line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_file_is_a_one_line_error_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-recording.csv"
    result = run_cli("replay", str(missing), "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    message = one_line_error(result)
    assert message == f"error: {missing}: no such file"


def test_a_missing_required_column_is_a_one_line_error_naming_it_and_suggesting_column(
    tmp_path: Path,
) -> None:
    recording = write_csv(
        tmp_path / "no-observed-at.csv",
        [[CHANNEL, 1, POSTED, 5]],
        header=["channel_id", "msg_id", "posted_at", "views"],
    )
    result = run_cli("replay", str(recording), "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    message = one_line_error(result)
    assert "'observed_at'" in message
    assert "--column observed_at=" in message


def test_an_unknown_canonical_name_in_column_is_a_one_line_error_with_status_2(
    tmp_path: Path,
) -> None:
    recording = write_csv(tmp_path / "ok.csv", [[CHANNEL, 1, POSTED, SEEN, 5, 0, 0, 0]])
    result = run_cli(
        "replay",
        str(recording),
        "--column",
        "foo=bar",
        "--db",
        f"sqlite:///{tmp_path / 'x.sqlite3'}",
    )
    message = one_line_error(result)
    assert "unknown column 'foo'" in message


def test_a_max_age_inside_the_last_tier_is_a_one_line_error_with_status_2(
    tmp_path: Path,
) -> None:
    """The last tier starts at 7 days, so polling cannot stop before that."""
    recording = write_csv(tmp_path / "ok.csv", [[CHANNEL, 1, POSTED, SEEN, 5, 0, 0, 0]])
    result = run_cli(
        "replay",
        str(recording),
        "--max-age-days",
        "5",
        "--db",
        f"sqlite:///{tmp_path / 'x.sqlite3'}",
    )
    message = one_line_error(result)
    assert message.startswith("error: --max-age-days: max_age 5 days")


def test_a_file_without_channel_id_and_no_channel_id_option_is_an_error_naming_channel_id(
    tmp_path: Path,
) -> None:
    recording = write_csv(
        tmp_path / "no-channel.csv",
        [[1, POSTED, SEEN, 5]],
        header=["msg_id", "posted_at", "observed_at", "views"],
    )
    result = run_cli("replay", str(recording), "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    message = one_line_error(result)
    assert "'channel_id'" in message
    assert "--channel-id" in message


# --- column mapping, formats, report -------------------------------------------------


def test_column_maps_other_names_and_channel_id_supplies_the_missing_channel(
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'mapped.sqlite3'}"
    recording = write_csv(
        tmp_path / "theirs.csv",
        [[7, POSTED, SEEN, 123, 4], [8, POSTED, SEEN, 456, ""]],
        header=["post_id", "date", "seen", "view_count", "shares"],
    )
    mapping = ["msg_id=post_id", "posted_at=date", "observed_at=seen", "views=view_count"]
    args = [arg for pair in mapping for arg in ("--column", pair)]
    result = run_cli(
        "replay",
        str(recording),
        *args,
        "--column",
        "forwards=shares",
        "--channel-id",
        "77",
        "--json",
        "--db",
        database_url,
    )
    report = report_of(result)
    assert (report["posts"], report["observations"], report["rejected"]) == (2, 2, 0)

    with connect(database_url) as connection:
        rows = connection.execute(select(post_metrics).order_by(post_metrics.c.msg_id)).all()
    assert [(r.channel_id, r.msg_id, r.views, r.forwards, r.reactions) for r in rows] == [
        (77, 7, 123, 4, None),
        (77, 8, 456, None, None),
    ]


@dataclass(frozen=True)
class RichReplay:
    rows: list[list[object]]
    report: dict[str, Any]
    url: str


@pytest.fixture(scope="module")
def rich_replay(tmp_path_factory: pytest.TempPathFactory) -> RichReplay:
    """The plain rich recording replayed once on SQLite, shared by the tests that only read."""
    folder = tmp_path_factory.mktemp("rich")
    rows = rich_rows()
    url = f"sqlite:///{folder / 'rich.sqlite3'}"
    recording = write_csv(folder / "rich.csv", rows)
    return RichReplay(
        rows, report_of(run_cli("replay", str(recording), "--json", "--db", url)), url
    )


def test_gzipped_and_plain_files_give_the_same_report(
    rich_replay: RichReplay, tmp_path: Path
) -> None:
    zipped = write_csv(tmp_path / "rich.csv.gz", rich_replay.rows)
    assert zipped.read_bytes()[:2] == b"\x1f\x8b"

    from_zipped = report_of(
        run_cli("replay", str(zipped), "--json", "--db", f"sqlite:///{tmp_path / 'z.sqlite3'}")
    )
    assert from_zipped == rich_replay.report
    assert from_zipped["observations"] == len(rich_replay.rows)


def test_json_report_has_exactly_the_documented_keys_and_consistent_figures(
    rich_replay: RichReplay,
) -> None:
    report, rows, url = rich_replay.report, rich_replay.rows, rich_replay.url

    assert set(report) == REPORT_KEYS
    assert report["posts"] == RICH_POSTS
    assert report["observations"] == len(rows)
    assert report["rejected"] == 0
    # The views level off, so the policy stores fewer rows than it checks.
    assert 0 < report["snapshots_stored"] < report["checks"]
    assert report["reduction_pct"] == round(
        100 * (1 - report["snapshots_stored"] / report["naive_rows"]), 2
    )
    assert report["reduction_pct"] > 0
    assert sum(b["checks"] for b in report["by_bracket"].values()) == report["checks"]
    assert (
        sum(b["snapshots_stored"] for b in report["by_bracket"].values())
        == report["snapshots_stored"]
    )

    with connect(url) as connection:
        assert count(connection, post_metrics) == report["snapshots_stored"]
        total_checks = connection.execute(
            select(func.sum(post_metrics_checks.c.check_count))
        ).scalar_one()
        assert total_checks == report["checks"]


def test_without_json_the_report_is_a_table_of_the_same_figures(tmp_path: Path) -> None:
    rows = rich_rows()
    bad = [CHANNEL, 99, POSTED, SEEN, 1, "-2", 0, 0]
    recording = write_csv(tmp_path / "rich.csv", [*rows, bad])
    result = run_cli("replay", str(recording), "--db", f"sqlite:///{tmp_path / 'text.sqlite3'}")

    assert result.returncode == 0, result.stderr
    figures = {
        label.strip(): value.strip()
        for label, value in re.findall(r"^│ ([a-z ,-]+?) +│ +([^│]+?) +│$", result.stdout, re.M)
    }
    assert figures["posts"] == str(RICH_POSTS)
    assert figures["observations read"] == str(len(rows))
    assert figures["rows rejected"] == "1"
    assert "by post age" in result.stdout
    line = len(rows) + 2
    assert rejections(result.stderr) == {line: (f"{CHANNEL}/99", "forwards", "'-2' is negative")}


def test_replaying_twice_needs_replace_and_then_gives_the_same_report(
    database_url: str, tmp_path: Path
) -> None:
    recording = str(write_csv(tmp_path / "rich.csv", rich_rows()))
    first = report_of(run_cli("replay", recording, "--json", "--db", database_url))

    again = run_cli("replay", recording, "--json", "--db", database_url)
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    message = one_line(again.stderr)
    assert "already holds" in message
    assert str(CHANNEL) in message
    assert "--replace" in message
    assert again.stdout == ""

    replaced = report_of(run_cli("replay", recording, "--replace", "--json", "--db", database_url))
    assert replaced == first
    with connect(database_url) as connection:
        assert count(connection, post_metrics) == first["snapshots_stored"]
        assert count(connection, posts) == RICH_POSTS


def test_as_recorded_makes_every_valid_row_one_check(database_url: str, tmp_path: Path) -> None:
    rows = rich_rows()
    bad = [CHANNEL, 99, POSTED, SEEN, "oops", 0, 0, 0]
    recording = write_csv(tmp_path / "rich.csv", [*rows, bad])
    report = report_of(
        run_cli("replay", str(recording), "--as-recorded", "--json", "--db", database_url)
    )

    assert report["rejected"] == 1
    assert report["observations"] == len(rows)
    assert report["checks"] == len(rows)
    assert report["naive_rows"] == len(rows)
    with connect(database_url) as connection:
        checks = {
            row.msg_id: row.check_count for row in connection.execute(select(post_metrics_checks))
        }
        assert count(connection, post_metrics) == report["snapshots_stored"]
    assert checks == dict.fromkeys(range(1, RICH_POSTS + 1), RICH_HOURS * 6 + 1)


# --- demo ----------------------------------------------------------------------------


def test_demo_is_deterministic_and_stores_what_it_reports_in_the_working_folder(
    tmp_path: Path,
) -> None:
    first = report_of(run_cli("demo", "--json", cwd=tmp_path))
    database = tmp_path / DEMO_DATABASE_FILE
    assert database.is_file()
    second = report_of(run_cli("demo", "--json", cwd=tmp_path))

    assert first == second
    assert set(first) == REPORT_KEYS
    assert first["rejected"] == 0
    assert first["posts"] > 0 and first["checks"] > 0
    with connect(f"sqlite:///{database}") as connection:
        assert count(connection, post_metrics) == first["snapshots_stored"]
        assert count(connection, posts) == first["posts"]
        total_checks = connection.execute(
            select(func.sum(post_metrics_checks.c.check_count))
        ).scalar_one()
        assert total_checks == first["checks"]


# --- migrations ----------------------------------------------------------------------


def test_db_upgrade_current_and_downgrade_base_create_and_remove_the_tables(
    database_url: str,
) -> None:
    head = migrate.heads()[0]

    upgraded = run_cli("db", "upgrade", "--db", database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert head in upgraded.stdout
    assert table_names(database_url) >= TABLES

    current = run_cli("db", "current", "--db", database_url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == head

    downgraded = run_cli("db", "downgrade", "base", "--db", database_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert "base" in downgraded.stdout
    assert not table_names(database_url) & TABLES


def test_a_cut_off_or_overlong_row_is_rejected_by_line_not_read_as_unknown_counters(
    tmp_path: Path,
) -> None:
    """A row cut after its views would otherwise read as forwards, reactions and replies
    unknown; one with an extra field has its values under the wrong columns."""
    good = [CHANNEL, 1, POSTED, SEEN, 100, 1, 2, 0]
    recording = write_csv(
        tmp_path / "ragged.csv",
        [good, [CHANNEL, 2, POSTED, SEEN, 100], [CHANNEL, 3, POSTED, SEEN, 1, 2, 3, 4, 5]],
    )
    url = f"sqlite:///{tmp_path / 'ragged.sqlite3'}"
    result = run_cli("replay", str(recording), "--json", "--db", url)

    assert "Traceback" not in result.stderr
    report = report_of(result)
    assert (report["posts"], report["rejected"]) == (1, 2)
    assert "line 3: field row:" in result.stderr
    assert "has 5 fields where the header has 8" in result.stderr
    assert "line 4: field row:" in result.stderr
    assert "has 9 fields where the header has 8" in result.stderr
    with connect(url) as connection:
        assert set(connection.execute(select(posts.c.msg_id)).scalars()) == {1}


@pytest.mark.parametrize(
    "command", [["stats"], ["storage"], ["efficiency"], ["trend"], ["db", "downgrade", "0001"]]
)
def test_a_report_or_downgrade_of_a_missing_sqlite_file_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "missing.sqlite3"
    result = run_cli(*command, "--db", f"sqlite:///{missing}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"SQLite database {missing} does not exist (nothing was created)" in result.stderr
    assert not missing.exists()


def test_an_unknown_log_level_is_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMART_RETENTION_LOG_LEVEL", "bogus")
    result = run_cli("db", "current", "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: SMART_RETENTION_LOG_LEVEL: Value error, 'bogus' is not a log level; "
        "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    )


def test_a_report_on_an_older_schema_says_to_upgrade(tmp_path: Path) -> None:
    from smart_retention.storage import migrate
    from smart_retention.storage.engine import make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0002")
    engine.dispose()
    result = run_cli("stats", "--db", url)
    assert result.returncode == 2
    head = migrate.heads()[0]
    assert result.stderr.strip() == (
        f"error: the database is at revision 0002, the reports need {head}; run: "
        "smart-retention db upgrade"
    )
