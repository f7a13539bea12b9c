"""Duplicate removal: delete the snapshots that repeat the snapshot before them.

Design note. This module deletes production data; DESIGN.md invariant 3 is its contract.

What is deleted. A row of post_metrics is a duplicate when the row just before it for the
same post (the next earlier snapshot_time) has the same value in all four counters, where
unknown (NULL) equals unknown and differs from any number. Only duplicates are deleted.

What is never deleted. A post's first row: nothing comes before it. A row that differs
from the row before it in any counter, up or down. A row that a check row's
last_saved_at points at, even when it repeats the row before it: the collector reads its
last stored values through that key, and without the row it would take the post for one
never stored. Such rows are counted in the report as duplicates_kept_for_checks.

Why an interrupted run needs no bookkeeping. Deleting a duplicate never changes whether
another row is one: the row after it now follows a row with the same values. So any
subset of the deletions leaves the same duplicates to find, and running again after a
crash or a SIGKILL ends in exactly the state an uninterrupted run leaves.

Transaction boundary. The work goes in batches along the primary key (channel_id, msg_id,
snapshot_time): a batch is the next `batch_size` rows after the last key of the batch
before, found by walking the key index from there. A batch is never chosen by OFFSET or
by physical position; the key is unique, so snapshot_time breaks every tie within a post,
and many posts sharing one timestamp are told apart by the post. Each batch is one
transaction with one DELETE, so it is done wholly or not at all, and its row locks last
only as long as the batch. A batch that starts inside a post also reads that post's last
remaining row before the batch, so the batch's first row is compared with its true
predecessor. Within the DELETE, rows are deleted by the physical address (ctid, rowid)
the same statement read them at: the address never leaves the statement, so it cannot
go stale, and it saves a key lookup per row. On PostgreSQL a batch commits without
waiting for its WAL to be flushed (synchronous_commit off, for the batch only): a server
crash may undo the last few batches, which running again redoes.

One run at a time. PostgreSQL: a session advisory lock for the current schema, taken with
pg_try_advisory_lock. SQLite: an exclusive flock on a file beside the database
(`<database file>-cleanup.lock`, left in place, like SQLite's own -wal and -shm files).
Both end with the process however it ends, so a killed run never leaves a stale lock. A
second run exits at once with `CleanupAlreadyRunning`.

Dry run. It counts, batch by batch, with the very query the live run deletes with.

Afterwards. PostgreSQL: VACUUM (ANALYZE) post_metrics, never FULL (that rewrites the table
under an exclusive lock): the freed space is reused by new rows, the files do not shrink.
SQLite: freed pages go on the freelist and are reused by new rows; ANALYZE refreshes the
planner's statistics, and with auto_vacuum=INCREMENTAL the free pages are handed back to
the file system. Shrinking a SQLite file takes VACUUM, which rewrites the whole file under
an exclusive lock; that is left to the user, at a quiet time.

Undoing a wrong run. Deleted rows are gone: take a backup first (pg_dump of post_metrics,
or a copy of the SQLite file) and run --dry-run first, which says how many rows would go.
"""

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    Delete,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    exists,
    func,
    inspect,
    literal,
    literal_column,
    select,
    text,
    tuple_,
    type_coerce,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from smart_retention.errors import UserError
from smart_retention.observation import COUNTER_FIELDS
from smart_retention.storage.engine import SQLITE_BEGIN_MODE, display_url
from smart_retention.storage.tables import post_metrics, post_metrics_checks
from smart_retention.storage.types import UTCDateTime

log = logging.getLogger(__name__)

# Rows per batch (one transaction each). On the reference table (PostgreSQL, a shared
# two-core machine) a batch this size takes 0.15 s (p99 0.3 s), well inside the second
# a batch may hold its locks, and per-batch overhead stays a few percent of the run.
DEFAULT_BATCH_SIZE = 10_000
# The most rows one batch may delete: a transaction this long already holds its locks for
# minutes; a larger number is a typo (and past 2**63 the database cannot take it at all).
MAX_BATCH_SIZE = 1_000_000
# pg_try_advisory_lock(class, object): the class says "smart-retention cleanup" (the bytes
# of 'SRC1'), the object is a hash of the schema, so each deployment has a lock of its own.
ADVISORY_LOCK_CLASS = 0x53524331
LOCK_FILE_SUFFIX = "-cleanup.lock"
# A batch is tried this many times when PostgreSQL cannot serialize it (SQLSTATE 40001).
BATCH_ATTEMPTS = 3
SERIALIZATION_FAILURE = "40001"
# Rows SQLite's ANALYZE samples per index: the bound SQLite recommends for PRAGMA optimize.
SQLITE_ANALYSIS_LIMIT = 1000
SQLITE_AUTO_VACUUM_INCREMENTAL = 2

# Called after each batch with (rows scanned so far, rows in the table at the start); the
# count is the batches times the batch size, so it may pass the total in the last batch.
ProgressCallback = Callable[[int, int], None]


class CleanupAlreadyRunning(UserError):
    """Another cleanup holds the lock on this database."""

    exit_code = 3


class CleanupNotConfirmed(UserError):
    """A live cleanup was asked for without --yes and there is no terminal to ask on."""


class NoSnapshotTable(UserError):
    """The database has no post_metrics table to clean."""


class Key(NamedTuple):
    """A primary key of post_metrics: the position a batch ends at."""

    channel_id: int
    msg_id: int
    snapshot_time: datetime

    def __str__(self) -> str:
        return f"{self.channel_id}/{self.msg_id}@{self.snapshot_time.isoformat()}"


@dataclass(slots=True)
class CleanupReport:
    dry_run: bool
    # Rows in post_metrics when the run started.
    total_before: int
    # Duplicates the batch queries matched: in a dry run what would go, in a live run what
    # went (each batch deletes exactly what its query matches), so the two agree.
    duplicates_found: int = 0
    duplicates_removed: int = 0
    # Duplicates kept because a check row's last_saved_at points at them.
    duplicates_kept_for_checks: int = 0
    batches: int = 0
    seconds: float = 0.0
    # The longest batch transaction: the longest any batch held its row locks.
    max_batch_seconds: float = 0.0
    maintenance_seconds: float = 0.0
    # Table and index bytes; None when the database cannot say (SQLite without dbstat).
    table_bytes_before: int | None = None
    table_bytes_after: int | None = None

    @property
    def unique_kept(self) -> int:
        """Rows of the starting table kept because they differ from the row before them
        (or have none): the total less every duplicate, deleted or kept for checks."""
        return self.total_before - self.duplicates_found - self.duplicates_kept_for_checks

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "total_before": self.total_before,
            "duplicates_found": self.duplicates_found,
            "duplicates_removed": self.duplicates_removed,
            "duplicates_kept_for_checks": self.duplicates_kept_for_checks,
            "unique_kept": self.unique_kept,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "max_batch_seconds": round(self.max_batch_seconds, 3),
            "maintenance_seconds": round(self.maintenance_seconds, 3),
            "table_bytes_before": self.table_bytes_before,
            "table_bytes_after": self.table_bytes_after,
        }


def run_cleanup(
    engine: Engine,
    *,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressCallback | None = None,
) -> CleanupReport:
    """Delete (or with `dry_run`, count) the duplicates; see the module docstring."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE:,}, got {batch_size}")
    started = time.perf_counter()
    _require_snapshot_table(engine)
    with cleanup_lock(engine) as connection:
        report = CleanupReport(
            dry_run=dry_run,
            total_before=_count_rows(connection),
            table_bytes_before=_table_bytes(connection),
        )
        connection.commit()
        _isolate_batches(connection, dry_run)
        _run_batches(connection, report, batch_size, progress)
        report.duplicates_kept_for_checks = connection.execute(
            _kept_for_checks_query()
        ).scalar_one()
        connection.commit()
        if not dry_run:
            maintenance_started = time.perf_counter()
            _make_space_reusable(engine, connection)
            report.maintenance_seconds = time.perf_counter() - maintenance_started
        report.table_bytes_after = _table_bytes(connection)
        connection.commit()
    report.seconds = time.perf_counter() - started
    log.info(
        "cleanup.done dry_run=%s total_before=%d found=%d removed=%d kept_for_checks=%d "
        "batches=%d max_batch_seconds=%.3f maintenance_seconds=%.2f seconds=%.2f "
        "table_bytes_before=%s table_bytes_after=%s",
        dry_run,
        report.total_before,
        report.duplicates_found,
        report.duplicates_removed,
        report.duplicates_kept_for_checks,
        report.batches,
        report.max_batch_seconds,
        report.maintenance_seconds,
        report.seconds,
        report.table_bytes_before,
        report.table_bytes_after,
    )
    return report


def count_snapshots(engine: Engine) -> int:
    """Rows in post_metrics now: what the confirmation question tells the user."""
    _require_snapshot_table(engine)
    with engine.connect() as connection:
        return _count_rows(connection)


def _run_batches(
    connection: Connection,
    report: CleanupReport,
    batch_size: int,
    progress: ProgressCallback | None,
) -> None:
    after: Key | None = None
    while True:
        started = time.perf_counter()
        batch = _one_batch_retrying(connection, report.dry_run, after, batch_size)
        if batch is None:
            return
        upto, found = batch
        seconds = time.perf_counter() - started
        report.batches += 1
        report.duplicates_found += found
        if not report.dry_run:
            report.duplicates_removed += found
        report.max_batch_seconds = max(report.max_batch_seconds, seconds)
        log.info(
            "cleanup.batch batch=%d dry_run=%s duplicates=%d upto=%s seconds=%.3f",
            report.batches,
            report.dry_run,
            found,
            upto,
            seconds,
        )
        if progress is not None:
            progress(report.batches * batch_size, report.total_before)
        after = upto


def _isolate_batches(connection: Connection, dry_run: bool) -> None:
    """Each batch reads one snapshot from its first statement to its DELETE, so the rows
    it counts to find its end are the rows it compares (a row a collector inserts inside
    the batch's key range meanwhile is left for the next run, not half seen).

    PostgreSQL: REPEATABLE READ. SQLite transactions are snapshots already; a live batch
    also takes the write lock at BEGIN, so a collector committing between the batch's
    first read and its DELETE cannot make the DELETE fail: the collector waits instead.
    """
    if connection.dialect.name == "postgresql":
        connection.execution_options(isolation_level="REPEATABLE READ")
    elif not dry_run:
        connection.execution_options(**{SQLITE_BEGIN_MODE: "IMMEDIATE"})


def _one_batch_retrying(
    connection: Connection, dry_run: bool, after: Key | None, batch_size: int
) -> tuple[Key, int] | None:
    """One batch in its own transaction, tried again when PostgreSQL reports that a row
    it read was changed meanwhile (only a deletion elsewhere can do that)."""
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        try:
            with connection.begin():
                return _one_batch(connection, dry_run, after, batch_size)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != SERIALIZATION_FAILURE:
                raise
            if attempt == BATCH_ATTEMPTS:
                raise
            log.warning("cleanup.batch_retry attempt=%d after=%s", attempt, after)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _one_batch(
    connection: Connection, dry_run: bool, after: Key | None, batch_size: int
) -> tuple[Key, int] | None:
    """Count or delete the duplicates among the `batch_size` rows after `after`, inside the
    caller's transaction; returns the batch's last key and the count, or None at the end."""
    first = after is None
    bound = connection.execute(
        _upper_bound_query(first), {**_key_params("after", after), "n": batch_size}
    ).one_or_none()
    if bound is None:
        return None
    upto = Key(bound.channel_id, bound.msg_id, bound.snapshot_time)
    # In this snapshot (after, upto] holds batch_size rows (fewer only in the last batch);
    # the window holds those and the anchor, and its LIMIT is what ends the index scan.
    params = {**_key_params("after", after), **_key_params("upto", upto)}
    params["window_rows"] = batch_size
    if after is not None:
        window_start, anchors = _window_start(connection, after)
        params.update(_key_params("window_start", window_start))
        params["window_rows"] += anchors
    dialect_name = connection.dialect.name
    if dry_run:
        return upto, connection.execute(_count_query(dialect_name, first), params).scalar_one()
    if dialect_name == "postgresql":
        connection.execute(_NO_WAIT_FOR_WAL_FLUSH)
    return upto, connection.execute(_delete_statement(dialect_name, first), params).rowcount


# A live batch's COMMIT returns without waiting for its WAL to reach the disk, so a slow
# disk (a checkpoint's fsync stalls commits for a second or two) does not lengthen the time
# the batch holds its row locks. A server crash may undo the last batches committed so;
# the database stays consistent, and running again redoes them, as after an interruption.
_NO_WAIT_FOR_WAL_FLUSH = select(func.set_config("synchronous_commit", "off", True))


def _window_start(connection: Connection, after: Key) -> tuple[Key, int]:
    """Where the next batch's window starts, and how many rows before the batch it holds.

    The last remaining row of `after`'s post at or before `after` is the predecessor of
    the post's first row in the next batch (one row). When the post has no such row left
    (it was deleted as a whole meanwhile), the window starts at `after` with no row.
    """
    anchor = connection.execute(_ANCHOR_QUERY, _key_params("after", after)).scalar_one()
    if anchor is None:
        return after, 0
    return Key(after.channel_id, after.msg_id, anchor), 1


def _key_params(name: str, key: Key | None) -> dict[str, Any]:
    if key is None:
        return {}
    return {
        f"{name}_channel_id": key.channel_id,
        f"{name}_msg_id": key.msg_id,
        f"{name}_snapshot_time": key.snapshot_time,
    }


# --- the queries: built once, values bound at execution ------------------------------

_PM = post_metrics
_KEY_COLUMNS = (_PM.c.channel_id, _PM.c.msg_id, _PM.c.snapshot_time)


def _bound_key(name: str) -> Any:
    return tuple_(
        bindparam(f"{name}_channel_id", type_=_PM.c.channel_id.type),
        bindparam(f"{name}_msg_id", type_=_PM.c.msg_id.type),
        bindparam(f"{name}_snapshot_time", type_=UTCDateTime),
    )


@lru_cache(maxsize=2)
def _upper_bound_query(first_batch: bool) -> Select[Any]:
    """The last key of the next batch: the database walks `n` entries of the key index
    and returns one row (none when no row is left)."""
    page = select(*_KEY_COLUMNS).order_by(*_KEY_COLUMNS).limit(bindparam("n", type_=Integer))
    if not first_batch:
        page = page.where(tuple_(*_KEY_COLUMNS) > _bound_key("after"))
    keys = page.subquery("page")
    return (
        select(keys.c.channel_id, keys.c.msg_id, keys.c.snapshot_time)
        .order_by(keys.c.channel_id.desc(), keys.c.msg_id.desc(), keys.c.snapshot_time.desc())
        .limit(1)
    )


_ANCHOR_QUERY = select(type_coerce(func.max(_PM.c.snapshot_time), UTCDateTime)).where(
    _PM.c.channel_id == bindparam("after_channel_id", type_=_PM.c.channel_id.type),
    _PM.c.msg_id == bindparam("after_msg_id", type_=_PM.c.msg_id.type),
    _PM.c.snapshot_time <= bindparam("after_snapshot_time", type_=UTCDateTime),
)


# Each row's physical address, read and used within one statement only (see _delete_statement).
_ROW_ADDRESS = {"postgresql": "ctid", "sqlite": "rowid"}


@lru_cache(maxsize=4)
def _duplicates_query(dialect_name: str, first_batch: bool) -> Select[Any]:
    """The row addresses of the deletable duplicates in the batch (after, upto].

    The rows are compared in a window that also holds the anchor (`window_start`), the
    predecessor of the batch's first row when the batch starts inside a post. The window
    is read as the next `window_rows` entries of the key index: PostgreSQL cannot end an
    index scan on a row comparison (`<= upto`) and would otherwise read the index to its
    end, batch after batch. Should a row appear inside the range meanwhile, the limit only
    leaves the range's last rows for another run; each row read is still compared with the
    row truly before it.
    """
    key = tuple_(*_KEY_COLUMNS)
    in_window = key <= _bound_key("upto")
    if not first_batch:
        in_window = and_(key >= _bound_key("window_start"), in_window)
    rows = (
        select(
            literal_column(_ROW_ADDRESS[dialect_name]).label("row_address"),
            *_KEY_COLUMNS,
            *(_PM.c[name] for name in COUNTER_FIELDS),
        )
        .where(in_window)
        .order_by(*_KEY_COLUMNS)
        .limit(bindparam("window_rows", type_=Integer))
        .subquery("batch_rows")
    )
    post = (rows.c.channel_id, rows.c.msg_id)

    def before(column: Any) -> Any:
        return func.lag(column).over(partition_by=post, order_by=rows.c.snapshot_time)

    repeats = and_(
        before(rows.c.snapshot_time).is_not(None),
        *(rows.c[name].is_not_distinct_from(before(rows.c[name])) for name in COUNTER_FIELDS),
    )
    ordered = select(
        rows.c.row_address,
        rows.c.channel_id,
        rows.c.msg_id,
        rows.c.snapshot_time,
        repeats.label("repeats"),
    ).subquery("ordered")
    row = ordered.c
    checks = post_metrics_checks
    pointed_at_by_a_check = exists().where(
        checks.c.channel_id == row.channel_id,
        checks.c.msg_id == row.msg_id,
        checks.c.last_saved_at == row.snapshot_time,
    )
    conditions = [row.repeats, ~pointed_at_by_a_check]
    if not first_batch:
        row_key = tuple_(row.channel_id, row.msg_id, row.snapshot_time)
        conditions.append(row_key > _bound_key("after"))
    return select(row.row_address).where(*conditions)


@lru_cache(maxsize=4)
def _count_query(dialect_name: str, first_batch: bool) -> Select[Any]:
    duplicates = _duplicates_query(dialect_name, first_batch).subquery("duplicates")
    return select(func.count()).select_from(duplicates)


@lru_cache(maxsize=4)
def _delete_statement(dialect_name: str, first_batch: bool) -> Delete:
    """Delete the rows `_duplicates_query` names, by the address it read them at.

    The address is read and used inside one statement, never kept between statements,
    so it cannot go stale; it spares a second key lookup per row, which would make the
    batches half again as slow. (post_metrics rows are never updated, and a row that a
    concurrent UPDATE moved would get a new address and simply not be deleted.)
    """
    duplicates = _duplicates_query(dialect_name, first_batch)
    address = literal_column(_ROW_ADDRESS[dialect_name])
    if dialect_name == "postgresql":
        # = ANY(ARRAY(...)) is a TID scan; IN (...) would plan a join.
        return _PM.delete().where(address == func.any(func.array(duplicates.scalar_subquery())))
    return _PM.delete().where(address.in_(duplicates))


@lru_cache(maxsize=1)
def _kept_for_checks_query() -> Select[Any]:
    """Rows a check row points at that repeat the row before them."""
    checks, earlier, previous = post_metrics_checks, _PM.alias("earlier"), _PM.alias("previous")
    previous_time = (
        select(func.max(earlier.c.snapshot_time))
        .where(
            earlier.c.channel_id == _PM.c.channel_id,
            earlier.c.msg_id == _PM.c.msg_id,
            earlier.c.snapshot_time < _PM.c.snapshot_time,
        )
        .scalar_subquery()
    )
    joined = checks.join(
        _PM,
        and_(
            _PM.c.channel_id == checks.c.channel_id,
            _PM.c.msg_id == checks.c.msg_id,
            _PM.c.snapshot_time == checks.c.last_saved_at,
        ),
    ).join(
        previous,
        and_(
            previous.c.channel_id == _PM.c.channel_id,
            previous.c.msg_id == _PM.c.msg_id,
            previous.c.snapshot_time == previous_time,
        ),
    )
    return (
        select(func.count())
        .select_from(joined)
        .where(*(_PM.c[name].is_not_distinct_from(previous.c[name]) for name in COUNTER_FIELDS))
    )


def _count_rows(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(_PM)).scalar_one()


def _require_snapshot_table(engine: Engine) -> None:
    if not inspect(engine).has_table(_PM.name):
        raise NoSnapshotTable(
            f"database {display_url(engine.url)} has no "
            f"{_PM.name} table; nothing to clean (create the schema with: "
            "smart-retention db upgrade)"
        )


# --- one run at a time ---------------------------------------------------------------


@contextmanager
def cleanup_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the database's cleanup lock, for the whole of a run; raises
    `CleanupAlreadyRunning` at once when another run holds it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, _postgres_run_lock(connection):
            yield connection
    elif engine.dialect.name == "sqlite":
        with _sqlite_run_lock(engine), engine.connect() as connection:
            yield connection
    else:
        raise NotImplementedError(f"database {engine.dialect.name!r} is not supported")


def _advisory_lock_args() -> tuple[Any, Any]:
    schema = func.coalesce(func.current_schema(), "")
    return cast(literal(ADVISORY_LOCK_CLASS), Integer), func.hashtext(schema)


@contextmanager
def _postgres_run_lock(connection: Connection) -> Iterator[None]:
    schema = connection.execute(select(func.current_schema())).scalar_one()
    held = connection.execute(select(func.pg_try_advisory_lock(*_advisory_lock_args())))
    acquired = held.scalar_one()
    connection.commit()
    if not acquired:
        raise CleanupAlreadyRunning(
            f"another cleanup is running on this database (schema {schema}); "
            "wait for it to finish, or stop it, then run again"
        )
    try:
        yield
    finally:
        # A session lock outlives transactions and would stay with the pooled connection.
        try:
            connection.rollback()
            connection.execute(select(func.pg_advisory_unlock(*_advisory_lock_args())))
            connection.commit()
        except DBAPIError:
            # The connection is broken; closing it is what releases the lock.
            connection.invalidate()


@contextmanager
def _sqlite_run_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        # A private in-memory database: no other process can reach it.
        yield
        return
    # Named after the file itself, symlinks resolved: two names of one database (a link,
    # ./ segments) must meet on one lock.
    lock_path = Path(os.path.realpath(database) + LOCK_FILE_SUFFIX)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CleanupAlreadyRunning(
                f"another cleanup is running on {database} (it holds {lock_path}); "
                "wait for it to finish, or stop it, then run again"
            ) from None
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(descriptor)


# --- space and statistics ------------------------------------------------------------


def _table_bytes(connection: Connection) -> int | None:
    """Bytes of post_metrics and its indexes, as the database counts them."""
    if connection.dialect.name == "postgresql":
        size = func.pg_total_relation_size(func.to_regclass(literal(_PM.name)))
        return connection.execute(select(size)).scalar_one()
    try:
        return connection.execute(_SQLITE_TABLE_BYTES, {"table": _PM.name}).scalar_one()
    except OperationalError:
        log.warning("cleanup.table_bytes_unknown reason=%s", "SQLite built without dbstat")
        connection.rollback()
        return None


# Pages of the table and of its indexes (dbstat is a virtual table of every page in use).
_SQLITE_TABLE_BYTES = text(
    "SELECT coalesce(sum(pages.pgsize), 0) FROM dbstat AS pages "
    "JOIN sqlite_master AS objects ON objects.name = pages.name "
    "WHERE objects.tbl_name = :table"
)


def _make_space_reusable(engine: Engine, connection: Connection) -> None:
    if engine.dialect.name == "postgresql":
        # VACUUM cannot run inside a transaction block.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as autocommit:
            autocommit.execute(text("VACUUM (ANALYZE) post_metrics"))
        return
    connection.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT:d}")
    connection.execute(text("ANALYZE post_metrics"))
    auto_vacuum = connection.exec_driver_sql("PRAGMA auto_vacuum").scalar_one()
    if auto_vacuum == SQLITE_AUTO_VACUUM_INCREMENTAL:
        connection.exec_driver_sql("PRAGMA incremental_vacuum").all()
    connection.commit()
