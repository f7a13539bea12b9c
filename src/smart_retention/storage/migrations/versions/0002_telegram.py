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

SQLite cannot drop columns in place on older versions: batch mode copies the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from smart_retention.storage.types import Counter, UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("access_hash", Counter))
        batch.add_column(sa.Column("deferred_until", UTCDateTime))
    with op.batch_alter_table("post_metrics_checks") as batch:
        batch.add_column(
            sa.Column("miss_count", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("missing_since", UTCDateTime))
        batch.add_column(sa.Column("deferred_until", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("post_metrics_checks") as batch:
        batch.drop_column("deferred_until")
        batch.drop_column("missing_since")
        batch.drop_column("miss_count")
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("deferred_until")
        batch.drop_column("access_hash")
