"""Collection totals: posts, checks, saves and stable posts, kept by the database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

The owner figures (stats, storage analysis) need these four sums on every request. Summed
over `posts` and `post_metrics_checks` they cost a pass over every post; kept in one row
they cost one primary-key read. Triggers keep the row, so every writer counts: the
collector's batches, a removed channel's cascade, a manual DELETE, a restore of rows.

- PostgreSQL: statement-level triggers with transition tables, one UPDATE of the totals
  row per statement (a batch's upsert of 500 check rows adds one row update, not 500).
- SQLite: row-level triggers (SQLite has no statement-level ones); each is one UPDATE of
  a one-row table inside the same transaction.

A later migration that rebuilds `posts` or `post_metrics_checks` on SQLite (batch mode
copies the table) drops these triggers with it and must create them again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOTALS = "collection_totals"
# The sums over the tables as they are: the totals row's first value, and what
# `smart-retention stats --exact` compares it with.
RECOUNT = f"""
INSERT INTO {TOTALS} (id, posts, checks, saves, stable_posts)
SELECT 1,
       (SELECT count(*) FROM posts),
       (SELECT coalesce(sum(check_count), 0) FROM post_metrics_checks),
       (SELECT coalesce(sum(save_count), 0) FROM post_metrics_checks),
       (SELECT count(stable_since) FROM post_metrics_checks)
"""

# The functions find the totals row beside the table that fired them (TG_TABLE_SCHEMA),
# not through the session's search_path: a writer whose search_path names another schema
# (a copy between schemas, a tool with schema-qualified names) must count here too.
# Transition tables are visible to the dynamic statement (SPI registers them).
_ADD_TO_TOTALS = """
    EXECUTE format(
        'UPDATE %I.collection_totals SET posts = posts + $1, checks = checks + $2, '
        'saves = saves + $3, stable_posts = stable_posts + $4',
        TG_TABLE_SCHEMA
    ) USING posts, checks, saves, stable;"""

POSTGRESQL_FUNCTIONS = {
    "collection_totals_count_checks": f"""
CREATE FUNCTION collection_totals_count_checks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    posts bigint := 0;
    checks bigint := 0;
    saves bigint := 0;
    stable bigint := 0;
    removed_checks bigint;
    removed_saves bigint;
    removed_stable bigint;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT coalesce(sum(check_count), 0), coalesce(sum(save_count), 0),
               count(stable_since)
        INTO checks, saves, stable FROM new_rows;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        SELECT coalesce(sum(check_count), 0), coalesce(sum(save_count), 0),
               count(stable_since)
        INTO removed_checks, removed_saves, removed_stable FROM old_rows;
        checks := checks - removed_checks;
        saves := saves - removed_saves;
        stable := stable - removed_stable;
    END IF;{_ADD_TO_TOTALS}
    RETURN NULL;
END
$$""",
    "collection_totals_count_posts": f"""
CREATE FUNCTION collection_totals_count_posts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    posts bigint;
    checks bigint := 0;
    saves bigint := 0;
    stable bigint := 0;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO posts FROM new_rows;
    ELSE
        SELECT -count(*) INTO posts FROM old_rows;
    END IF;{_ADD_TO_TOTALS}
    RETURN NULL;
END
$$""",
}

# (trigger, event, table, transition tables, function)
POSTGRESQL_TRIGGERS = (
    ("collection_totals_checks_insert", "INSERT", "post_metrics_checks",
     "NEW TABLE AS new_rows", "collection_totals_count_checks"),
    ("collection_totals_checks_update", "UPDATE", "post_metrics_checks",
     "OLD TABLE AS old_rows NEW TABLE AS new_rows", "collection_totals_count_checks"),
    ("collection_totals_checks_delete", "DELETE", "post_metrics_checks",
     "OLD TABLE AS old_rows", "collection_totals_count_checks"),
    ("collection_totals_posts_insert", "INSERT", "posts",
     "NEW TABLE AS new_rows", "collection_totals_count_posts"),
    ("collection_totals_posts_delete", "DELETE", "posts",
     "OLD TABLE AS old_rows", "collection_totals_count_posts"),
)  # fmt: skip

_CHECK_SUMS_OF_NEW = (
    "checks = checks + NEW.check_count, saves = saves + NEW.save_count, "
    "stable_posts = stable_posts + (NEW.stable_since IS NOT NULL)"
)
_CHECK_SUMS_OF_OLD = (
    "checks = checks - OLD.check_count, saves = saves - OLD.save_count, "
    "stable_posts = stable_posts - (OLD.stable_since IS NOT NULL)"
)
SQLITE_TRIGGERS = {
    "collection_totals_checks_insert": (
        "AFTER INSERT ON post_metrics_checks",
        f"UPDATE {TOTALS} SET {_CHECK_SUMS_OF_NEW};",
    ),
    "collection_totals_checks_update": (
        "AFTER UPDATE ON post_metrics_checks",
        f"UPDATE {TOTALS} SET checks = checks + NEW.check_count - OLD.check_count, "
        "saves = saves + NEW.save_count - OLD.save_count, "
        "stable_posts = stable_posts + (NEW.stable_since IS NOT NULL) "
        "- (OLD.stable_since IS NOT NULL);",
    ),
    "collection_totals_checks_delete": (
        "AFTER DELETE ON post_metrics_checks",
        f"UPDATE {TOTALS} SET {_CHECK_SUMS_OF_OLD};",
    ),
    "collection_totals_posts_insert": (
        "AFTER INSERT ON posts",
        f"UPDATE {TOTALS} SET posts = posts + 1;",
    ),
    "collection_totals_posts_delete": (
        "AFTER DELETE ON posts",
        f"UPDATE {TOTALS} SET posts = posts - 1;",
    ),
}


def upgrade() -> None:
    op.create_table(
        TOTALS,
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("posts", sa.BigInteger, nullable=False),
        sa.Column("checks", sa.BigInteger, nullable=False),
        sa.Column("saves", sa.BigInteger, nullable=False),
        sa.Column("stable_posts", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TOTALS}"),
        # One row, always: the triggers update it and never insert another.
        sa.CheckConstraint("id = 1", name=f"ck_{TOTALS}_one_row"),
    )
    op.execute(RECOUNT)
    if op.get_bind().dialect.name == "postgresql":
        for definition in POSTGRESQL_FUNCTIONS.values():
            op.execute(definition)
        for name, event, table, transitions, function in POSTGRESQL_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {transitions} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
            )
    else:
        for name, (when, body) in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} BEGIN {body} END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, _, table, _, _ in POSTGRESQL_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for function in POSTGRESQL_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table(TOTALS)
