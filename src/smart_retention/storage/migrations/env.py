"""Alembic environment. Runs on the connection the caller passes in
`config.attributes["connection"]`, or on `sqlalchemy.url` when run by the alembic CLI."""

from alembic import context
from sqlalchemy import Connection

from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # For autogenerate only. A migration must not recreate a table on SQLite (batch
        # mode): DROP TABLE with foreign keys on cascade-deletes the child rows (0002).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        run_migrations(connection)
