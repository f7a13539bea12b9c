"""Check rows updated in place: no index on last_checked_at, half-full pages on PostgreSQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Every check rewrites its post's check row, so `post_metrics_checks` is the table the
collector updates most: all of its rows, every cycle of every tier. PostgreSQL can
update a row on its own page without touching any index (a HOT update) when no indexed
column changes and the page has room for the new version. Two things stood in the way:

- `ix_post_metrics_checks_last_checked_at`: every check changes `last_checked_at`, so
  every update also inserted an index entry, and into the primary key's index too. No
  query reads through it (the due-post claim joins check rows by their key), so it goes.
- Full pages: with the default fillfactor (100) a page has no room for a second version
  of its rows. At 50, a page keeps room for every row on it to be rewritten once; the
  versions a cycle leaves dead are pruned by the next cycle's updates of the page.

bench/collect.py: the merge of a batch's check rows costs about 40% less with both, and
the table stays smaller (no index entries for dead versions). The price is a check table
about twice its packed size, one row per post (tens of MB per 100,000 posts). Existing
pages keep their rows until they are rewritten; new and vacuumed pages follow the setting.

Neither step changes a table or a column, so a database without a migration record that
has these tables is adopted at 0003 (storage/adoption.py) and this migration runs on it:
both steps are idempotent (the index is dropped only if it is there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = "post_metrics_checks"
LAST_CHECKED_INDEX = "ix_post_metrics_checks_last_checked_at"
# Percent of each page filled by inserts; the rest is room for updated versions.
CHECKS_FILLFACTOR = 50


def upgrade() -> None:
    op.drop_index(LAST_CHECKED_INDEX, table_name=CHECKS, if_exists=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"ALTER TABLE {CHECKS} SET (fillfactor = {CHECKS_FILLFACTOR:d})"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(f"ALTER TABLE {CHECKS} RESET (fillfactor)"))
    op.create_index(LAST_CHECKED_INDEX, CHECKS, ["last_checked_at"], if_not_exists=True)
