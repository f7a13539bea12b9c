"""Shared by test_backup.py and test_deploy.py: legacy databases, fake pg_dumps, checksums.

A legacy database is what an existing deployment brings: the tables of revision 0001,
filled from a real recording as an every-poll collector stored it, and no migration
record. Its rows are written with the column lists of revision 0001 itself (lightweight
tables, not storage/tables.py), so it stays a 0001 database whatever later revisions add.
"""

import gzip
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, inspect, text

from conftest import require_real_data
from smart_retention.sources.recording import read_recording
from smart_retention.storage import migrate
from smart_retention.storage.types import UTCDateTime

RECSYS = "tg-recsyschannel"
CHANNEL_ID = 1
COLUMN_MAP = {
    "msg_id": "post_id",
    "posted_at": "post_date_utc",
    "observed_at": "snapshot_utc",
    "reactions": "reactions_total",
}
# Rows of the recording loaded: about 60 polls of its 133 posts, a few seconds per deploy.
SAMPLE_ROWS = 8_000
COUNTERS = ("views", "forwards", "reactions", "replies")

_channels = sa.table(
    "channels", sa.column("channel_id"), sa.column("title"), sa.column("created_at", UTCDateTime)
)
_posts = sa.table(
    "posts", sa.column("channel_id"), sa.column("msg_id"), sa.column("posted_at", UTCDateTime)
)
_post_metrics = sa.table(
    "post_metrics",
    sa.column("channel_id"),
    sa.column("msg_id"),
    sa.column("snapshot_time", UTCDateTime),
    *(sa.column(name) for name in COUNTERS),
)


def recording_sample(folder: Path, rows: int = SAMPLE_ROWS) -> Path:
    """The first `rows` rows of the real recording, as a plain CSV file."""
    source = require_real_data(RECSYS)
    sample = folder / "recsys-sample.csv"
    with gzip.open(source, "rt", newline="", encoding="utf-8") as whole:
        lines = [line for _, line in zip(range(rows + 1), whole, strict=False)]
    sample.write_text("".join(lines), encoding="utf-8")
    return sample


def build_legacy_database(engine: Engine, folder: Path) -> list[dict[str, Any]]:
    """Revision 0001's tables, every row of the sample in post_metrics, no migration
    record. Returns the snapshot rows in key order."""
    recording = read_recording(recording_sample(folder), COLUMN_MAP, channel_id=CHANNEL_ID)
    assert not recording.rejections
    migrate.upgrade(engine, "0001")
    posted = {o.key: o.posted_at for o in recording.observations}
    snapshots = sorted(
        (
            {
                "channel_id": o.key.channel_id,
                "msg_id": o.key.msg_id,
                "snapshot_time": o.observed_at,
                **{name: getattr(o.counters, name) for name in COUNTERS},
            }
            for o in recording.observations
        ),
        key=lambda row: (row["channel_id"], row["msg_id"], row["snapshot_time"]),
    )
    first = min(o.observed_at for o in recording.observations)
    with engine.begin() as connection:
        connection.execute(
            _channels.insert(),
            [{"channel_id": CHANNEL_ID, "title": "RecSys Channel", "created_at": first}],
        )
        connection.execute(
            _posts.insert(),
            [
                {"channel_id": key.channel_id, "msg_id": key.msg_id, "posted_at": moment}
                for key, moment in posted.items()
            ],
        )
        connection.execute(_post_metrics.insert(), snapshots)
        connection.execute(text("DROP TABLE alembic_version"))
    return snapshots


def collapse_repeats(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a correct cleanup leaves: each post's first row and every row whose counters
    differ from the row before it (rows in key order)."""
    kept, previous = [], None
    for row in rows:
        post, values = (row["channel_id"], row["msg_id"]), tuple(row[n] for n in COUNTERS)
        if previous is None or previous[0] != post or previous[1] != values:
            kept.append(_row_tuple(row))
        previous = (post, values)
    return kept


def _row_tuple(row: Any) -> tuple[Any, ...]:
    return (
        row["channel_id"],
        row["msg_id"],
        row["snapshot_time"],
        *(row[name] for name in COUNTERS),
    )


def snapshot_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(_post_metrics).order_by(
                _post_metrics.c.channel_id, _post_metrics.c.msg_id, _post_metrics.c.snapshot_time
            )
        ).mappings()
        return [_row_tuple(row) for row in rows]


@dataclass(frozen=True)
class DatabaseState:
    """Everything a rollback must give back: tables, their columns and indexes, and a
    checksum of every table's rows."""

    layout: dict[str, Any]
    checksums: dict[str, str]


def database_state(engine: Engine) -> DatabaseState:
    inspector = inspect(engine)
    names = sorted(inspector.get_table_names())
    layout = {
        name: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)
            ],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(i["name"] or "" for i in inspector.get_indexes(name)),
            "foreign_keys": sorted(f["name"] or "" for f in inspector.get_foreign_keys(name)),
        }
        for name in names
    }
    return DatabaseState(layout, {name: table_checksum(engine, name) for name in names})


def table_checksum(engine: Engine, table: str) -> str:
    """PostgreSQL: md5 of the table's rows as text, in order. SQLite: a hash of the rows
    ordered by every column."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            return connection.execute(
                text(
                    f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                    f'FROM "{table}" AS t'
                )
            ).scalar_one()
        rows = connection.exec_driver_sql(f'SELECT * FROM "{table}"').all()
    digest = hashlib.sha256()
    for row in sorted(rows, key=repr):
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def fake_pg_dump(folder: Path, behaviour: str) -> Path:
    """A folder holding an executable `pg_dump` script, to put first on PATH.

    behaviour: "fails" (reports its version, then exits 1 without a file), "empty"
    (writes an empty file and exits 0), "old" (reports version 9.6.24), "newer" (reports
    99.1, then runs the real pg_dump), "records" (writes its arguments and PGPASSWORD
    beside itself, then runs the real pg_dump)."""
    real = _real_pg_dump()
    bin_dir = folder / f"fake-{behaviour}"
    bin_dir.mkdir(parents=True, exist_ok=True)
    version = "9.6.24" if behaviour == "old" else "99.1" if behaviour == "newer" else "15.20"
    body = {
        "fails": 'echo "pg_dump: error: connection to server failed: simulated" >&2\nexit 1',
        "empty": 'for arg in "$@"; do case "$arg" in --file=*) : > "${arg#--file=}";; esac; done\n'
        "exit 0",
        "old": f'exec "{real}" "$@"',
        "newer": f'exec "{real}" "$@"',
        "records": f'printf "%s\\n" "$@" > "{bin_dir}/argv"\n'
        f'printf "%s" "$PGPASSWORD" > "{bin_dir}/pgpassword"\n'
        f'exec "{real}" "$@"',
    }[behaviour]
    script = bin_dir / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) '
        + version
        + '"; exit 0; fi\n'
        + body
        + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bin_dir


def _real_pg_dump() -> str:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "pg_dump"
        if candidate.is_file() and "fake-" not in folder:
            return str(candidate)
    return "pg_dump"


def path_with(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
