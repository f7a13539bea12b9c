"""What smart retention saved, for owners, and each post's live view, for readers.

Everything here reads; nothing writes or commits. The owner figures stay cheap on big
tables (7 million snapshots and 100,000 posts answer in milliseconds) because no figure
counts or scans `post_metrics` as a whole:

- posts, checks, saves and stable posts are read from `collection_totals`, one row the
  database keeps equal to the sums over `posts` and `post_metrics_checks` (triggers,
  storage/totals.py); active posts are counted through the index on `posted_at`;
- table sizes come from the database: PostgreSQL's `pg_total_relation_size`, SQLite's
  `dbstat` table (or, without it, the pages in use shared out by rows);
- the number of snapshot rows is PostgreSQL's planner estimate (`pg_class.reltuples`)
  once the table is large, an exact count below that and on SQLite;
- consecutive duplicates are counted exactly on a sample of posts once there are many.

Every report says how each such figure was made (`Estimate`); `exact=True` trades the
speed for exact counts.

"Stable" and "active" are defined once, here, and every figure and endpoint uses them:

- stable: the post's check row has `stable_since` set, i.e. its latest check stored
  nothing (docs/retention.md, the check row);
- active: the post is not marked deleted and its age now falls in a polling tier of the
  schedule, so the collector still checks it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.exc import OperationalError

from smart_retention.errors import UserError
from smart_retention.observation import COUNTER_FIELDS, PostKey
from smart_retention.policy import DEFAULT_PROFILE, AgeBracket, Profile
from smart_retention.schedule import DEFAULT_TIERS, Tier, next_due_at, tier_for_age
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts
from smart_retention.storage.totals import read_totals, recount_totals

BYTES_PER_MB = 2**20
# Below this many rows (PostgreSQL's estimate) an exact count is cheaper than explaining one.
EXACT_COUNT_BELOW = 100_000
# Consecutive duplicates are counted on the posts holding about this many rows, and
# exactly when all posts hold fewer. A post's rows lie on as many pages as it has rows
# (they were written poll by poll), so each sampled row costs about one page read.
DUPLICATE_SAMPLE_ROWS = 2_000
# Storage trend: at most this many days back.
MAX_TREND_DAYS = 366
# Snapshot tables whose size makes up "current storage".
STORAGE_TABLES = ("post_metrics", "post_metrics_checks")


class NotFoundError(UserError):
    """A channel or post the caller named is not in the database."""


class EstimateMethod(StrEnum):
    PG_RELATION_SIZE = "pg_total_relation_size"
    SQLITE_DBSTAT = "sqlite_dbstat"
    SQLITE_PAGES_BY_ROWS = "sqlite_pages_shared_by_rows"
    PG_RELTUPLES = "pg_class_reltuples"
    EXACT_COUNT = "exact_count"
    EXACT_SCAN = "exact_scan"
    POST_SAMPLE = "post_sample"
    KEPT_TOTALS = "kept_totals"


@dataclass(frozen=True, slots=True)
class Estimate:
    """How one figure was made, and whether it is exact."""

    method: EstimateMethod
    exact: bool
    detail: str


@dataclass(frozen=True, slots=True)
class CollectionStats:
    as_of: datetime
    total_posts: int
    total_checks: int
    total_snapshots_saved: int
    efficiency_rate: float | None
    storage_saved_mb: float | None
    stable_posts_count: int
    active_posts_count: int
    bytes_per_snapshot_row: float | None
    estimates: dict[str, Estimate]


@dataclass(frozen=True, slots=True)
class StorageAnalysis:
    as_of: datetime
    current_storage_mb: float
    projected_storage_without_smart_mb: float | None
    savings_mb: float | None
    savings_pct: float | None
    post_metrics_records: int
    avg_snapshots_per_post: float | None
    duplicate_snapshots_estimate: int
    total_checks: int
    bytes_per_snapshot_row: float | None
    table_bytes: dict[str, int]
    estimates: dict[str, Estimate]


@dataclass(frozen=True, slots=True)
class AgeEfficiency:
    bracket: str
    min_age_hours: float
    max_age_hours: float | None
    post_count: int
    avg_checks: float | None
    avg_saves: float | None
    efficiency_pct: float | None


@dataclass(frozen=True, slots=True)
class TrendDay:
    day: date
    snapshots_saved: int
    unique_posts: int
    avg_per_post: float | None


@dataclass(frozen=True, slots=True)
class PostLive:
    """A post's live view: what its last check saw, and where it is in the schedule."""

    channel_id: int
    msg_id: int
    posted_at: datetime
    deleted_at: datetime | None
    views: int | None
    forwards: int | None
    reactions: int | None
    replies: int | None
    last_checked_at: datetime | None
    last_changed_at: datetime | None
    seconds_since_last_check: float | None
    check_count: int
    save_count: int
    stable: bool
    stable_since: datetime | None
    active: bool
    age_hours: float
    tier: str | None
    next_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One stored snapshot, and the band the true views stayed in while it held.

    The default rule is a step: the value holds from `snapshot_time` until the next
    snapshot. At every check while it held, observed views differed from `views` by less
    than `views_band` (the bracket's thresholds, whichever is tighter); forwards,
    reactions and replies are exact.
    """

    snapshot_time: datetime
    views: int | None
    forwards: int | None
    reactions: int | None
    replies: int | None
    holds_until: datetime | None
    bracket: str
    views_relative: float
    views_absolute: int
    views_band: float | None


@dataclass(frozen=True, slots=True)
class PostHistory:
    channel_id: int
    msg_id: int
    rule: str
    profile: str
    start: datetime
    end: datetime
    value_at_start: HistoryPoint | None
    snapshots: list[HistoryPoint]
    next_start: datetime | None


@dataclass(frozen=True, slots=True)
class PostPage:
    posts: list[PostLive]
    next_before_msg_id: int | None


# --- owner figures ---------------------------------------------------------------------


def collection_stats(
    connection: Connection,
    now: datetime,
    *,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    exact: bool = False,
) -> CollectionStats:
    """Checks made and snapshots saved, from the check rows, and what that saved."""
    counts = totals(connection, now, tiers, exact=exact)
    post_metrics_bytes, size_estimate = table_bytes(connection, "post_metrics")
    records, records_estimate = snapshot_row_count(connection, exact=exact)
    per_row = post_metrics_bytes / records if records else None
    checks, saved = counts.checks, counts.saved
    return CollectionStats(
        as_of=now,
        total_posts=counts.posts,
        total_checks=checks,
        total_snapshots_saved=saved,
        efficiency_rate=_pct(saved, checks),
        storage_saved_mb=(checks - saved) * per_row / BYTES_PER_MB if per_row else None,
        stable_posts_count=counts.stable,
        active_posts_count=counts.active,
        bytes_per_snapshot_row=per_row,
        estimates={
            "table_size": size_estimate,
            "post_metrics_records": records_estimate,
            "totals": totals_estimate(exact),
        },
    )


def storage_analysis(
    connection: Connection,
    now: datetime,
    *,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    exact: bool = False,
) -> StorageAnalysis:
    """Storage now, storage an every-check collector would need, and what is left to clean."""
    measured = {name: table_bytes(connection, name) for name in STORAGE_TABLES}
    sizes = {name: size for name, (size, _) in measured.items()}
    size_estimate = measured["post_metrics"][1]
    records, records_estimate = snapshot_row_count(connection, exact=exact)
    counts = totals(connection, now, tiers, exact=exact)
    duplicates, duplicates_estimate = duplicate_snapshots(
        connection, records, counts.posts, exact=exact
    )
    per_row = sizes["post_metrics"] / records if records else None
    current = sum(sizes.values())
    # An every-check collector stores a row per check, and the rows no check made (an old
    # collector's, imported) are there either way: without those, a database of imported
    # history would be "projected" at zero and show the whole table as a loss.
    projected_rows = max(counts.checks, records + counts.checks - counts.saved)
    projected = projected_rows * per_row if per_row is not None else None
    savings = projected - current if projected is not None else None
    return StorageAnalysis(
        as_of=now,
        current_storage_mb=current / BYTES_PER_MB,
        projected_storage_without_smart_mb=_mb(projected),
        savings_mb=_mb(savings),
        savings_pct=_pct(savings, projected) if savings is not None else None,
        post_metrics_records=records,
        avg_snapshots_per_post=records / counts.posts if counts.posts else None,
        duplicate_snapshots_estimate=duplicates,
        total_checks=counts.checks,
        bytes_per_snapshot_row=per_row,
        table_bytes=sizes,
        estimates={
            "table_size": size_estimate,
            "post_metrics_records": records_estimate,
            "duplicate_snapshots": duplicates_estimate,
            "totals": totals_estimate(exact),
        },
    )


def efficiency_by_age(
    connection: Connection, now: datetime, profile: Profile = DEFAULT_PROFILE
) -> list[AgeEfficiency]:
    """Per age bracket of the profile (age now): checked posts, checks and saves per post."""
    checks = post_metrics_checks
    bracket_index = case(
        *(
            (posts.c.posted_at > now - bracket.max_age, index)
            for index, bracket in enumerate(profile.brackets)
            if bracket.max_age is not None
        ),
        else_=len(profile.brackets) - 1,
    ).label("bracket")
    query = (
        select(
            bracket_index,
            func.count().label("posts"),
            func.sum(checks.c.check_count).label("checks"),
            func.sum(checks.c.save_count).label("saves"),
        )
        .select_from(checks.join(posts, _same_post(checks, posts)))
        .group_by(bracket_index)
    )
    found = {row.bracket: row for row in connection.execute(query)}
    report = []
    lower = timedelta(0)
    for index, bracket in enumerate(profile.brackets):
        row = found.get(index)
        count, checks_made, saves = (row.posts, row.checks, row.saves) if row else (0, 0, 0)
        report.append(
            AgeEfficiency(
                bracket=bracket.name,
                min_age_hours=_hours(lower),
                max_age_hours=_hours(bracket.max_age) if bracket.max_age is not None else None,
                post_count=count,
                avg_checks=checks_made / count if count else None,
                avg_saves=saves / count if count else None,
                efficiency_pct=_pct(saves, checks_made),
            )
        )
        lower = bracket.max_age or lower
    return report


def storage_trend(connection: Connection, now: datetime, days: int) -> list[TrendDay]:
    """Per UTC day of the last `days` (today included): snapshots stored, posts, ratio."""
    if not 1 <= days <= MAX_TREND_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_TREND_DAYS}, got {days}")
    first_day = now.astimezone(UTC).date() - timedelta(days=days - 1)
    start = datetime.combine(first_day, time(0), tzinfo=UTC)
    day = _utc_day(connection, post_metrics.c.snapshot_time).label("day")
    # TODO: post_metrics has no index on snapshot_time, so this reads the whole table;
    # an index on it would make the trend cost proportional to the days asked for.
    per_post = (
        select(day, func.count().label("snapshots"))
        .where(post_metrics.c.snapshot_time >= start, post_metrics.c.snapshot_time <= now)
        .group_by(day, post_metrics.c.channel_id, post_metrics.c.msg_id)
        .subquery()
    )
    query = select(
        per_post.c.day, func.sum(per_post.c.snapshots), func.count().label("unique_posts")
    ).group_by(per_post.c.day)
    found = {_as_date(row[0]): (int(row[1]), int(row[2])) for row in connection.execute(query)}
    trend = []
    for offset in range(days):
        moment = first_day + timedelta(days=offset)
        saved, unique = found.get(moment, (0, 0))
        trend.append(TrendDay(moment, saved, unique, saved / unique if unique else None))
    return trend


# --- how the figures are made ----------------------------------------------------------


def table_bytes(connection: Connection, table_name: str) -> tuple[int, Estimate]:
    """The bytes a table and its indexes take, as the database reports them."""
    if connection.dialect.name == "postgresql":
        size = connection.execute(
            text("SELECT pg_total_relation_size(to_regclass(:name))"), {"name": table_name}
        ).scalar_one()
        return int(size or 0), Estimate(
            EstimateMethod.PG_RELATION_SIZE,
            exact=True,
            detail="pg_total_relation_size: the table, its indexes and TOAST, in bytes",
        )
    try:
        size = connection.execute(
            text(
                "SELECT coalesce(sum(pgsize), 0) FROM dbstat "
                "WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = :name)"
            ),
            {"name": table_name},
        ).scalar_one()
    except OperationalError:  # SQLite built without the dbstat table
        return sqlite_pages_by_rows(connection, table_name)
    return int(size), Estimate(
        EstimateMethod.SQLITE_DBSTAT,
        exact=True,
        detail="SQLite dbstat: the pages of the table and its indexes, in bytes",
    )


def sqlite_pages_by_rows(connection: Connection, table_name: str) -> tuple[int, Estimate]:
    """A SQLite table's share of the pages in use, in proportion to its share of rows."""
    page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
    pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
    free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
    rows = {name: _count(connection, table) for name, table in _ROW_TABLES.items()}
    share = rows[table_name] / sum(rows.values()) if sum(rows.values()) else 0.0
    return round((pages - free) * page_size * share), Estimate(
        EstimateMethod.SQLITE_PAGES_BY_ROWS,
        exact=False,
        detail="SQLite without dbstat: page_count x page_size in use, shared out by rows",
    )


def snapshot_row_count(connection: Connection, *, exact: bool = False) -> tuple[int, Estimate]:
    """Rows of post_metrics: PostgreSQL's estimate when the table is large, else a count."""
    if connection.dialect.name == "postgresql" and not exact:
        estimate = connection.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = to_regclass('post_metrics')")
        ).scalar_one()
        # reltuples is -1 until the table is first analysed.
        if estimate >= EXACT_COUNT_BELOW:
            return round(estimate), Estimate(
                EstimateMethod.PG_RELTUPLES,
                exact=False,
                detail="pg_class.reltuples: the planner's row estimate as of the last "
                "ANALYZE or VACUUM (autovacuum keeps it current); ?exact=true counts",
            )
    return _count(connection, post_metrics), Estimate(
        EstimateMethod.EXACT_COUNT, exact=True, detail="count(*) over post_metrics"
    )


def duplicate_snapshots(
    connection: Connection,
    records: int,
    post_count: int,
    *,
    exact: bool = False,
    sample_rows: int = DUPLICATE_SAMPLE_ROWS,
) -> tuple[int, Estimate]:
    """Rows equal in every counter to the row before them of the same post.

    Unknown equals unknown and differs from any number; a post's first row is never a
    duplicate (the rule of the cleanup). When `records` exceed `sample_rows`, only the
    rows of every k-th post (by msg_id) are compared, k chosen so that about
    `sample_rows` rows are, and the share found is applied to `records`.
    """
    sample_posts = max(1, sample_rows * post_count // records) if records else post_count
    stride = math.ceil(post_count / sample_posts) if post_count else 1
    if exact or stride <= 1:
        scanned, duplicates = _duplicates_in(connection, None)
        return duplicates, Estimate(
            EstimateMethod.EXACT_SCAN,
            exact=True,
            detail=f"every post's rows compared with the row before ({scanned} rows)",
        )
    scanned, found = _duplicates_in(connection, stride)
    estimate = round(found / scanned * records) if scanned else 0
    return estimate, Estimate(
        EstimateMethod.POST_SAMPLE,
        exact=False,
        detail=f"posts with msg_id divisible by {stride}: {found} duplicates in {scanned} "
        f"rows, scaled to {records} rows; ?exact=true compares every row",
    )


def _duplicates_in(connection: Connection, stride: int | None) -> tuple[int, int]:
    """Rows compared and duplicates found, over every post or every `stride`-th one."""
    snapshot = post_metrics
    if stride is None:
        marked = select(_duplicate_mark(partitioned=True)).select_from(snapshot).subquery()
    elif connection.dialect.name == "postgresql":
        # One primary-key range scan per sampled post, already in time order: no sort.
        sampled = _sampled_posts(stride)
        per_post = (
            select(_duplicate_mark(partitioned=False))
            .where(_same_post(snapshot, sampled))
            .lateral("per_post")
        )
        marked = select(per_post.c.duplicate).select_from(sampled.join(per_post, true()))
        marked = marked.subquery()
    else:  # SQLite has no LATERAL
        sampled = _sampled_posts(stride)
        marked = (
            select(_duplicate_mark(partitioned=True))
            .select_from(snapshot.join(sampled, _same_post(snapshot, sampled)))
            .subquery()
        )
    scanned, duplicates = connection.execute(
        select(func.count(), func.coalesce(func.sum(marked.c.duplicate), 0))
    ).one()
    return int(scanned), int(duplicates)


def _sampled_posts(stride: int) -> Any:
    return (
        select(posts.c.channel_id, posts.c.msg_id)
        .where(posts.c.msg_id % stride == 0)
        .subquery("sampled")
    )


def _duplicate_mark(partitioned: bool) -> Any:
    """1 for a row equal in every counter to the row before it of the same post, else 0."""
    snapshot = post_metrics
    window: dict[str, Any] = {"order_by": snapshot.c.snapshot_time}
    if partitioned:
        window["partition_by"] = (snapshot.c.channel_id, snapshot.c.msg_id)
    same_as_previous = and_(
        func.lag(snapshot.c.snapshot_time).over(**window).is_not(None),
        *(
            snapshot.c[name].is_not_distinct_from(func.lag(snapshot.c[name]).over(**window))
            for name in COUNTER_FIELDS
        ),
    )
    return case((same_as_previous, 1), else_=0).label("duplicate")


@dataclass(frozen=True, slots=True)
class Totals:
    posts: int
    active: int
    checks: int
    saved: int
    stable: int


def totals(
    connection: Connection,
    now: datetime,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
    *,
    exact: bool = False,
) -> Totals:
    """Posts, active posts, checks, saves and stable posts.

    The sums come from the totals row the database keeps (storage/totals.py), one
    lookup; `exact` counts them over the tables instead. Active posts depend on `now`,
    so they are always counted: the posts whose publication time is in a polled range,
    found through the index on `posted_at`.
    """
    kept = recount_totals(connection) if exact else read_totals(connection)
    in_a_tier = or_(
        *(
            and_(posts.c.posted_at > now - older, posts.c.posted_at <= now - younger)
            for younger, older in polled_age_ranges(tiers)
        )
    )
    active = connection.execute(
        select(func.count()).select_from(posts).where(posts.c.deleted_at.is_(None), in_a_tier)
    ).scalar_one()
    return Totals(kept.posts, int(active), kept.checks, kept.saves, kept.stable_posts)


def totals_estimate(exact: bool) -> Estimate:
    """How `totals` made its sums, for the reports' `estimates`."""
    if exact:
        return Estimate(
            EstimateMethod.EXACT_SCAN,
            exact=True,
            detail="count(*) over posts; check_count, save_count and stable_since summed "
            "over post_metrics_checks",
        )
    return Estimate(
        EstimateMethod.KEPT_TOTALS,
        exact=True,
        detail="the collection_totals row: post count and check, save and stable-post sums "
        "kept by triggers on posts and post_metrics_checks in every writer's transaction",
    )


def polled_age_ranges(tiers: Sequence[Tier]) -> list[tuple[timedelta, timedelta]]:
    """The post ages the tiers poll, adjacent tiers merged: one range for the defaults.

    A post is active when its age is in one of them, exactly when `tier_for_age` finds
    it a tier; merged, the test costs one comparison pair per row instead of one per tier.
    """
    ranges: list[tuple[timedelta, timedelta]] = []
    for tier in sorted(tiers, key=lambda t: t.min_age):
        if ranges and tier.min_age <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], tier.max_age))
        else:
            ranges.append((tier.min_age, tier.max_age))
    return ranges


# --- readers' views --------------------------------------------------------------------


def post_live(
    connection: Connection, key: PostKey, now: datetime, tiers: Sequence[Tier] = DEFAULT_TIERS
) -> PostLive:
    """The live view of one post; NotFoundError names the channel or the post."""
    row = connection.execute(
        _live_query().where(posts.c.channel_id == key.channel_id, posts.c.msg_id == key.msg_id)
    ).one_or_none()
    if row is None:
        _require_channel(connection, key.channel_id)
        raise NotFoundError(f"channel {key.channel_id} has no post {key.msg_id}")
    return _live(row, now, tiers)


def channel_posts(
    connection: Connection,
    channel_id: int,
    now: datetime,
    *,
    limit: int,
    before_msg_id: int | None = None,
    tiers: Sequence[Tier] = DEFAULT_TIERS,
) -> PostPage:
    """A channel's posts, newest (highest msg_id) first, `limit` at a time.

    Paged by key: the next page starts below the last msg_id given, so posts added or
    checked between pages never shift it.
    """
    _require_channel(connection, channel_id)
    query = (
        _live_query()
        .where(posts.c.channel_id == channel_id)
        .order_by(posts.c.msg_id.desc())
        .limit(limit + 1)
    )
    if before_msg_id is not None:
        query = query.where(posts.c.msg_id < before_msg_id)
    rows = connection.execute(query).all()
    page = [_live(row, now, tiers) for row in rows[:limit]]
    more = len(rows) > limit
    return PostPage(page, page[-1].msg_id if more else None)


def post_history(
    connection: Connection,
    key: PostKey,
    now: datetime,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int,
    profile: Profile = DEFAULT_PROFILE,
) -> PostHistory:
    """Stored snapshots of a post from `start` to `end` (both included), oldest first.

    Also the snapshot in force at `start`, and per snapshot the band the observed views
    kept to while it held. At most `limit` snapshots; `next_start` says where the rest
    begin.
    """
    live = post_live(connection, key, now)
    start = start or live.posted_at
    end = end or now
    snapshot = post_metrics
    this_post = and_(snapshot.c.channel_id == key.channel_id, snapshot.c.msg_id == key.msg_id)
    columns = (snapshot.c.snapshot_time, *(snapshot.c[name] for name in COUNTER_FIELDS))
    in_range = connection.execute(
        select(*columns)
        .where(this_post, snapshot.c.snapshot_time >= start, snapshot.c.snapshot_time <= end)
        .order_by(snapshot.c.snapshot_time)
        .limit(limit + 1)
    ).all()
    before = connection.execute(
        select(*columns)
        .where(this_post, snapshot.c.snapshot_time < start)
        .order_by(snapshot.c.snapshot_time.desc())
        .limit(1)
    ).one_or_none()
    shown, rest = in_range[:limit], in_range[limit:]
    if rest:
        following = rest[0].snapshot_time
    else:
        following = connection.execute(
            select(func.min(snapshot.c.snapshot_time)).where(
                this_post, snapshot.c.snapshot_time > end
            )
        ).scalar_one()
    rows = ([before] if before is not None else []) + list(shown)
    # A step holds until the next snapshot (excluded), the last one until the latest
    # check (included): that check stored nothing, so it was judged against this step.
    ends = [(row.snapshot_time, False) for row in rows[1:]]
    ends.append((following, False) if following else (live.last_checked_at, True))
    points = [
        _history_point(row, until, included, live.posted_at, profile)
        for row, (until, included) in zip(rows, ends, strict=True)
    ]
    if before is not None:
        value_at_start, points = points[0], points[1:]
    else:
        value_at_start = None
    return PostHistory(
        channel_id=key.channel_id,
        msg_id=key.msg_id,
        rule="step",
        profile=profile.name,
        start=start,
        end=end,
        value_at_start=value_at_start,
        snapshots=points,
        next_start=rest[0].snapshot_time if rest else None,
    )


def _history_point(
    row: Any,
    holds_until: datetime | None,
    until_included: bool,
    posted_at: datetime,
    profile: Profile,
) -> HistoryPoint:
    last_check = holds_until or row.snapshot_time
    if holds_until is not None and not until_included:
        # Timestamps have microsecond resolution: the last moment before the next snapshot.
        last_check -= timedelta.resolution
    bracket = widest_bracket(
        profile,
        row.views,
        row.snapshot_time - posted_at,
        max(last_check, row.snapshot_time) - posted_at,
    )
    return HistoryPoint(
        snapshot_time=row.snapshot_time,
        views=row.views,
        forwards=row.forwards,
        reactions=row.reactions,
        replies=row.replies,
        holds_until=holds_until,
        bracket=bracket.name,
        views_relative=bracket.views_relative,
        views_absolute=bracket.views_absolute,
        views_band=bracket.views_tolerance(row.views) if row.views is not None else None,
    )


def widest_bracket(
    profile: Profile, views: int | None, from_age: timedelta, to_age: timedelta
) -> AgeBracket:
    """Of the brackets a step spans (post ages from_age to to_age, both included), the
    loosest for `views`.

    Checks during the step were judged by the bracket of their own age, so the band that
    holds for the whole step is the widest of those.
    """
    spanned = []
    lower = timedelta(0)
    for bracket in profile.brackets:
        upper = bracket.max_age
        if (upper is None or from_age < upper) and to_age >= lower:
            spanned.append(bracket)
        lower = upper or lower
    if not spanned:
        return profile.bracket_for(from_age)
    return max(spanned, key=lambda b: b.views_tolerance(views or 0))


def _live_query() -> Any:
    checks = post_metrics_checks
    return select(
        posts.c.channel_id,
        posts.c.msg_id,
        posts.c.posted_at,
        posts.c.deleted_at,
        checks.c.last_checked_at,
        checks.c.last_changed_at,
        checks.c.check_count,
        checks.c.save_count,
        checks.c.stable_since,
        *(checks.c[f"last_{name}"] for name in COUNTER_FIELDS),
    ).select_from(posts.outerjoin(checks, _same_post(checks, posts)))


def _live(row: Any, now: datetime, tiers: Sequence[Tier]) -> PostLive:
    age = now - row.posted_at
    tier = tier_for_age(age, tiers)
    checked = row.last_checked_at
    deleted = row.deleted_at is not None
    return PostLive(
        channel_id=row.channel_id,
        msg_id=row.msg_id,
        posted_at=row.posted_at,
        deleted_at=row.deleted_at,
        views=row.last_views,
        forwards=row.last_forwards,
        reactions=row.last_reactions,
        replies=row.last_replies,
        last_checked_at=checked,
        last_changed_at=row.last_changed_at,
        seconds_since_last_check=(now - checked).total_seconds() if checked else None,
        check_count=row.check_count or 0,
        save_count=row.save_count or 0,
        stable=row.stable_since is not None,
        stable_since=row.stable_since,
        active=tier is not None and not deleted,
        age_hours=_hours(age),
        tier=tier.name if tier is not None else None,
        next_due_at=None if deleted else next_due_at(now, row.posted_at, checked, tiers),
    )


def _require_channel(connection: Connection, channel_id: int) -> None:
    found = connection.execute(
        select(exists().where(channels.c.channel_id == channel_id))
    ).scalar_one()
    if not found:
        raise NotFoundError(f"channel {channel_id} not found")


# --- small helpers ---------------------------------------------------------------------

_ROW_TABLES = {
    "channels": channels,
    "posts": posts,
    "post_metrics": post_metrics,
    "post_metrics_checks": post_metrics_checks,
}


def _count(connection: Connection, table: Any) -> int:
    return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def _utc_day(connection: Connection, column: Any) -> Any:
    if connection.dialect.name == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    # SQLite keeps fixed-width UTC text (storage.types), so the date is its first 10 chars.
    return func.substr(column, 1, 10, type_=String)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _same_post(left: Any, right: Any) -> Any:
    return and_(left.c.channel_id == right.c.channel_id, left.c.msg_id == right.c.msg_id)


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def _mb(value: float | None) -> float | None:
    return value / BYTES_PER_MB if value is not None else None


def _hours(span: timedelta) -> float:
    return span.total_seconds() / 3600
