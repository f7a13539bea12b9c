"""Engines for the two supported databases, configured the same way everywhere."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from smart_retention.errors import UserError

# How long a SQLite writer waits for another one before failing, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option naming how a SQLite transaction begins (DEFERRED unless told).
SQLITE_BEGIN_MODE = "smart_retention_sqlite_begin"


SUPPORTED_BACKENDS = ("sqlite", "postgresql")
# What _in_utc adds to a PostgreSQL URL's options; display_url leaves it out again.
UTC_OPTION = "-c TimeZone=UTC"


class UnsupportedDatabase(UserError):
    """A database URL of a backend other than SQLite and PostgreSQL."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; a plain `postgresql://` URL is routed to psycopg 3."""
    parsed = _parsed(url)
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS and parsed.drivername != "postgres":
        raise UnsupportedDatabase(
            f"database URL {display_url(parsed)}: {parsed.get_backend_name()} is not "
            "supported; only sqlite and postgresql are (e.g. sqlite:///smart-retention.sqlite3 "
            "or postgresql://user@host/dbname)"
        )
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    driver = parsed.get_driver_name()
    if parsed.get_backend_name() == "postgresql" and driver != "psycopg":
        # Only psycopg 3 is installed, and the COPY write path is written for it.
        raise UnsupportedDatabase(
            f"database URL {display_url(parsed)}: driver {driver} is not supported; "
            "PostgreSQL is reached through psycopg 3 (postgresql:// or postgresql+psycopg://)"
        )
    if parsed.get_backend_name() == "postgresql":
        if not parsed.database:
            # libpq would fall back to a database named after the user (often the
            # server's own `postgres`), and the schema would be created there.
            raise UserError(
                f"database URL {display_url(parsed)} names no database; end it with "
                "/DBNAME (e.g. postgresql://user@host:5432/metrics)"
            )
        parsed = _in_utc(parsed)
        # A pooled connection the server dropped (a restart, a failover) is replaced at
        # checkout, not handed to the next batch or request: one round trip per checkout.
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite_connection)
        event.listen(engine, "begin", _begin_sqlite_transaction)
    return engine


def _parsed(url: str) -> URL:
    try:
        return make_url(url)
    except ValueError as error:
        # e.g. a port that is not a number; the URL may hold a password, so it is not shown.
        raise UserError(f"database URL cannot be read ({error}); check its host and port") from None


def sqlite_file(url: URL | str) -> Path | None:
    """The file a SQLite URL names; None for another database, memory or a file: URI."""
    parsed = _parsed(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_sqlite_file(url: URL | str, *, must_exist: bool) -> None:
    """Refuse a SQLite URL naming a folder and, with `must_exist`, one naming no file:
    connecting would create an empty database there (what a read, a stamp, a backup or a
    restore must not do)."""
    path = sqlite_file(url)
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"SQLite database {path} is a folder, not a database file")
    if must_exist and not path.exists():
        raise UserError(
            f"SQLite database {path} does not exist (nothing was created); "
            "check --db or SMART_RETENTION_DATABASE_URL"
        )


def display_url(url: URL | str) -> str:
    """The URL as a person should see it: the password masked, and without the TimeZone
    option make_engine adds for itself."""
    parsed = _parsed(url) if isinstance(url, str) else url
    options = parsed.query.get("options")
    if isinstance(options, str) and UTC_OPTION in options:
        rest = " ".join(options.replace(UTC_OPTION, " ").split())
        query = {key: value for key, value in parsed.query.items() if key != "options"}
        if rest:
            query["options"] = rest
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=True)


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
    return url.update_query_dict({"options": f"{options} {UTC_OPTION}".strip()})


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
