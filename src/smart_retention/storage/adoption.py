"""Bringing a database of any starting state to the newest schema revision.

A database reaches `deploy` in one of three states:

- versioned: Alembic's version table is there; the missing migrations are run.
- empty: none of the tables any revision creates is there; every migration is run.
- legacy: some of those tables are there but no migration record, as when an older
  release (or a hand-made copy of its schema) created them. Such a database is adopted:
  the revision whose tables and columns the database has exactly is found, recorded
  (stamped) without running its migrations, and the later migrations are run, all in
  one transaction.

Which revision a legacy database matches is found generically: every revision is built
in a scratch in-memory SQLite database, and the table and column names it leaves are
compared with the database's. Only tables that some revision creates are compared: other
tables of the schema (another application's) are neither touched nor a reason to refuse.

A legacy database that matches no revision (say it has only `post_metrics`, as an old
collector kept it, or a `post_metrics` without a `replies` column) is refused with what
differs from the nearest revision, and nothing is changed: guessing a missing table's
contents (posts need a publication time) or a missing column's meaning is not a
migration's job. docs/deploy.md says how to bring such a table in.
"""

import logging
from dataclasses import dataclass
from functools import cache

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from smart_retention.errors import UserError
from smart_retention.storage import migrate
from smart_retention.storage.engine import display_url, make_engine

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"

# Table name -> its column names.
Layout = dict[str, frozenset[str]]


class SchemaNotAdoptable(UserError):
    """A database without a migration record whose tables match no revision."""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    # The revision found in the database before, or None (empty or legacy).
    before: str | None
    after: str
    # Set when a legacy database was stamped with this revision.
    adopted: str | None = None

    def describe(self) -> str:
        if self.adopted is not None:
            return (
                f"adopted a database without a migration record: its tables match revision "
                f"{self.adopted}, stamped {self.adopted}; now at {self.after} (head)"
            )
        if self.before == self.after:
            return f"already at revision {self.after} (head); nothing to do"
        return f"upgraded from {self.before or 'an empty database'} to {self.after} (head)"


@cache
def revision_layouts() -> tuple[tuple[str, Layout], ...]:
    """Each revision, first to head, with the tables and columns its migrations leave."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [revision.revision for revision in script.walk_revisions("base", "heads")]
    revisions.reverse()
    scratch = make_engine("sqlite://")
    try:
        layouts = []
        for revision in revisions:
            migrate.upgrade(scratch, revision)
            layouts.append((revision, _layout(scratch, known=None)))
        return tuple(layouts)
    finally:
        scratch.dispose()


def known_tables() -> frozenset[str]:
    return frozenset(name for _, layout in revision_layouts() for name in layout)


def database_layout(engine: Engine) -> Layout:
    """The database's tables that some revision creates, with their columns."""
    return _layout(engine, known=known_tables())


def _layout(engine: Engine, known: frozenset[str] | None) -> Layout:
    inspector = inspect(engine)
    return {
        name: frozenset(column["name"] for column in inspector.get_columns(name))
        for name in inspector.get_table_names()
        if name != VERSION_TABLE and (known is None or name in known)
    }


def matching_revision(layout: Layout) -> str | None:
    """The oldest revision whose tables and columns are exactly `layout`'s.

    A migration that changes no table or column (0004 drops an index and sets a
    storage parameter) leaves the same layout as the revision before it, and tables
    alone cannot tell the two apart. The oldest is the safe pick: the later migrations
    are run, and such migrations are written to be idempotent, so they do nothing where
    their change is already made.
    """
    matches = [revision for revision, expected in revision_layouts() if expected == layout]
    return matches[0] if matches else None


def layout_differences(layout: Layout, expected: Layout) -> list[str]:
    """What keeps `layout` from `expected`, a few words each; empty when they match."""
    found = []
    missing = sorted(set(expected) - set(layout))
    if missing:
        found.append(f"tables {', '.join(missing)} are missing")
    extra = sorted(set(layout) - set(expected))
    if extra:
        found.append(f"tables {', '.join(extra)} are of another revision")
    for name in sorted(set(expected) & set(layout)):
        lacking = sorted(expected[name] - layout[name])
        surplus = sorted(layout[name] - expected[name])
        if lacking:
            found.append(f"{name} lacks columns {', '.join(lacking)}")
        if surplus:
            found.append(f"{name} has columns {', '.join(surplus)} that it should not")
    return found


def describe_mismatch(layout: Layout) -> str:
    """What keeps `layout` from the revision it is nearest to, in a few words."""
    revision, nearest = min(
        (
            (revision, layout_differences(layout, expected))
            for revision, expected in revision_layouts()
        ),
        key=lambda pair: len(pair[1]),
    )
    return f"nearest is revision {revision}: {'; '.join(nearest)}"


class StampMismatch(UserError):
    """`db stamp REV` on a database whose tables are not REV's."""


def check_stamp(engine: Engine, revision: str) -> None:
    """Refuse to record `revision` for a database whose smart-retention tables and
    columns are not exactly that revision's (`db stamp` without --force). An unknown
    revision is left to Alembic, which names it; `base` (no record) needs no tables."""
    script = ScriptDirectory.from_config(migrate.alembic_config())
    resolved = script.get_revision(revision)
    if resolved is None:
        return
    expected = dict(revision_layouts()).get(resolved.revision)
    if expected is None:
        return
    differences = layout_differences(database_layout(engine), expected)
    if differences:
        raise StampMismatch(
            f"refusing to stamp revision {resolved.revision}: the database's tables are not "
            f"that revision's ({'; '.join(differences)}); nothing was changed. Stamp only "
            "tables that already are that revision's (docs/deploy.md, db stamp), or "
            "give --force"
        )


def migrate_to_head(engine: Engine) -> MigrationResult:
    """Upgrade, or adopt then upgrade, to the head revision; see the module docstring."""
    head = _single_head()
    before = migrate.current_revision(engine)
    if before is not None:
        migrate.upgrade(engine)
        return MigrationResult(before, migrate.current_revision(engine) or head)
    layout = database_layout(engine)
    if not layout:
        migrate.upgrade(engine)
        return MigrationResult(None, migrate.current_revision(engine) or head)
    revision = matching_revision(layout)
    if revision is None:
        where = display_url(engine.url)
        raise SchemaNotAdoptable(
            f"database {where} has tables of smart-retention ({', '.join(sorted(layout))}) "
            f"but no migration record, and they match no revision ({describe_mismatch(layout)}); "
            "nothing was changed; see docs/deploy.md, 'A database that matches no revision'"
        )
    log.info("migrate.adopt revision=%s", revision)
    config = migrate.alembic_config()
    # Stamp and upgrade in one transaction: a failed upgrade leaves no stamp behind
    # (PostgreSQL and SQLite both roll DDL back).
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.stamp(config, revision)
        command.upgrade(config, "head")
    return MigrationResult(None, migrate.current_revision(engine) or head, adopted=revision)


def _single_head() -> str:
    heads = migrate.heads()
    if len(heads) != 1:
        raise UserError(f"the migrations have {len(heads)} heads ({', '.join(heads)}); expected 1")
    return heads[0]
