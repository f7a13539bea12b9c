"""Set-based reads and writes for the collector.

Every function works on a whole batch with a fixed number of statements, whatever the
batch size: one read of the check rows joined to their last stored snapshots, then the
writes: on SQLite one multi-row insert of snapshots and one multi-row upsert of check
rows; on PostgreSQL one COPY of the check rows into a staging table and one statement
that inserts the snapshots and merges the check rows. None of them commits.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

from smart_retention.observation import Counters, PostInfo, PostKey
from smart_retention.schedule import DueWindow, TierOutlook, due_in_windows
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts
from smart_retention.storage.types import UTCDateTime

COUNTER_NAMES = Counters._fields


@dataclass(frozen=True, slots=True)
class DuePost:
    key: PostKey
    posted_at: datetime
    last_checked_at: datetime | None


class PostState(NamedTuple):
    """What the collector knows of a post before this check.

    Named tuples here and in ClaimedPost: one of each is made per check, and a tuple is
    several times cheaper to build than a frozen dataclass."""

    last_checked_at: datetime
    last_changed_at: datetime
    last_saved_at: datetime | None
    checks_since_save: int
    stable_since: datetime | None
    last_observed: Counters
    last_stored: Counters | None
    policy_state: Any


class ClaimedPost(NamedTuple):
    """A due post locked for the current transaction, with what is known of it."""

    key: PostKey
    posted_at: datetime
    state: PostState | None


class LockedPost(NamedTuple):
    """A due post locked for the current transaction, before its state is read."""

    key: PostKey
    posted_at: datetime


_DIALECT_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def dialect_insert(connection: Connection, table: Any) -> Insert:
    """INSERT with the dialect's ON CONFLICT support (both engines have it)."""
    try:
        return _DIALECT_INSERTS[connection.dialect.name](table)
    except KeyError:
        raise NotImplementedError(
            f"database {connection.dialect.name!r} is not supported"
        ) from None


def register_posts(connection: Connection, infos: Sequence[PostInfo], now: datetime) -> None:
    """Insert channels and posts not seen before; known ones are left as they are."""
    if not infos:
        return
    channel_ids = sorted({info.key.channel_id for info in infos})
    connection.execute(
        dialect_insert(connection, channels).on_conflict_do_nothing(),
        [{"channel_id": channel_id, "created_at": now} for channel_id in channel_ids],
    )
    rows = [
        {
            "channel_id": i.key.channel_id,
            "msg_id": i.key.msg_id,
            "posted_at": i.posted_at,
            "deleted_at": None,
        }
        for i in infos
    ]
    _execute_rows(connection, posts, _register_posts_statement, rows)


def iter_due_posts(
    engine: Engine, windows: Sequence[DueWindow], batch_size: int
) -> Iterator[list[DuePost]]:
    """Due posts in key order, a page at a time, each page read in its own short query.

    Paging is by key (never OFFSET), so posts checked between pages do not shift it.
    """
    if not windows:
        return
    params = {**_window_params(windows), "limit": batch_size}
    first_page, next_page = _due_queries(len(windows))
    query = first_page
    while True:
        with engine.connect() as connection:
            rows = connection.execute(query, params).all()
        if not rows:
            return
        yield [
            DuePost(PostKey(r.channel_id, r.msg_id), r.posted_at, r.last_checked_at) for r in rows
        ]
        if len(rows) < batch_size:
            return
        query = next_page
        params["after_channel_id"], params["after_msg_id"] = rows[-1].channel_id, rows[-1].msg_id


def lock_due_posts(
    connection: Connection,
    windows: Sequence[DueWindow],
    after: PostKey | None,
    limit: int,
    through: PostKey | None = None,
) -> list[LockedPost]:
    """The next `limit` due posts after `after` (and up to `through`, when given), in
    key order, locked for this transaction: the first half of a claim.

    A claim takes two statements, on purpose. This one locks the posts (PostgreSQL: FOR
    NO KEY UPDATE SKIP LOCKED, so posts another collector holds are skipped, not waited
    for, while writers that only reference a post, such as a snapshot insert, are not
    blocked); but it judges due-ness from the check rows as they were when it started,
    and a collector that committed a moment before the lock was taken is not visible to
    it. The second, `claim_locked_posts`, reads the check rows afresh, under the lock,
    and lets go of posts found checked meanwhile. On SQLite the caller's IMMEDIATE
    transaction excludes every other writer anyway.
    """
    if not windows:
        return []
    params = {**_window_params(windows), "limit": limit}
    if after is not None:
        params["after_channel_id"], params["after_msg_id"] = after
    if through is not None:
        params["through_channel_id"], params["through_msg_id"] = through
    query = _claim_query(len(windows), after is not None, through is not None)
    if connection.dialect.name == "postgresql":
        rows = _driver_rows(connection, _postgresql_sql(query), params)
    else:
        rows = connection.execute(query, params).all()
    make_locked, make_key = LockedPost._make, PostKey._make
    return [make_locked((make_key(row[:2]), row[2])) for row in rows]


def claim_locked_posts(
    connection: Connection, locked: Sequence[LockedPost], windows: Sequence[DueWindow]
) -> list[ClaimedPost]:
    """The posts of `locked` still due, with their check rows and last stored snapshots
    read afresh under the lock (see `lock_due_posts`)."""
    states = load_post_states(connection, [post.key for post in locked])
    claimed = []
    for key, posted_at in locked:
        state = states.get(key)
        last_checked_at = state.last_checked_at if state is not None else None
        if due_in_windows(posted_at, last_checked_at, windows):
            claimed.append(ClaimedPost(key, posted_at, state))
    return claimed


def _window_params(windows: Sequence[DueWindow]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, window in enumerate(windows):
        params[f"posted_after_{i}"] = window.posted_after
        params[f"posted_at_or_before_{i}"] = window.posted_at_or_before
        params[f"checked_at_or_before_{i}"] = window.checked_at_or_before
    return params


def _due_condition(window_count: int) -> Any:
    """The schedule's due windows in SQL; values are bound at execution."""
    checks = post_metrics_checks
    return and_(
        posts.c.deleted_at.is_(None),
        or_(
            *(
                and_(
                    posts.c.posted_at > bindparam(f"posted_after_{i}", type_=UTCDateTime),
                    posts.c.posted_at <= bindparam(f"posted_at_or_before_{i}", type_=UTCDateTime),
                    or_(
                        checks.c.last_checked_at.is_(None),
                        checks.c.last_checked_at
                        <= bindparam(f"checked_at_or_before_{i}", type_=UTCDateTime),
                    ),
                )
                for i in range(window_count)
            )
        ),
    )


@lru_cache(maxsize=16)
def _due_queries(window_count: int) -> tuple[Select[Any], Select[Any]]:
    """The due-posts page query, built once: the first page and the page after a key."""
    checks = post_metrics_checks
    first_page = (
        select(posts.c.channel_id, posts.c.msg_id, posts.c.posted_at, checks.c.last_checked_at)
        .select_from(posts.outerjoin(checks, _same_post(checks, posts)))
        .where(_due_condition(window_count))
        .order_by(posts.c.channel_id, posts.c.msg_id)
        .limit(bindparam("limit", type_=Integer))
    )
    next_page = first_page.where(
        tuple_(posts.c.channel_id, posts.c.msg_id)
        > tuple_(bindparam("after_channel_id"), bindparam("after_msg_id"))
    )
    return first_page, next_page


@lru_cache(maxsize=32)
def _claim_query(window_count: int, paged: bool, bounded: bool) -> Select[Any]:
    """The claim query, built once per shape: from the first post or after a key, to
    the end or through a key (a page claimed again after a lost connection)."""
    checks = post_metrics_checks

    def in_page(table: Table) -> Any:
        key = tuple_(table.c.channel_id, table.c.msg_id)
        after = tuple_(bindparam("after_channel_id"), bindparam("after_msg_id"))
        through = tuple_(bindparam("through_channel_id"), bindparam("through_msg_id"))
        return and_(key > after if paged else true(), key <= through if bounded else true())

    # The key bounds are repeated in the join: they add no condition (a joined row has
    # the post's key) but let PostgreSQL start both index scans at the page, so a batch
    # costs what it returns rather than what comes before it.
    joined = posts.outerjoin(checks, and_(_same_post(checks, posts), in_page(checks)))
    return (
        select(posts.c.channel_id, posts.c.msg_id, posts.c.posted_at)
        .select_from(joined)
        .where(_due_condition(window_count), in_page(posts))
        .order_by(posts.c.channel_id, posts.c.msg_id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(of=posts, skip_locked=True, key_share=True)
    )


@lru_cache(maxsize=64)
def _postgresql_sql(query: Select[Any]) -> str:
    """`query` as PostgreSQL (psycopg) SQL with named placeholders, compiled once."""
    return str(query.compile(dialect=_PSYCOPG))


def tier_outlooks(connection: Connection, windows: Sequence[DueWindow]) -> list[TierOutlook]:
    """Per tier window, what `schedule.earliest_due` needs, in one aggregate query."""
    if not windows:
        return []
    params: dict[str, Any] = {}
    for i, window in enumerate(windows):
        params[f"posted_after_{i}"] = window.posted_after
        params[f"posted_at_or_before_{i}"] = window.posted_at_or_before
    row = connection.execute(_outlook_query(len(windows)), params).mappings().one()
    return [
        TierOutlook(
            tier=window.tier,
            has_unchecked=bool(row[f"unchecked_{i}"]),
            oldest_check=row[f"oldest_check_{i}"],
            earliest_young_posted_at=row[f"young_{i}"],
        )
        for i, window in enumerate(windows)
    ]


@lru_cache(maxsize=16)
def _outlook_query(window_count: int) -> Select[Any]:
    checks = post_metrics_checks
    columns = []
    for i in range(window_count):
        after = bindparam(f"posted_after_{i}", type_=UTCDateTime)
        at_or_before = bindparam(f"posted_at_or_before_{i}", type_=UTCDateTime)
        in_tier = and_(posts.c.posted_at > after, posts.c.posted_at <= at_or_before)
        columns += [
            func.max(case((and_(in_tier, checks.c.last_checked_at.is_(None)), 1), else_=0)).label(
                f"unchecked_{i}"
            ),
            type_coerce(func.min(case((in_tier, checks.c.last_checked_at))), UTCDateTime).label(
                f"oldest_check_{i}"
            ),
            type_coerce(
                func.min(case((posts.c.posted_at > at_or_before, posts.c.posted_at))), UTCDateTime
            ).label(f"young_{i}"),
        ]
    return (
        select(*columns)
        .select_from(posts.outerjoin(checks, _same_post(checks, posts)))
        .where(posts.c.deleted_at.is_(None))
    )


def load_post_states(connection: Connection, keys: Sequence[PostKey]) -> dict[PostKey, PostState]:
    """Check rows and last stored snapshots of `keys`, in one statement."""
    if not keys:
        return {}
    if connection.dialect.name == "postgresql":
        # Two arrays, not an IN list: PostgreSQL turns a long (a, b) IN (...) list into
        # an OR chain tested against every row.
        params: dict[str, Any] = {
            "channel_ids": _bigint_array_literal([key.channel_id for key in keys]),
            "msg_ids": _bigint_array_literal([key.msg_id for key in keys]),
        }
        rows = _driver_rows(connection, _POSTGRESQL_STATES_SQL, params)
    else:
        rows = connection.execute(_post_states_query(), {"keys": [tuple(k) for k in keys]})
    # Rows are (key, check row, last observed, snapshot time, last stored), in the order
    # of _STATE_COLUMNS. Sliced and built with `_make`, not unpacked into a call: this
    # runs once per check, and a named tuple's constructor costs twice its `_make`.
    make_key, make_state, make_counters = PostKey._make, PostState._make, Counters._make
    states = {}
    for row in rows:
        last_checked_at, last_changed_at, last_saved_at, checks_since_save, stable_since = row[2:7]
        states[make_key(row[:2])] = make_state(
            (
                last_checked_at,
                last_changed_at,
                last_saved_at,
                checks_since_save,
                stable_since,
                make_counters(row[8:12]),
                None if row[12] is None else make_counters(row[13:17]),
                row[7],  # policy_state
            )
        )
    return states


def _driver_rows(connection: Connection, sql: str, params: Mapping[str, Any]) -> list[tuple]:
    """Run driver SQL on psycopg's own cursor and return its plain tuples.

    psycopg already gives aware datetimes (UTC: the session's TimeZone, see
    storage/engine.py) and parsed JSON, so SQLAlchemy's result rows and per-value
    processing would only repeat that work, a few values per check. The results come in
    PostgreSQL's binary format, cheaper to decode than text (five timestamps a row).
    """
    with _driver_cursor(connection, sql) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@contextmanager
def _driver_cursor(connection: Connection, statement: str) -> Iterator[Any]:
    """psycopg's own cursor on `connection`, its errors raised as SQLAlchemy raises a
    statement's: a DBAPIError, with the connection invalidated when it was lost. The
    collector tries a batch again on exactly that (`connection_invalidated`), whichever
    statement the connection was lost in. Results come in binary format."""
    dialect = connection.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    driver_connection = connection.connection.driver_connection
    try:
        with driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            yield cursor
    except dbapi_error as error:
        lost = dialect.is_disconnect(error, driver_connection, None)
        if lost:
            connection.invalidate(error)
        raise DBAPIError.instance(
            statement, None, error, dbapi_error, connection_invalidated=lost, dialect=dialect
        ) from error


def _bigint_array_literal(values: Sequence[int]) -> str:
    """`values` as a PostgreSQL array literal, for a `%s::bigint[]` parameter.

    psycopg dumps a list parameter element by element in Python, a tenth of a batch's
    client time; joining the decimal digits in one call costs a few percent of that.
    The values are ints (PostKey fields), so the literal holds nothing but digits,
    signs and commas.
    """
    return "{" + ",".join(map(str, values)) + "}"


def _last_stored_snapshot_of(checks: Any) -> Any:
    return and_(
        _same_post(post_metrics, checks),
        post_metrics.c.snapshot_time == checks.c.last_saved_at,
    )


_STATE_COLUMNS = (
    post_metrics_checks.c.last_checked_at,
    post_metrics_checks.c.last_changed_at,
    post_metrics_checks.c.last_saved_at,
    post_metrics_checks.c.checks_since_save,
    post_metrics_checks.c.stable_since,
    post_metrics_checks.c.policy_state,
    *(post_metrics_checks.c[f"last_{name}"] for name in COUNTER_NAMES),
    post_metrics.c.snapshot_time,
    *(post_metrics.c[name] for name in COUNTER_NAMES),
)


def _postgresql_states_sql() -> str:
    """The state read for PostgreSQL: the keys as a table of two arrays, each check row
    found by its key, and its last stored snapshot by a LATERAL lookup.

    LATERAL makes the snapshot one primary-key probe per post. As a plain outer join,
    the planner (which cannot know how many keys the arrays hold) hashed the whole of
    post_metrics for every batch: millions of rows read to find 500.
    """
    selected = ", ".join(
        f"{'s' if column.table is post_metrics else 'c'}.{column.name}" for column in _STATE_COLUMNS
    )
    snapshot_columns = ", ".join(
        column.name for column in _STATE_COLUMNS if column.table is post_metrics
    )
    return (
        f"SELECT c.channel_id, c.msg_id, {selected} "
        "FROM unnest(%(channel_ids)s::bigint[], %(msg_ids)s::bigint[]) AS k(channel_id, msg_id) "
        "JOIN post_metrics_checks AS c "
        "ON c.channel_id = k.channel_id AND c.msg_id = k.msg_id "
        f"LEFT JOIN LATERAL (SELECT {snapshot_columns} FROM post_metrics AS m "
        "WHERE m.channel_id = c.channel_id AND m.msg_id = c.msg_id "
        "AND m.snapshot_time = c.last_saved_at) AS s ON true"
    )


_POSTGRESQL_STATES_SQL = _postgresql_states_sql()


@lru_cache(maxsize=1)
def _post_states_query() -> Select[Any]:
    """The state read elsewhere (SQLite): an IN list of key pairs, an outer join."""
    checks = post_metrics_checks
    in_keys = tuple_(checks.c.channel_id, checks.c.msg_id).in_(bindparam("keys", expanding=True))
    return (
        select(checks.c.channel_id, checks.c.msg_id, *_STATE_COLUMNS)
        .select_from(checks.outerjoin(post_metrics, _last_stored_snapshot_of(checks)))
        .where(in_keys)
    )


def insert_snapshots(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert new snapshot rows; PostgreSQL takes them by COPY, straight into the table
    (the claim's lock means no other writer can store the same post's snapshot)."""
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        _copy_rows(connection, post_metrics.name, post_metrics, rows)
    else:
        connection.execute(_insert_statement(connection.dialect.name), list(rows))


def write_checks(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write one batch of checks: their check rows, and the snapshots they stored.

    Each row is a check row as the collector plans it, with `check_count` 1 and
    `save_count` 1 for a check that stored its observation, 0 otherwise; such a check's
    snapshot is its observed values (`last_views`, ...) at `last_checked_at`, so it is
    not sent a second time. Counts are added to the stored ones in SQL rather than
    overwritten, so no increment is lost to a concurrent writer.

    PostgreSQL: the rows are copied into a temporary staging table (COPY has no ON
    CONFLICT), then one statement inserts the snapshots and merges the check rows. The
    claim's lock means no other writer stores the same post's snapshot meanwhile.
    Elsewhere: one insert of the snapshots, one upsert of the check rows.
    """
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_CREATE_CHECKS_STAGING)
        _copy_rows(connection, _STAGED_CHECKS.name, post_metrics_checks, rows)
        connection.execute(_merge_staged_checks_statement())
        return
    snapshots = [_stored_snapshot(row) for row in rows if row["save_count"]]
    if snapshots:
        connection.execute(_insert_statement(connection.dialect.name), snapshots)
    connection.execute(_upsert_checks_statement(connection.dialect.name), list(rows))


def _stored_snapshot(check_row: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot a check row's check stored: its observed values at its time."""
    snapshot = {name: check_row[f"last_{name}"] for name in COUNTER_NAMES}
    snapshot.update(
        channel_id=check_row["channel_id"],
        msg_id=check_row["msg_id"],
        snapshot_time=check_row["last_checked_at"],
    )
    return snapshot


# Binary COPY needs each column's PostgreSQL type; psycopg knows them by these names.
# SQLAlchemy's Float compiles to FLOAT, which PostgreSQL reads as double precision.
_COPY_TYPE_ALIASES = {"float": "float8"}
_POSTGRESQL = postgresql.dialect()
_PSYCOPG = postgresql.psycopg.dialect()


def _copy_rows(
    connection: Connection, target: str, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """COPY `rows` (dicts keyed by `table`'s columns) into `target` in binary format.

    Binary COPY is psycopg's fastest path: each row is encoded in C, where an array
    parameter per column is built and quoted in Python, value by value. The values go
    as they are, past SQLAlchemy's type processing (aware datetimes, ints, JSON-able).
    """
    names = [column.name for column in table.columns]
    types = [_copy_type_name(column) for column in table.columns]
    values = itemgetter(*names)
    statement = _copy_statement(target, tuple(names))
    # No naive datetime gets here (observations are validated, states come from the
    # database), and psycopg's timestamptz dumper refuses one anyway.
    with _driver_cursor(connection, statement) as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(values(row))


@lru_cache(maxsize=64)
def _copy_type_name(column: Column[Any]) -> str:
    name = column.type.compile(dialect=_POSTGRESQL).lower()
    return _COPY_TYPE_ALIASES.get(name, name)


@lru_cache(maxsize=8)
def _copy_statement(target: str, names: tuple[str, ...]) -> str:
    return f"COPY {target} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"


# The staging table lives in the session's temporary schema (other sessions never see
# it) and empties itself at every commit or rollback; IF NOT EXISTS makes it once per
# database connection, and again after a rollback undid its creation.
_STAGED_CHECKS = Table(
    "staged_post_metrics_checks",
    MetaData(),
    *(Column(column.name, column.type) for column in post_metrics_checks.columns),
)
_CREATE_CHECKS_STAGING = text(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGED_CHECKS.name} "
    f"(LIKE {post_metrics_checks.name}) ON COMMIT DELETE ROWS"
)


@lru_cache(maxsize=1)
def _merge_staged_checks_statement() -> Insert:
    """INSERT the staged checks' snapshots (a data-modifying WITH), then merge the staged
    check rows into post_metrics_checks: one statement for the whole batch."""
    staged = _STAGED_CHECKS
    stored = (
        postgresql.insert(post_metrics)
        .from_select(
            ["channel_id", "msg_id", "snapshot_time", *COUNTER_NAMES],
            select(
                staged.c.channel_id,
                staged.c.msg_id,
                staged.c.last_checked_at,
                *(staged.c[f"last_{name}"] for name in COUNTER_NAMES),
            ).where(staged.c.save_count == 1),
        )
        .cte("stored_snapshots")
    )
    names = [column.name for column in post_metrics_checks.columns]
    merge = postgresql.insert(post_metrics_checks).from_select(
        names, select(*(staged.c[name] for name in names))
    )
    return _add_counts_on_conflict(merge).add_cte(stored)


def _execute_rows(
    connection: Connection,
    table: Table,
    statement_for: Callable[[str, bool], Insert],
    rows: Sequence[dict[str, Any]],
) -> None:
    """Write `rows` with one statement.

    On PostgreSQL the rows travel as one array per column and are expanded by
    `unnest`: one statement and one round trip, where executemany sends a statement
    per row. Elsewhere (SQLite, in process) executemany is already cheap.
    """
    if connection.dialect.name == "postgresql":
        columns = {column.name: [row[column.name] for row in rows] for column in table.columns}
        connection.execute(statement_for("postgresql", True), columns)
    else:
        connection.execute(statement_for(connection.dialect.name, False), list(rows))


def _unnest_rows(table: Table) -> Select[Any]:
    """SELECT that turns one array parameter per column into rows (PostgreSQL)."""
    return select(
        *(
            type_coerce(
                func.unnest(bindparam(column.name, type_=postgresql.ARRAY(column.type))),
                column.type,
            ).label(column.name)
            for column in table.columns
        )
    )


def _insert_into(table: Table, dialect_name: str, arrays: bool) -> Insert:
    statement = _DIALECT_INSERTS[dialect_name](table)
    if arrays:
        statement = statement.from_select([c.name for c in table.columns], _unnest_rows(table))
    return statement


@lru_cache(maxsize=8)
def _register_posts_statement(dialect_name: str, arrays: bool) -> Insert:
    return _insert_into(posts, dialect_name, arrays).on_conflict_do_nothing()


# Snapshot inserts and check-row upserts as multi-row executemany: the SQLite path
# (PostgreSQL takes these rows by COPY).
@lru_cache(maxsize=8)
def _insert_statement(dialect_name: str) -> Insert:
    return _DIALECT_INSERTS[dialect_name](post_metrics)


@lru_cache(maxsize=8)
def _upsert_checks_statement(dialect_name: str) -> Insert:
    return _add_counts_on_conflict(_DIALECT_INSERTS[dialect_name](post_metrics_checks))


def _add_counts_on_conflict(statement: Any) -> Insert:
    """ON CONFLICT for a check-row insert: replace the state, add the counts."""
    table = post_metrics_checks
    excluded = statement.excluded
    replaced = {
        column.name: excluded[column.name]
        for column in table.columns
        if column.name not in ("channel_id", "msg_id", "check_count", "save_count")
    }
    return statement.on_conflict_do_update(
        index_elements=[table.c.channel_id, table.c.msg_id],
        set_={
            **replaced,
            "check_count": table.c.check_count + excluded.check_count,
            "save_count": table.c.save_count + excluded.save_count,
        },
    )


def refresh_planner_statistics(connection: Connection) -> None:
    """ANALYZE the collector's tables on PostgreSQL, after a large change in them.

    The claim query walks the posts in key order only when the planner knows how many
    there are; with statistics from an almost empty table it sorts every due post for
    every batch. Autovacuum catches up eventually; this makes it immediate.
    """
    if connection.dialect.name == "postgresql":
        for table in (posts, post_metrics_checks, post_metrics):
            connection.exec_driver_sql(f"ANALYZE {table.name}")


def channel_ids_present(connection: Connection, channel_ids: Iterable[int]) -> list[int]:
    """Which of `channel_ids` already have posts in this database."""
    ids = sorted(set(channel_ids))
    if not ids:
        return []
    query = select(posts.c.channel_id).where(posts.c.channel_id.in_(ids)).distinct()
    return sorted(connection.execute(query).scalars())


def delete_channels(connection: Connection, channel_ids: Iterable[int]) -> None:
    """Remove channels with everything stored for them (used by replay --replace)."""
    ids = sorted(set(channel_ids))
    if not ids:
        return
    for table in (post_metrics_checks, post_metrics, posts, channels):
        connection.execute(table.delete().where(table.c.channel_id.in_(ids)))


def count_rows(connection: Connection, table: Any) -> int:
    return connection.execute(select(func.count()).select_from(table)).scalar_one()


def _same_post(left: Any, right: Any) -> Any:
    return and_(left.c.channel_id == right.c.channel_id, left.c.msg_id == right.c.msg_id)
