"""Telegram collection: channel access hashes and deferrals, misses on the check rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10

- `channels.access_hash`: with the id, what Telegram needs to read a channel without
  looking its username up; NULL for channels no live source collects from.
- `channels.deferred_until`: a rate limit (FloodWait) keeps collection away until then.
- `post_metrics_checks.miss_count` and `missing_since`: consecutive checks that found the
  post gone, and since when; a post is no longer polled after enough of them.
- `post_metrics_checks.deferred_until`: the post was due but its channel was deferred.

Every step alters the tables in place (ALTER TABLE ... ADD/DROP COLUMN), on SQLite too
(DROP COLUMN needs SQLite 3.35 or later). Never batch mode: on SQLite it recreates the
table (CREATE a copy, DROP TABLE, rename), and with foreign keys enforced, as every
connection of make_engine enforces them, dropping `channels` cascades to every post,
snapshot and check row; recreating `posts` or `post_metrics_checks` would also drop the
totals triggers of 0003.
"""

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

from smart_retention.storage.types import Counter, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# SQLite's ALTER TABLE ... DROP COLUMN arrived in 3.35.0.
SQLITE_DROP_COLUMN = (3, 35, 0)


def upgrade() -> None:
    op.add_column("channels", sa.Column("access_hash", Counter))
    op.add_column("channels", sa.Column("deferred_until", UTCDateTime))
    op.add_column(
        "post_metrics_checks",
        sa.Column("miss_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column("post_metrics_checks", sa.Column("missing_since", UTCDateTime))
    op.add_column("post_metrics_checks", sa.Column("deferred_until", UTCDateTime))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < SQLITE_DROP_COLUMN:
        raise CommandError(
            f"downgrading below 0002 needs SQLite 3.35 or later to drop columns in place; "
            f"this Python has SQLite {sqlite3.sqlite_version} (nothing was changed)"
        )
    op.drop_column("post_metrics_checks", "deferred_until")
    op.drop_column("post_metrics_checks", "missing_since")
    op.drop_column("post_metrics_checks", "miss_count")
    op.drop_column("channels", "deferred_until")
    op.drop_column("channels", "access_hash")
