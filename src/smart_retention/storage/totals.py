"""The collection totals: one row the database keeps, read in one lookup.

Migration 0003 creates `collection_totals` and the triggers that keep it: every insert,
update or delete of `posts` and `post_metrics_checks` adds its difference in the same
transaction, so the row always equals the sums over those tables, whatever the writer
(the collector, a removed channel's cascade, a manual repair). The owner figures read it
instead of summing every post's check row per request.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from smart_retention.storage.tables import collection_totals, post_metrics_checks, posts


@dataclass(frozen=True, slots=True)
class CollectionTotals:
    posts: int
    checks: int
    saves: int
    stable_posts: int


def read_totals(connection: Connection) -> CollectionTotals:
    """The kept totals: one primary-key read."""
    row = connection.execute(
        select(
            collection_totals.c.posts,
            collection_totals.c.checks,
            collection_totals.c.saves,
            collection_totals.c.stable_posts,
        ).where(collection_totals.c.id == 1)
    ).one_or_none()
    if row is None:
        # Migration 0003 writes the row and nothing deletes it; a hand-made database
        # without it still gets right figures, the slow way.
        return recount_totals(connection)
    return CollectionTotals(*map(int, row))


def recount_totals(connection: Connection) -> CollectionTotals:
    """The same sums, counted over the tables: a pass over every post."""
    checks = post_metrics_checks
    check_sums = select(
        func.coalesce(func.sum(checks.c.check_count), 0),
        func.coalesce(func.sum(checks.c.save_count), 0),
        func.count(checks.c.stable_since),
    ).subquery()
    post_count = select(func.count()).select_from(posts).scalar_subquery()
    row = connection.execute(select(post_count, *check_sums.c)).one()
    return CollectionTotals(*map(int, row))


def reset_totals(connection: Connection) -> CollectionTotals:
    """Set the kept row to a recount: after a bulk load that bypassed the triggers
    (`session_replication_role = replica` skips them, as it skips foreign keys)."""
    counted = recount_totals(connection)
    row = {
        "posts": counted.posts,
        "checks": counted.checks,
        "saves": counted.saves,
        "stable_posts": counted.stable_posts,
    }
    updated = connection.execute(
        collection_totals.update().where(collection_totals.c.id == 1).values(**row)
    )
    if updated.rowcount == 0:
        connection.execute(collection_totals.insert().values(id=1, **row))
    return counted
