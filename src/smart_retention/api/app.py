"""The FastAPI application: owner monitoring, readers' live metrics, Prometheus metrics.

`create_app` takes its settings, engine and clock as arguments so tests and the
benchmark build it on their own database and time; `smart-retention serve` builds it
from the environment. OpenAPI is at /openapi.json and the docs page at /docs.
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine

from smart_retention import __version__
from smart_retention.api import owner, posts
from smart_retention.api.auth import TokenSet
from smart_retention.api.cache import FigureCache
from smart_retention.api.metrics import build_registry
from smart_retention.config import Settings, load_settings
from smart_retention.observation import utc_now
from smart_retention.storage.engine import make_engine

log = logging.getLogger(__name__)

DESCRIPTION = """\
Monitoring for owners (what smart retention saves) and live metrics for readers.

Every endpoint but /metrics needs `Authorization: Bearer <token>`: an owner token for
/owner/..., an owner or a read token for /channels/.... Definitions of the figures
(stable, active, how each size and count is estimated) are in docs/api.md.
"""


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """The API on `engine` (or on settings.database_url, disposed at shutdown)."""
    settings = settings or load_settings()
    owns_engine = engine is None
    # make_engine pre-pings on PostgreSQL: a connection the server dropped is replaced at
    # checkout instead of failing the request that drew it.
    database = engine if engine is not None else make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not settings.owner_tokens:
            log.warning("api.no_owner_tokens owner endpoints will refuse every request")
        yield
        if owns_engine:
            database.dispose()

    app = FastAPI(
        title="smart-retention",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.engine = database
    app.state.clock = clock
    app.state.tokens = TokenSet.of(settings.owner_tokens, settings.read_tokens)
    app.state.figures = FigureCache(settings.owner_figures_max_age_s)
    registry = build_registry(database, clock)

    app.include_router(owner.router)
    app.include_router(posts.router)

    @app.get("/metrics", include_in_schema=False)
    def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
