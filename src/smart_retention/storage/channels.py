"""The channels a live source collects from, and the rate-limit deferrals on them.

A channel is *tracked* when it has an access hash: `smart-retention channels add`
resolved it once, so collection never looks its username up again. Channels that only
replayed or synthetic data created have none and are not tracked. Ids are bare ids,
checked at this boundary (`channels.check_bare_channel_id`).

`posts.deleted_at` is when polling of a post ended: it was found gone `max_misses` times
in a row (storage/outcomes.py), or its channel was removed (`untrack_channel`). Adding
a channel (again) clears it on all of the channel's posts and resets their misses: they
are polled again while their age is in a tier, and a post really gone is found gone
again after `max_misses` checks. So a channel that was unreadable for a while, or
removed and added back, is collected again as a whole.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select, true

from smart_retention.channels import ChannelRef, TrackedChannel, check_bare_channel_id
from smart_retention.storage.repository import delete_channels, dialect_insert
from smart_retention.storage.tables import channels, post_metrics_checks, posts


@dataclass(frozen=True, slots=True)
class ChannelListing:
    """A tracked channel as `channels list` shows it."""

    channel: TrackedChannel
    posts: int
    added_at: datetime


def save_channel(
    connection: Connection,
    channel_id: int,
    *,
    access_hash: int,
    username: str | None,
    title: str | None,
    now: datetime,
) -> None:
    """Track a channel, or refresh its name and access hash if it is known already."""
    values = {
        "channel_id": check_bare_channel_id(channel_id),
        # As Telegram spells it; lookups ignore case (find_channel).
        "username": username or None,
        "title": title,
        "access_hash": access_hash,
    }
    statement = dialect_insert(connection, channels).values(**values, created_at=now)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[channels.c.channel_id],
            set_={name: statement.excluded[name] for name in ("username", "title", "access_hash")},
        )
    )
    _resume_posts(connection, values["channel_id"])


def _resume_posts(connection: Connection, channel_id: int) -> None:
    """Poll the channel's posts again: clear `deleted_at` (set by misses or by removal)
    and the misses that led to it."""
    checks = post_metrics_checks
    ended_ids = select(posts.c.msg_id).where(
        posts.c.channel_id == channel_id, posts.c.deleted_at.is_not(None)
    )
    connection.execute(
        checks.update()
        .where(checks.c.channel_id == channel_id, checks.c.msg_id.in_(ended_ids))
        .values(miss_count=0, missing_since=None)
    )
    connection.execute(
        posts.update()
        .where(posts.c.channel_id == channel_id, posts.c.deleted_at.is_not(None))
        .values(deleted_at=None)
    )


def _last_msg_id() -> Any:
    # Correlated per channel: the posts key index answers max(msg_id) in one probe,
    # where a GROUP BY over posts would read every post of every channel.
    return (
        select(func.max(posts.c.msg_id))
        .where(posts.c.channel_id == channels.c.channel_id)
        .scalar_subquery()
    )


def tracked_channels(connection: Connection) -> list[TrackedChannel]:
    """Every tracked channel with its highest registered message id, in id order."""
    return tracked_channels_where(connection, true())


def list_channels(connection: Connection) -> list[ChannelListing]:
    """Tracked channels with their post counts, for people."""
    post_count = (
        select(func.count())
        .where(posts.c.channel_id == channels.c.channel_id)
        .scalar_subquery()
        .label("posts")
    )
    query = (
        select(
            channels.c.channel_id,
            channels.c.access_hash,
            channels.c.username,
            channels.c.title,
            _last_msg_id().label("last_msg_id"),
            channels.c.deferred_until,
            post_count,
            channels.c.created_at,
        )
        .where(channels.c.access_hash.is_not(None))
        .order_by(channels.c.channel_id)
    )
    return [
        ChannelListing(TrackedChannel(*row[:6]), posts=row.posts, added_at=row.created_at)
        for row in connection.execute(query)
    ]


def find_channel(connection: Connection, ref: ChannelRef) -> TrackedChannel | None:
    """The tracked channel `ref` names, from storage only (no Telegram lookup)."""
    if ref.channel_id is not None:
        condition = channels.c.channel_id == ref.channel_id
    else:
        condition = func.lower(channels.c.username) == (ref.username or "").lower()
    return next(iter(tracked_channels_where(connection, condition)), None)


def tracked_channels_where(connection: Connection, condition: Any) -> list[TrackedChannel]:
    """Tracked channels meeting `condition`, in id order."""
    query = (
        select(
            channels.c.channel_id,
            channels.c.access_hash,
            channels.c.username,
            channels.c.title,
            _last_msg_id().label("last_msg_id"),
            channels.c.deferred_until,
        )
        .where(channels.c.access_hash.is_not(None), condition)
        .order_by(channels.c.channel_id)
    )
    return [TrackedChannel(*row) for row in connection.execute(query)]


def untrack_channel(
    connection: Connection, channel_id: int, now: datetime, *, purge: bool = False
) -> None:
    """Stop collecting from a channel. Its posts and snapshots stay unless `purge`; its
    posts still polled get `deleted_at` = `now`, so no run asks for them (adding the
    channel again clears it)."""
    if purge:
        delete_channels(connection, [channel_id])
        return
    connection.execute(
        channels.update()
        .where(channels.c.channel_id == channel_id)
        .values(access_hash=None, deferred_until=None)
    )
    connection.execute(
        posts.update()
        .where(posts.c.channel_id == channel_id, posts.c.deleted_at.is_(None))
        .values(deleted_at=now)
    )


def defer_channels(connection: Connection, deferrals: Mapping[int, datetime]) -> None:
    """Keep collection away from each channel until its moment; a later deferral
    already stored is kept (two workers told to wait different times wait the longer)."""
    for channel_id, until in sorted(deferrals.items()):
        connection.execute(
            channels.update()
            .where(
                channels.c.channel_id == channel_id,
                or_(channels.c.deferred_until.is_(None), channels.c.deferred_until < until),
            )
            .values(deferred_until=until)
        )


def deferred_channels(connection: Connection, now: datetime) -> list[TrackedChannel]:
    """Channels deferred beyond `now`: what /metrics shows."""
    return tracked_channels_where(
        connection, and_(channels.c.deferred_until.is_not(None), channels.c.deferred_until > now)
    )


class StoredChannels:
    """The channel catalog a live source reads and writes, in short transactions of its
    own: outside any batch, so a slow Telegram request never holds a database lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def tracked(self) -> list[TrackedChannel]:
        with self.engine.connect() as connection:
            return tracked_channels(connection)

    def defer(self, deferrals: Mapping[int, datetime]) -> None:
        if deferrals:
            with self.engine.begin() as connection:
                defer_channels(connection, deferrals)
