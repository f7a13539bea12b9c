"""Schema migrations through Alembic, driven from code so the CLI and tests share it."""

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

SCRIPT_LOCATION = "smart_retention.storage:migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, command.downgrade, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def heads() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def _run(engine: Engine, operation, revision: str) -> None:  # type: ignore[no-untyped-def]
    config = alembic_config()
    with engine.begin() as connection:
        # env.py picks the connection up, so the migration runs in this transaction.
        config.attributes["connection"] = connection
        operation(config, revision)


def stamp(engine: Engine, revision: str) -> None:
    """Record `revision` as the database's schema without running any migration: for a
    database whose tables are already that revision's (see storage/adoption.py)."""
    _run(engine, command.stamp, revision)
