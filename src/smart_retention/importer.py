"""Import a recording into post_metrics as it is: every valid row becomes one snapshot, as
an old collector that stored every poll would have left it.

This is how users bring in an export of their old table, and how tests and benchmarks
build a bloated table for the cleanup. Reading and validation are `read_recording`'s, so
bad rows are rejected exactly as `replay` rejects them.

Posts are registered first, then the rows go in batches of `batch_size`, one transaction
each. A row whose key (post, snapshot_time) is already stored is skipped, not an error:
importing the same file twice stores it once, an interrupted import is finished by
running it again, and nothing stored before is changed. No check rows are written: an
old collector kept none, and the collector writes its own at its first check of a post.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine

from smart_retention.observation import Observation, PostInfo, PostKey
from smart_retention.sources.recording import Recording
from smart_retention.storage import repository
from smart_retention.storage.tables import post_metrics

log = logging.getLogger(__name__)

# Rows per transaction. Large enough that a million rows is a few hundred commits, small
# enough that a batch's parameters stay a few megabytes.
DEFAULT_BATCH_SIZE = 5_000

# Called after each batch with the number of rows done so far.
ProgressCallback = Callable[[int], None]


class PostedAt(StrEnum):
    """Where a post's publication time comes from."""

    # The file's posted_at column (or the one --column posted_at=NAME maps).
    COLUMN = "column"
    # The post's earliest observed_at in the file, for files without a posted_at column.
    FIRST_SEEN = "first-seen"


@dataclass(slots=True)
class ImportReport:
    posts: int
    observations: int
    rejected: int
    rows_inserted: int = 0
    rows_already_present: int = 0
    batches: int = 0
    seconds: float = 0.0
    rejection_messages: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "observations": self.observations,
            "rejected": self.rejected,
            "rows_inserted": self.rows_inserted,
            "rows_already_present": self.rows_already_present,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


def run_import(
    engine: Engine,
    recording: Recording,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Store every observation of `recording` as a snapshot; see the module docstring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    started = time.perf_counter()
    observations = recording.observations
    report = ImportReport(
        posts=recording.post_count,
        observations=len(observations),
        rejected=len(recording.rejections),
        rejection_messages=[str(r) for r in recording.rejections],
    )
    _register_posts(engine, observations, batch_size)
    for start in range(0, len(observations), batch_size):
        batch_started = time.perf_counter()
        chunk = observations[start : start + batch_size]
        with engine.begin() as connection:
            inserted = _insert_if_absent(connection, _snapshot_rows(chunk))
        report.batches += 1
        report.rows_inserted += inserted
        report.rows_already_present += len(chunk) - inserted
        log.info(
            "import.batch batch=%d rows=%d inserted=%d seconds=%.3f",
            report.batches,
            len(chunk),
            inserted,
            time.perf_counter() - batch_started,
        )
        if progress is not None:
            progress(start + len(chunk))
    report.seconds = time.perf_counter() - started
    log.info(
        "import.done posts=%d observations=%d rejected=%d inserted=%d already_present=%d "
        "batches=%d seconds=%.2f",
        report.posts,
        report.observations,
        report.rejected,
        report.rows_inserted,
        report.rows_already_present,
        report.batches,
        report.seconds,
    )
    return report


def _register_posts(engine: Engine, observations: Sequence[Observation], batch_size: int) -> None:
    """Channels and posts before their snapshots (the foreign keys want them); posts
    already known keep their stored posted_at."""
    infos: dict[PostKey, PostInfo] = {}
    for observation in observations:
        if observation.key not in infos:
            infos[observation.key] = PostInfo(observation.key, observation.posted_at)
    ordered = sorted(infos.values(), key=lambda info: info.key)
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        with engine.begin() as connection:
            repository.register_posts(connection, chunk, min(i.posted_at for i in chunk))


def _insert_if_absent(connection: Connection, rows: list[dict[str, Any]]) -> int:
    """Insert the snapshots whose key (post, snapshot_time) is not stored yet; rows
    already present are left as they are. Returns how many were inserted."""
    statement = (
        repository.dialect_insert(connection, post_metrics)
        .on_conflict_do_nothing(index_elements=list(post_metrics.primary_key.columns))
        .returning(post_metrics.c.msg_id)
    )
    return len(connection.execute(statement, rows).all())


def _snapshot_rows(observations: Sequence[Observation]) -> list[dict[str, Any]]:
    return [
        {
            "channel_id": o.key.channel_id,
            "msg_id": o.key.msg_id,
            "snapshot_time": o.observed_at,
            "views": o.counters.views,
            "forwards": o.counters.forwards,
            "reactions": o.counters.reactions,
            "replies": o.counters.replies,
        }
        for o in observations
    ]
