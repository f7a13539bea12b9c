"""Shared fixtures: databases built through the migrations, on SQLite and PostgreSQL.

Every storage test runs on both engines. Each PostgreSQL test gets a schema of its own
(through `search_path`), so tests never see each other's rows. PostgreSQL tests skip
when the server does not answer on a laptop, and fail when the variable CI is set.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine

POSTGRES_URL = os.environ.get(
    "SMART_RETENTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# The recordings live beside the repository (../shared/data/real), never inside it.
REAL_DATA = Path(
    os.environ.get(
        "SMART_RETENTION_REAL_DATA",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
    )
)
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _postgres_unavailable_reason() -> str | None:
    try:
        probe = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with probe.connect() as connection:
            connection.execute(text("select 1"))
        probe.dispose()
    except Exception as error:  # any failure to connect means "not available here"
        return f"PostgreSQL at {POSTGRES_URL} is not available: {error}"
    return None


_POSTGRES_PROBE: list[str | None] = []


def require_postgres() -> None:
    if not _POSTGRES_PROBE:
        _POSTGRES_PROBE.append(_postgres_unavailable_reason())
    reason = _POSTGRES_PROBE[0]
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_redis(url: str) -> None:
    """Skip without a Redis answering at `url` on a laptop; fail when CI is set."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        reason = f"Redis at {url} is not available: {error}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def require_real_data(name: str) -> Path:
    path = REAL_DATA / name / "snapshots.csv.gz"
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"real recording {path} is missing")
        pytest.skip(f"real recording {path} is missing")
    return path


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections use a new, empty schema, dropped afterwards."""
    require_postgres()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) on each engine, as a URL a subprocess can use too."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    with postgres_schema_url() as url:
        yield url


@pytest.fixture
def postgres_database_url() -> Iterator[str]:
    """An empty PostgreSQL database, for what only PostgreSQL can show."""
    with postgres_schema_url() as url:
        yield url


@pytest.fixture
def bare_engine(database_url: str) -> Iterator[Engine]:
    """An engine on an empty database: for the migration tests."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """An engine on a database migrated to the newest revision."""
    migrate.upgrade(bare_engine)
    return bare_engine
