"""Owner endpoints: what smart retention saves. Each needs an owner token."""

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query
from sqlalchemy import Connection, Engine

from smart_retention import analysis
from smart_retention.api import schemas
from smart_retention.api.auth import require_owner
from smart_retention.api.deps import Clock, Database, Figures, reject_unknown_query

T = TypeVar("T")

AUTH_RESPONSES = {
    401: {"model": schemas.ErrorMessage, "description": "No, malformed or unknown token."},
    403: {"model": schemas.ErrorMessage, "description": "A read token, not an owner's."},
}

router = APIRouter(
    prefix="/owner/database",
    tags=["owner"],
    dependencies=[Depends(require_owner), Depends(reject_unknown_query)],
    responses=AUTH_RESPONSES,  # type: ignore[arg-type]
)

Exact = Annotated[
    bool,
    Query(description="Count post_metrics rows and duplicates exactly (reads the whole table)."),
]


@router.get("/smart-collection/stats", response_model=schemas.CollectionStats)
def smart_collection_stats(
    engine: Database, figures: Figures, clock: Clock, exact: Exact = False
) -> schemas.CollectionStats:
    """Checks, snapshots saved, efficiency, and stable and active posts."""

    def compute(connection: Connection) -> schemas.CollectionStats:
        report = analysis.collection_stats(connection, clock(), exact=exact)
        return schemas.CollectionStats.model_validate(report)

    return figures.get(("stats", exact), lambda: _read(engine, compute))


@router.get("/storage-analysis", response_model=schemas.StorageAnalysis)
def storage_analysis(
    engine: Database, figures: Figures, clock: Clock, exact: Exact = False
) -> schemas.StorageAnalysis:
    """Storage now against storage without smart retention, and duplicates left to clean."""

    def compute(connection: Connection) -> schemas.StorageAnalysis:
        report = analysis.storage_analysis(connection, clock(), exact=exact)
        return schemas.StorageAnalysis.model_validate(report)

    return figures.get(("storage", exact), lambda: _read(engine, compute))


@router.get("/efficiency-by-age", response_model=schemas.EfficiencyByAge)
def efficiency_by_age(engine: Database, figures: Figures, clock: Clock) -> schemas.EfficiencyByAge:
    """Per post-age bracket (age now): checked posts, checks and saves per post."""

    def compute(connection: Connection) -> schemas.EfficiencyByAge:
        now = clock()
        return schemas.EfficiencyByAge.of(now, analysis.efficiency_by_age(connection, now))

    return figures.get(("efficiency",), lambda: _read(engine, compute))


@router.get("/storage-trend", response_model=schemas.StorageTrend)
def storage_trend(
    engine: Database,
    figures: Figures,
    clock: Clock,
    days: Annotated[
        int, Query(ge=1, le=analysis.MAX_TREND_DAYS, description="UTC days, today included.")
    ] = 7,
) -> schemas.StorageTrend:
    """Per UTC day: snapshots saved, posts with a snapshot, snapshots per such post."""

    def compute(connection: Connection) -> schemas.StorageTrend:
        now = clock()
        return schemas.StorageTrend.of(now, analysis.storage_trend(connection, now, days))

    return figures.get(("trend", days), lambda: _read(engine, compute))


def _read(engine: Engine, compute: Callable[[Connection], T]) -> T:
    with engine.connect() as connection:
        return compute(connection)
