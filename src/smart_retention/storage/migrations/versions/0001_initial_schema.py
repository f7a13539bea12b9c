"""Initial schema: channels, posts, post_metrics snapshots and one check row per post.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from smart_retention.storage.types import Counter, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("views", "forwards", "reactions", "replies")


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("channel_id", Counter, nullable=False, autoincrement=False),
        sa.Column("username", sa.String(64)),
        sa.Column("title", sa.String(255)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name="pk_channels"),
    )
    op.create_table(
        "posts",
        sa.Column("channel_id", Counter, nullable=False, autoincrement=False),
        sa.Column("msg_id", Counter, nullable=False, autoincrement=False),
        sa.Column("posted_at", UTCDateTime, nullable=False),
        sa.Column("deleted_at", UTCDateTime),
        sa.PrimaryKeyConstraint("channel_id", "msg_id", name="pk_posts"),
        sa.ForeignKeyConstraint(
            ["channel_id"],
            ["channels.channel_id"],
            name="fk_posts_channel_id_channels",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_posts_posted_at", "posts", ["posted_at"])
    op.create_table(
        "post_metrics",
        sa.Column("channel_id", Counter, nullable=False, autoincrement=False),
        sa.Column("msg_id", Counter, nullable=False, autoincrement=False),
        sa.Column("snapshot_time", UTCDateTime, nullable=False),
        *(sa.Column(name, Counter) for name in COUNTERS),
        sa.PrimaryKeyConstraint("channel_id", "msg_id", "snapshot_time", name="pk_post_metrics"),
        sa.ForeignKeyConstraint(
            ["channel_id", "msg_id"],
            ["posts.channel_id", "posts.msg_id"],
            name="fk_post_metrics_channel_id_posts",
            ondelete="CASCADE",
        ),
        *(
            sa.CheckConstraint(f"{name} >= 0", name=f"ck_post_metrics_{name}_non_negative")
            for name in COUNTERS
        ),
    )
    op.create_table(
        "post_metrics_checks",
        sa.Column("channel_id", Counter, nullable=False, autoincrement=False),
        sa.Column("msg_id", Counter, nullable=False, autoincrement=False),
        sa.Column("last_checked_at", UTCDateTime, nullable=False),
        sa.Column("last_changed_at", UTCDateTime, nullable=False),
        sa.Column("last_saved_at", UTCDateTime),
        sa.Column("check_count", sa.Integer, nullable=False),
        sa.Column("save_count", sa.Integer, nullable=False),
        sa.Column("checks_since_save", sa.Integer, nullable=False),
        sa.Column("stable_since", UTCDateTime),
        sa.Column("post_age_hours", sa.Float, nullable=False),
        *(sa.Column(f"last_{name}", Counter) for name in COUNTERS),
        sa.Column("policy_state", sa.JSON),
        sa.PrimaryKeyConstraint("channel_id", "msg_id", name="pk_post_metrics_checks"),
        sa.ForeignKeyConstraint(
            ["channel_id", "msg_id"],
            ["posts.channel_id", "posts.msg_id"],
            name="fk_post_metrics_checks_channel_id_posts",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_post_metrics_checks_last_checked_at", "post_metrics_checks", ["last_checked_at"]
    )


def downgrade() -> None:
    op.drop_table("post_metrics_checks")
    op.drop_table("post_metrics")
    op.drop_table("posts")
    op.drop_table("channels")
