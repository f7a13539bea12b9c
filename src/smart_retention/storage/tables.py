"""The four tables. The schema itself is created by the Alembic migrations, never by
`metadata.create_all`; these definitions are what the code queries and what
autogenerate compares against."""

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    text,
)

from smart_retention.storage.types import Counter, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

channels = Table(
    "channels",
    metadata,
    # The bare Telegram channel id, not the -100 prefixed peer id.
    Column("channel_id", Counter, primary_key=True, autoincrement=False),
    Column("username", String(64)),
    Column("title", String(255)),
    Column("created_at", UTCDateTime, nullable=False),
    # Telegram's access hash (a signed 64-bit number) for the account that resolved the
    # channel; NULL for channels that no live source collects from.
    Column("access_hash", Counter),
    # A rate limit (FloodWait) keeps collection away from the channel until then.
    Column("deferred_until", UTCDateTime),
)

posts = Table(
    "posts",
    metadata,
    Column("channel_id", Counter, primary_key=True, autoincrement=False),
    Column("msg_id", Counter, primary_key=True, autoincrement=False),
    Column("posted_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime),
    ForeignKeyConstraint(["channel_id"], ["channels.channel_id"], ondelete="CASCADE"),
    Index("ix_posts_posted_at", "posted_at"),
)


def _counter_columns(prefix: str = "") -> list[Column]:
    return [
        Column(f"{prefix}{name}", Counter) for name in ("views", "forwards", "reactions", "replies")
    ]


def _non_negative(prefix: str = "") -> list[CheckConstraint]:
    return [
        CheckConstraint(f"{prefix}{name} >= 0", name=f"{prefix}{name}_non_negative")
        for name in ("views", "forwards", "reactions", "replies")
    ]


post_metrics = Table(
    "post_metrics",
    metadata,
    Column("channel_id", Counter, primary_key=True, autoincrement=False),
    Column("msg_id", Counter, primary_key=True, autoincrement=False),
    Column("snapshot_time", UTCDateTime, primary_key=True),
    *_counter_columns(),
    ForeignKeyConstraint(
        ["channel_id", "msg_id"], ["posts.channel_id", "posts.msg_id"], ondelete="CASCADE"
    ),
    *_non_negative(),
)

post_metrics_checks = Table(
    "post_metrics_checks",
    metadata,
    Column("channel_id", Counter, primary_key=True, autoincrement=False),
    Column("msg_id", Counter, primary_key=True, autoincrement=False),
    Column("last_checked_at", UTCDateTime, nullable=False),
    Column("last_changed_at", UTCDateTime, nullable=False),
    # Key of the last stored snapshot: reading it back is one primary-key lookup.
    Column("last_saved_at", UTCDateTime),
    Column("check_count", Integer, nullable=False),
    Column("save_count", Integer, nullable=False),
    Column("checks_since_save", Integer, nullable=False),
    # Set at the first check that stored nothing after a save; cleared by the next save.
    Column("stable_since", UTCDateTime),
    Column("post_age_hours", Float, nullable=False),
    # The last observed values: the live numbers, whatever was stored.
    *_counter_columns("last_"),
    # Per-post state of the retention rule; the default step rule keeps none.
    Column("policy_state", JSON),
    # Consecutive checks that found the post gone (deleted or inaccessible), and since
    # when; reset by the next check that sees it. A miss stores no snapshot.
    Column("miss_count", Integer, nullable=False, server_default=text("0")),
    Column("missing_since", UTCDateTime),
    # The post was due, but its channel was deferred by a rate limit until then.
    Column("deferred_until", UTCDateTime),
    ForeignKeyConstraint(
        ["channel_id", "msg_id"], ["posts.channel_id", "posts.msg_id"], ondelete="CASCADE"
    ),
    # No index but the key: every check rewrites the row, and an index on a column it
    # changes (last_checked_at) would rule out PostgreSQL's in-place updates (0004).
)

# One row (id 1) that the database keeps equal to the sums over `posts` and
# `post_metrics_checks`, by triggers (migration 0003; storage/totals.py reads it).
collection_totals = Table(
    "collection_totals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("posts", BigInteger, nullable=False),
    Column("checks", BigInteger, nullable=False),
    Column("saves", BigInteger, nullable=False),
    Column("stable_posts", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)
