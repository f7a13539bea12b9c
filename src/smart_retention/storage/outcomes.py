"""Checks that observed nothing: posts found gone, and posts whose channel was deferred.

Both are written in the batch's transaction, beside the observed checks, and neither
stores a snapshot nor counts as a check (`check_count` counts observations).

- A *miss* (the source asked for the post and got nothing back: deleted, or the post
  alone no longer accessible; a whole channel the account cannot read is a deferral,
  not misses) sets `last_checked_at`, so the post is asked for again at its tier's pace,
  and adds one to `miss_count`. At `max_misses` in a row the post gets `deleted_at` and
  is no longer polled; its snapshots and check row stay. An observation resets the count,
  and so does adding the channel again (`storage/channels.py`), which clears `deleted_at`.
- A *deferral* (a rate limit keeps the source away from the channel) marks the post's
  check row with `deferred_until` and leaves it due, so it is checked once the wait ends.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Connection, func, select, tuple_

from smart_retention.observation import PostKey
from smart_retention.storage.repository import COUNTER_NAMES, dialect_insert
from smart_retention.storage.tables import post_metrics_checks, posts

SECONDS_PER_HOUR = 3600.0


def record_misses(
    connection: Connection,
    missing: Mapping[PostKey, datetime],
    now: datetime,
    max_misses: int,
) -> list[PostKey]:
    """Count a miss for each post (key -> its posted_at) at `now`; the posts that reached
    `max_misses` in a row are marked deleted. Returns those, in key order."""
    if not missing:
        return []
    if max_misses < 1:
        raise ValueError(f"max_misses must be at least 1, got {max_misses}")
    checks = post_metrics_checks
    rows = [
        {
            "channel_id": key.channel_id,
            "msg_id": key.msg_id,
            # A first check that finds the post gone still needs a complete check row.
            "last_checked_at": now,
            "last_changed_at": now,
            "last_saved_at": None,
            "check_count": 0,
            "save_count": 0,
            "checks_since_save": 0,
            "stable_since": None,
            "post_age_hours": (now - posted_at).total_seconds() / SECONDS_PER_HOUR,
            **{f"last_{name}": None for name in COUNTER_NAMES},
            "policy_state": None,
            "miss_count": 1,
            "missing_since": now,
            "deferred_until": None,
        }
        for key, posted_at in sorted(missing.items())
    ]
    statement = dialect_insert(connection, checks)
    excluded = statement.excluded
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[checks.c.channel_id, checks.c.msg_id],
            # Only what a miss knows: the last observed values stay the live numbers.
            set_={
                "last_checked_at": excluded.last_checked_at,
                "post_age_hours": excluded.post_age_hours,
                "miss_count": checks.c.miss_count + 1,
                "missing_since": func.coalesce(checks.c.missing_since, excluded.missing_since),
                "deferred_until": None,
            },
        ),
        rows,
    )
    keys = [tuple(key) for key in sorted(missing)]
    gone = [
        PostKey(*row)
        for row in connection.execute(
            select(checks.c.channel_id, checks.c.msg_id)
            .where(
                tuple_(checks.c.channel_id, checks.c.msg_id).in_(keys),
                checks.c.miss_count >= max_misses,
            )
            .order_by(checks.c.channel_id, checks.c.msg_id)
        )
    ]
    if gone:
        connection.execute(
            posts.update()
            .where(
                tuple_(posts.c.channel_id, posts.c.msg_id).in_([tuple(key) for key in gone]),
                posts.c.deleted_at.is_(None),
            )
            .values(deleted_at=now)
        )
    return gone


def mark_deferred(
    connection: Connection, keys: Sequence[PostKey], until_by_channel: Mapping[int, datetime]
) -> None:
    """Mark the check rows of `keys` as deferred until their channel's moment. Posts
    never checked have no check row yet; their channel's deferral says it for them."""
    by_channel: dict[int, list[int]] = {}
    for key in keys:
        by_channel.setdefault(key.channel_id, []).append(key.msg_id)
    checks = post_metrics_checks
    for channel_id, msg_ids in sorted(by_channel.items()):
        connection.execute(
            checks.update()
            .where(checks.c.channel_id == channel_id, checks.c.msg_id.in_(sorted(msg_ids)))
            .values(deferred_until=until_by_channel[channel_id])
        )
