"""Benchmark: duplicate cleanup on PostgreSQL against its ceiling, in one run.

Cases, each on two identical copies of one table, in schemas of their own:

- reference: a generated table in the shape of the reference deployment (DESIGN.md:
  2,770 posts, 6,918,136 rows, about 94.6% of them repeating the row before them), polled
  every 5 minutes, rows stored in time order as a collector appends them;
- hn-frontpage: the 963,480-row recording imported as an old collector stored it, with
  the mapping docs/cleanup.md gives (skipped when the file is missing, or with --skip-hn).

On one copy smart-retention's batched cleanup runs (run_cleanup, as `smart-retention
cleanup --yes` runs it); on the other the ceiling: one DELETE statement with a window
function over the whole table. Both copies are vacuumed and analysed before timing and
must end with the same rows (checked by a checksum). Reported, as a Markdown table: the
seconds of each (the cleanup's without its VACUUM), their ratio, the batches' median,
99th percentile and longest time (how long a batch held its row locks), the
VACUUM (ANALYZE) after each, and the table's size before and after.

Run: .venv/bin/python bench/cleanup.py [--scale 0.1] [--batch-size N] [--skip-hn]
"""

import argparse
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from smart_retention.cleanup import DEFAULT_BATCH_SIZE, run_cleanup
from smart_retention.importer import run_import
from smart_retention.sources.recording import read_recording_first_seen
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
HN_RECORDING = REAL_DATA / "hn-frontpage" / "snapshots.csv.gz"
HN_COLUMNS = {
    "msg_id": "item_id",
    "observed_at": "snapshot_utc",
    "views": "upvotes",
    "replies": "comments",
}
# The reference deployment (DESIGN.md, "The problem").
REFERENCE_POSTS = 2_770
REFERENCE_ROWS = 6_918_136
# A poll changes some counter with this probability (per 10,000): 94.6% repeat the row before.
CHANGE_PER_10000 = 540
CHANNELS = 10

# One statement, the whole table: the fastest the rule can be applied in PostgreSQL.
CEILING_DELETE = """
DELETE FROM post_metrics AS m
USING (
    SELECT channel_id, msg_id, snapshot_time,
           (lag(snapshot_time) OVER w) IS NOT NULL
           AND views IS NOT DISTINCT FROM lag(views) OVER w
           AND forwards IS NOT DISTINCT FROM lag(forwards) OVER w
           AND reactions IS NOT DISTINCT FROM lag(reactions) OVER w
           AND replies IS NOT DISTINCT FROM lag(replies) OVER w AS repeats
    FROM post_metrics
    WINDOW w AS (PARTITION BY channel_id, msg_id ORDER BY snapshot_time)
) AS d
WHERE d.repeats
  AND m.channel_id = d.channel_id AND m.msg_id = d.msg_id AND m.snapshot_time = d.snapshot_time
"""

# The generated table. Post p (0-based) is polled every 5 minutes from its publication;
# at each poll some counter changes with probability CHANGE_PER_10000 / 10,000 (a fixed
# multiplicative hash of post and poll, so every run builds the same table); the counters
# follow the number of changes so far; replies are unknown (NULL), as Telegram recordings
# have them. Rows are inserted in time order, as a collector appends them.
GENERATE_CHANNELS = """
INSERT INTO channels (channel_id, created_at)
SELECT c, timestamptz '2025-01-01 00:00:00+00' FROM generate_series(1, :channels) AS c
"""
GENERATE_POSTS = """
INSERT INTO posts (channel_id, msg_id, posted_at)
SELECT 1 + p % :channels, 1 + p / :channels,
       timestamptz '2025-01-01 00:00:00+00' + p * interval '3 hours'
FROM generate_series(0, :posts - 1) AS p
"""
GENERATE_SNAPSHOTS = """
INSERT INTO post_metrics (channel_id, msg_id, snapshot_time, views, forwards, reactions, replies)
SELECT channel_id, msg_id, snapshot_time,
       100 + 3 * p + 7 * changes, changes / 10, changes / 4, NULL
FROM (
    SELECT 1 + p % :channels AS channel_id, 1 + p / :channels AS msg_id, p,
           timestamptz '2025-01-01 00:00:00+00' + p * :stagger_minutes * interval '1 minute'
               + i * interval '5 minutes' AS snapshot_time,
           sum(CASE WHEN i > 0 AND (p * 40503 + i * 2654435761) % 4294967291 % 10000
                                   < :change_per_10000 THEN 1 ELSE 0 END)
               OVER (PARTITION BY p ORDER BY i) AS changes
    FROM generate_series(0, :posts - 1) AS p
    CROSS JOIN LATERAL generate_series(
        0, :rows / :posts - 1 + CASE WHEN p < :rows % :posts THEN 1 ELSE 0 END) AS i
) AS polls
ORDER BY snapshot_time, channel_id, msg_id
"""
CHECKSUM = """
SELECT count(*), md5(string_agg(
    concat_ws(',', channel_id, msg_id, snapshot_time, views, forwards, reactions, replies),
    ';' ORDER BY channel_id, msg_id, snapshot_time))
FROM post_metrics
"""
COPY_TABLES = ("channels", "posts", "post_metrics")


@contextmanager
def schema_engine(name: str) -> Iterator[Engine]:
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        migrate.upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def generate_reference(engine: Engine, scale: float, stagger_minutes: int = 180) -> None:
    posts = max(1, round(REFERENCE_POSTS * scale))
    rows = max(posts, round(REFERENCE_ROWS * scale))
    params = {
        "channels": min(CHANNELS, posts),
        "posts": posts,
        "rows": rows,
        "change_per_10000": CHANGE_PER_10000,
        "stagger_minutes": stagger_minutes,
    }
    with engine.begin() as connection:
        _fast_bulk_load(connection)
        for statement in (GENERATE_CHANNELS, GENERATE_POSTS, GENERATE_SNAPSHOTS):
            connection.execute(text(statement), params)


def _fast_bulk_load(connection: Connection) -> None:
    """For this transaction: no per-row foreign key triggers (the generated rows and the
    copies satisfy the keys by construction; needs a superuser, as the local server's
    postgres is) and room to sort in memory."""
    connection.execute(text("SET LOCAL session_replication_role = replica"))
    connection.execute(text("SET LOCAL work_mem = '256MB'"))


def import_hn(engine: Engine) -> None:
    recording = read_recording_first_seen(HN_RECORDING, HN_COLUMNS, channel_id=1)
    run_import(engine, recording)


def copy_tables(source: str, target: str) -> None:
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        _fast_bulk_load(connection)
        for table in COPY_TABLES:
            connection.execute(
                text(f'INSERT INTO "{target}".{table} SELECT * FROM "{source}".{table}')
            )
    admin.dispose()


def vacuum(engine: Engine) -> float:
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE) post_metrics"))
    return time.perf_counter() - started


def checkpoint(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("CHECKPOINT"))


def checkpoints(engine: Engine) -> int:
    """Checkpoints the server has made: the end of each stalls every writer for a moment
    (its fsync), which is what the rare slow batch coincides with."""
    query = text("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def checksum(engine: Engine) -> tuple[int, str]:
    with engine.connect() as connection:
        rows, digest = connection.execute(text(CHECKSUM)).one()
    return rows, digest


def ceiling(engine: Engine) -> tuple[int, float]:
    started = time.perf_counter()
    with engine.begin() as connection:
        deleted = connection.execute(text(CEILING_DELETE)).rowcount
    return deleted, time.perf_counter() - started


class BatchClock:
    """Seconds per batch, from the progress callback run_cleanup calls after each commit."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def __call__(self, scanned: int, total: int) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_case(name: str, build: Callable[[Engine], None], batch_size: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    ours, theirs = f"bench_{tag}_cleanup", f"bench_{tag}_ceiling"
    with schema_engine(ours) as engine, schema_engine(theirs) as ceiling_engine:
        started = time.perf_counter()
        build(engine)
        copy_tables(ours, theirs)
        build_seconds = time.perf_counter() - started
        for prepared in (engine, ceiling_engine):
            vacuum(prepared)
        total, _ = checksum(engine)
        checkpoint(engine)
        deleted, ceiling_seconds = ceiling(ceiling_engine)
        ceiling_vacuum = vacuum(ceiling_engine)
        checkpoint(engine)
        clock = BatchClock()
        checkpoints_before = checkpoints(engine)
        report = run_cleanup(engine, batch_size=batch_size, progress=clock)
        checkpoints_during = checkpoints(engine) - checkpoints_before
        same = checksum(engine) == checksum(ceiling_engine)
    return {
        "case": name,
        "rows": total,
        "build_seconds": build_seconds,
        "removed": report.duplicates_removed,
        "ceiling_deleted": deleted,
        "same_rows": same,
        "seconds": report.seconds - report.maintenance_seconds,
        "vacuum_seconds": report.maintenance_seconds,
        "ceiling_seconds": ceiling_seconds,
        "ceiling_vacuum_seconds": ceiling_vacuum,
        "batches": report.batches,
        "batch_median": clock.quantile(0.5),
        "batch_p99": clock.quantile(0.99),
        "max_batch_seconds": report.max_batch_seconds,
        "batches_over_1s": sum(seconds > 1.0 for seconds in clock.seconds),
        "checkpoints": checkpoints_during,
        "mb_before": report.table_bytes_before / 2**20,
        "mb_after": report.table_bytes_after / 2**20,
    }


COLUMNS = (
    ("case", "{}"),
    ("rows", "{:,}"),
    ("removed", "{:,}"),
    ("same_rows", "{}"),
    ("seconds", "{:.1f}"),
    ("ceiling_seconds", "{:.1f}"),
    ("ratio", "{:.2f}"),
    ("batches", "{:,}"),
    ("batch_median", "{:.3f}"),
    ("batch_p99", "{:.3f}"),
    ("max_batch_seconds", "{:.3f}"),
    ("batches_over_1s", "{}"),
    ("checkpoints", "{}"),
    ("vacuum_seconds", "{:.1f}"),
    ("ceiling_vacuum_seconds", "{:.1f}"),
    ("mb_before", "{:.0f}"),
    ("mb_after", "{:.0f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the reference")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--skip-hn", action="store_true")
    args = parser.parse_args()
    cases = [("reference", lambda engine: generate_reference(engine, args.scale))]
    if not args.skip_hn and HN_RECORDING.exists():
        cases.append(("hn-frontpage", import_hn))
    print(f"scale {args.scale}, batch size {args.batch_size:,}, load average {os.getloadavg()}")
    print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for name, build in cases:
        result = run_case(name, build, args.batch_size)
        result["ratio"] = result["seconds"] / result["ceiling_seconds"]
        cells = (form.format(result[key]) for key, form in COLUMNS)
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
