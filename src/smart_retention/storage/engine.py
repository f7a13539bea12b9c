"""Engines for the two supported databases, configured the same way everywhere."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

# How long a SQLite writer waits for another one before failing, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option naming how a SQLite transaction begins (DEFERRED unless told).
SQLITE_BEGIN_MODE = "smart_retention_sqlite_begin"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; a plain `postgresql://` URL is routed to psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        parsed = _in_utc(parsed)
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _in_utc(url: URL) -> URL:
    """The URL with the session's TimeZone set to UTC, unless the URL sets one.

    Timestamps read as the driver gives them (the collector's state read) are then UTC
    datetimes whatever the server's default zone, as every other boundary hands out.
    """
    options = url.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    if "timezone" in options.lower():
        return url
    return url.update_query_dict({"options": f"{options} -c TimeZone=UTC".strip()})


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction in which a read-then-write cannot race another writer.

    On SQLite it begins IMMEDIATE, taking the database's write lock before the first
    read (other writers wait, readers go on under WAL). On PostgreSQL it is an ordinary
    transaction; the statements inside lock the rows they claim.
    """
    with engine.connect() as connection:
        connection.execution_options(**{SQLITE_BEGIN_MODE: "IMMEDIATE"})
        with connection.begin():
            yield connection


def _begin_sqlite_transaction(connection: Connection) -> None:
    mode = connection.get_execution_options().get(SQLITE_BEGIN_MODE, "DEFERRED")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN would start transactions late, at the first write;
    # transactions are begun explicitly in _begin_sqlite_transaction instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # Enforce the foreign keys the schema declares; SQLite ignores them otherwise.
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the API read while the collector writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    cursor.close()
