"""Set-based reads and writes for the collector.

Every function works on a whole batch with a fixed number of statements, whatever the
batch size: one read of the check rows joined to their last stored snapshots, one
multi-row insert of snapshots, one multi-row upsert of check rows. None of them commits.
"""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
    text,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
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
        # As driver SQL, for the reason given in load_post_states.
        rows = connection.exec_driver_sql(_postgresql_sql(query), params).all()
    else:
        rows = connection.execute(query, params).all()
    return [
        LockedPost(PostKey(channel_id, msg_id), posted_at) for channel_id, msg_id, posted_at in rows
    ]


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
            "channel_ids": [key.channel_id for key in keys],
            "msg_ids": [key.msg_id for key in keys],
        }
        # As driver SQL: psycopg already gives aware datetimes (UTC: the session's
        # TimeZone, see storage/engine.py) and parsed JSON, so SQLAlchemy's per-value
        # result processing would only repeat that work, a few values per check.
        rows = connection.exec_driver_sql(_POSTGRESQL_STATES_SQL, params).all()
    else:
        rows = connection.execute(_post_states_query(), {"keys": [tuple(k) for k in keys]})
    # Spelled out, not through a helper: this runs once per check.
    states = {}
    for (
        channel_id, msg_id, last_checked_at, last_changed_at, last_saved_at,
        checks_since_save, stable_since, policy_state,
        last_views, last_forwards, last_reactions, last_replies,
        snapshot_time, views, forwards, reactions, replies,
    ) in rows:  # fmt: skip
        states[PostKey(channel_id, msg_id)] = PostState(
            last_checked_at,
            last_changed_at,
            last_saved_at,
            checks_since_save,
            stable_since,
            Counters(last_views, last_forwards, last_reactions, last_replies),
            None if snapshot_time is None else Counters(views, forwards, reactions, replies),
            policy_state,
        )
    return states


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
        connection.execute(_insert_statement(connection.dialect.name, False), list(rows))


def upsert_checks(connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or update check rows.

    Each row carries `check_count` 1 and `save_count` 0 or 1; on conflict they are added
    to the stored counts in SQL rather than overwritten, so no increment is lost to a
    concurrent writer. PostgreSQL: the rows are copied into a temporary staging table
    (COPY has no ON CONFLICT), then merged by one INSERT ... SELECT ... ON CONFLICT.
    """
    if not rows:
        return
    if connection.dialect.name == "postgresql":
        connection.execute(_CREATE_CHECKS_STAGING)
        _copy_rows(connection, _STAGED_CHECKS.name, post_metrics_checks, rows)
        connection.execute(_upsert_staged_checks_statement())
    else:
        connection.execute(_upsert_checks_statement(connection.dialect.name, False), list(rows))


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
    # No naive datetime gets here (observations are validated, states come from the
    # database), and psycopg's timestamptz dumper refuses one anyway.
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(_copy_statement(target, tuple(names))) as copy:
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
def _upsert_staged_checks_statement() -> Insert:
    table = post_metrics_checks
    names = [column.name for column in table.columns]
    statement = postgresql.insert(table).from_select(
        names, select(*(_STAGED_CHECKS.c[name] for name in names))
    )
    return _add_counts_on_conflict(statement)


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
        for name in _JSON_COLUMNS.get(table.name, ()):
            columns[name] = [None if v is None else json.dumps(v) for v in columns[name]]
        connection.execute(statement_for("postgresql", True), columns)
    else:
        connection.execute(statement_for(connection.dialect.name, False), list(rows))


# JSON travels as text inside the arrays and is cast back in SQL.
_JSON_COLUMNS = {"post_metrics_checks": ("policy_state",)}


def _unnest_rows(table: Table) -> Select[Any]:
    """SELECT that turns one array parameter per column into rows (PostgreSQL)."""
    json_columns = _JSON_COLUMNS.get(table.name, ())
    selected = []
    for column in table.columns:
        if column.name in json_columns:
            array = bindparam(column.name, type_=postgresql.ARRAY(Text))
            selected.append(cast(func.unnest(array), column.type).label(column.name))
        else:
            array = bindparam(column.name, type_=postgresql.ARRAY(column.type))
            selected.append(type_coerce(func.unnest(array), column.type).label(column.name))
    return select(*selected)


def _insert_into(table: Table, dialect_name: str, arrays: bool) -> Insert:
    statement = _DIALECT_INSERTS[dialect_name](table)
    if arrays:
        statement = statement.from_select([c.name for c in table.columns], _unnest_rows(table))
    return statement


@lru_cache(maxsize=8)
def _register_posts_statement(dialect_name: str, arrays: bool) -> Insert:
    return _insert_into(posts, dialect_name, arrays).on_conflict_do_nothing()


@lru_cache(maxsize=8)
def _insert_statement(dialect_name: str, arrays: bool) -> Insert:
    return _insert_into(post_metrics, dialect_name, arrays)


@lru_cache(maxsize=8)
def _upsert_checks_statement(dialect_name: str, arrays: bool) -> Insert:
    return _add_counts_on_conflict(_insert_into(post_metrics_checks, dialect_name, arrays))


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
