"""`smart-retention import`: a recording stored in post_metrics as an old collector stored
it, every valid row one snapshot, with replay's CSV format and bad-row handling."""

import csv
import gzip
import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from conftest import require_real_data
from smart_retention.errors import InputFileError
from smart_retention.importer import run_import
from smart_retention.observation import PostInfo, PostKey
from smart_retention.sources.recording import read_recording, read_recording_first_seen
from smart_retention.storage import repository
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics, post_metrics_checks, posts

CLI = Path(sys.executable).parent / "smart-retention"
HEADER = ["channel_id", "msg_id", "posted_at", "observed_at", "views", "forwards", "reactions"]
CHANNEL = 9
POSTED = "2026-02-01T10:00:00+00:00"
REPORT_KEYS = {
    "posts",
    "observations",
    "rejected",
    "rows_inserted",
    "rows_already_present",
    "batches",
    "seconds",
}
HN_COLUMNS = ["msg_id=item_id", "observed_at=snapshot_utc", "views=upvotes", "replies=comments"]
# The first lines of the hn-frontpage recording: about 70 snapshots of the top 30.
HN_SAMPLE_LINES = 2_000


def seen(minute: int) -> str:
    return f"2026-02-01T10:{minute:02d}:00+00:00"


# Two posts polled every minute, repeating themselves as an old collector stored them,
# and three bad rows (lines 6-8; the header is line 1).
GOOD_ROWS = [
    [CHANNEL, 1, POSTED, seen(1), 10, 0, 0],
    [CHANNEL, 1, POSTED, seen(2), 10, 0, 0],
    [CHANNEL, 2, POSTED, seen(1), 5, "", 1],
    [CHANNEL, 2, POSTED, seen(2), 5, "", 1],
    [CHANNEL, 1, POSTED, seen(3), 12, 0, 0],
    [CHANNEL, 2, POSTED, seen(3), 5, "", 1],
]
BAD_ROWS = {
    6: ([CHANNEL, 3, POSTED, seen(1), -4, 0, 0], "post 9/3: field views: '-4' is negative"),
    7: ([CHANNEL, "", POSTED, seen(1), 4, 0, 0], "field msg_id: '' is missing"),
    8: ([CHANNEL, 4, POSTED, "soon", 4, 0, 0], "post 9/4: field observed_at: 'soon'"),
}


def write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] = HEADER) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:  # type: ignore[operator]
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=300,
        check=False,
    )


def stored_rows(engine: Engine) -> list[tuple[Any, ...]]:
    query = select(post_metrics).order_by(post_metrics.c.msg_id, post_metrics.c.snapshot_time)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def as_rows(rows: Sequence[Sequence[object]]) -> list[tuple[Any, ...]]:
    """CSV rows as post_metrics rows: empty cells and missing columns are unknown."""
    return sorted(
        (
            channel,
            msg_id,
            datetime.fromisoformat(observed).astimezone(UTC),
            *(None if value == "" else value for value in counters),
            None,
        )
        for channel, msg_id, _, observed, *counters in rows
    )


def test_every_valid_row_is_stored_as_is_and_bad_rows_are_rejected_by_line_post_and_field(
    database_url: str, tmp_path: Path
) -> None:
    recording = write_csv(
        tmp_path / "old-table.csv.gz",
        [*GOOD_ROWS[:4], *(row for row, _ in BAD_ROWS.values()), *GOOD_ROWS[4:]],
    )

    result = run_cli("import", str(recording), "--json", "--batch-size", "4", "--db", database_url)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report.keys() == REPORT_KEYS
    assert report["observations"] == report["rows_inserted"] == len(GOOD_ROWS)
    assert report["rejected"] == len(BAD_ROWS)
    assert report["rows_already_present"] == 0
    assert report["posts"] == 2
    assert report["batches"] == 2
    for line, (_, message) in BAD_ROWS.items():
        assert f"rejected: line {line}: {message}" in result.stderr
    engine = make_engine(database_url)
    try:
        assert stored_rows(engine) == as_rows(GOOD_ROWS)
        with engine.connect() as connection:
            query = select(posts.c.msg_id, posts.c.posted_at).order_by(posts.c.msg_id)
            assert connection.execute(query).all() == [
                (1, datetime.fromisoformat(POSTED)),
                (2, datetime.fromisoformat(POSTED)),
            ]
            # An old collector kept no check rows; neither does the import.
            checks = select(func.count()).select_from(post_metrics_checks)
            assert connection.execute(checks).scalar_one() == 0

        # Importing the same file again stores nothing new and changes nothing.
        again = run_import(engine, read_recording(recording), batch_size=4)
        assert (again.rows_inserted, again.rows_already_present) == (0, len(GOOD_ROWS))
        assert stored_rows(engine) == as_rows(GOOD_ROWS)
    finally:
        engine.dispose()


def test_rows_already_stored_are_skipped_and_left_as_they_are(
    engine: Engine, tmp_path: Path
) -> None:
    """The database need not be empty: a row with the same key keeps its stored values."""
    posted = datetime.fromisoformat(POSTED)
    with engine.begin() as connection:
        repository.register_posts(connection, [PostInfo(PostKey(CHANNEL, 1), posted)], posted)
        connection.execute(
            post_metrics.insert(),
            [
                {
                    "channel_id": CHANNEL,
                    "msg_id": 1,
                    "snapshot_time": datetime.fromisoformat(seen(2)),
                    "views": 999,
                }
            ],
        )
    recording = read_recording(write_csv(tmp_path / "more.csv", GOOD_ROWS))

    report = run_import(engine, recording, batch_size=2)

    assert (report.rows_inserted, report.rows_already_present) == (len(GOOD_ROWS) - 1, 1)
    assert report.batches == 3
    rows = stored_rows(engine)
    assert len(rows) == len(GOOD_ROWS)
    assert (CHANNEL, 1, datetime.fromisoformat(seen(2)), 999, None, None, None) in rows


def test_importing_again_after_a_cleanup_says_that_the_removed_duplicates_are_back(
    tmp_path: Path,
) -> None:
    """GOOD_ROWS hold three repeats: post 1 at minute 2, post 2 at minutes 2 and 3."""
    url = f"sqlite:///{tmp_path / 'again.sqlite3'}"
    recording = write_csv(tmp_path / "good.csv", GOOD_ROWS)
    first = run_cli("import", str(recording), "--db", url)
    assert first.returncode == 0, first.stderr
    assert "note:" not in first.stderr
    cleaned = run_cli("cleanup", "--yes", "--json", "--db", url)
    assert json.loads(cleaned.stdout)["duplicates_removed"] == 3

    again = run_cli("import", str(recording), "--json", "--db", url)

    assert (
        json.loads(again.stdout)["rows_inserted"],
        json.loads(again.stdout)["rows_already_present"],
    ) == (3, 3)
    assert (
        "note: 3 rows of this file were already stored and 3 were added; if a cleanup "
        in again.stderr
    )
    assert "the duplicates it removed are back: run cleanup again" in again.stderr


def test_strict_exits_1_at_the_first_rejected_row_and_stores_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'strict.sqlite3'}"
    recording = write_csv(tmp_path / "bad.csv", [GOOD_ROWS[0], BAD_ROWS[6][0], GOOD_ROWS[1]])

    result = run_cli("import", str(recording), "--strict", "--db", url)

    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --strict: line 3: {BAD_ROWS[6][1]}"
    assert not (tmp_path / "strict.sqlite3").exists()


def test_a_missing_file_is_a_one_line_error_with_status_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-export.csv"

    result = run_cli("import", str(missing), "--db", f"sqlite:///{tmp_path / 'x.sqlite3'}")

    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: no such file"
    assert result.stdout == ""


def test_posted_at_first_seen_is_each_posts_earliest_observation(tmp_path: Path) -> None:
    """For files without a posted_at column; the rows need not be in time order."""
    header = ["channel_id", "msg_id", "observed_at", "views"]
    rows = [
        [CHANNEL, 1, seen(5), 3],
        [CHANNEL, 2, seen(7), 1],
        [CHANNEL, 1, seen(2), 2],
        [CHANNEL, 1, seen(9), 4],
        [CHANNEL, 3, "never", 1],
        [CHANNEL, 2, "never", 1],
    ]
    path = write_csv(tmp_path / "no-posted-at.csv", rows, header)

    recording = read_recording_first_seen(path)

    posted = {o.key.msg_id: o.posted_at for o in recording.observations}
    assert posted == {1: datetime.fromisoformat(seen(2)), 2: datetime.fromisoformat(seen(7))}
    assert len(recording.observations) == 4
    # A bad observed_at is named as such, never as a posted_at the file does not have.
    assert [str(r) for r in recording.rejections] == [
        "line 6: post 9/3: field observed_at: 'never' is not an ISO-8601 timestamp",
        "line 7: post 9/2: field observed_at: 'never' is not an ISO-8601 timestamp",
    ]


def test_posted_at_first_seen_refuses_a_posted_at_column_mapping(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", GOOD_ROWS)
    with pytest.raises(InputFileError, match="--column posted_at=posted_at conflicts"):
        read_recording_first_seen(path, {"posted_at": "posted_at"})


@pytest.mark.realdata
def test_the_hn_frontpage_recording_imports_with_its_mapping_and_job_ads_are_rejected(
    tmp_path: Path,
) -> None:
    """Upvotes are views, comments are replies, the item is the post; the file has no
    posted_at, so each item's first snapshot stands for it. Job ads have no item_id."""
    source = require_real_data("hn-frontpage")
    with gzip.open(source, "rt", newline="", encoding="utf-8") as whole:
        head = [line for _, line in zip(range(HN_SAMPLE_LINES), whole, strict=False)]
    sample = tmp_path / "hn-sample.csv"
    sample.write_text("".join(head), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'hn.sqlite3'}"
    mapping = [option for pair in HN_COLUMNS for option in ("--column", pair)]

    result = run_cli(
        "import", str(sample), *mapping, "--channel-id", "1", "--posted-at", "first-seen",
        "--json", "--db", url,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = list(csv.DictReader(head))
    job_ads = [row for row in rows if not row["item_id"]]
    assert job_ads, "the sample should hold a job ad"
    assert report["rejected"] == len(job_ads)
    assert report["rows_inserted"] == len(rows) - len(job_ads)
    assert "field msg_id: '' is missing" in result.stderr
    engine = make_engine(url)
    try:
        story = next(row for row in rows if row["item_id"] and not row["comments"])
        with engine.connect() as connection:
            stored = connection.execute(
                select(post_metrics).where(
                    post_metrics.c.msg_id == int(story["item_id"]),
                    post_metrics.c.snapshot_time == datetime.fromisoformat(story["snapshot_utc"]),
                )
            ).one()
            first_seen = min(
                connection.execute(
                    select(post_metrics.c.snapshot_time).where(
                        post_metrics.c.msg_id == int(story["item_id"])
                    )
                ).scalars()
            )
            posted_at = connection.execute(
                select(posts.c.posted_at).where(posts.c.msg_id == int(story["item_id"]))
            ).scalar_one()
    finally:
        engine.dispose()
    assert (stored.views, stored.forwards, stored.reactions, stored.replies) == (
        int(story["upvotes"]),
        None,
        None,
        None,
    )
    assert posted_at == first_seen
