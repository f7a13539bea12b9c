"""What every route gets from the app: a database connection, the clock, and strict
query parameters."""

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import Connection, Engine

from smart_retention.api.cache import FigureCache


def read_connection(request: Request) -> Iterator[Connection]:
    """A connection for the request's reads; closed (and rolled back) when it ends."""
    engine: Engine = request.app.state.engine
    with engine.connect() as connection:
        yield connection


async def clock(request: Request) -> Callable[[], datetime]:
    return request.app.state.clock


Clock = Annotated[Callable[[], datetime], Depends(clock)]


async def database(request: Request) -> Engine:
    return request.app.state.engine


async def figures(request: Request) -> FigureCache:
    return request.app.state.figures


Database = Annotated[Engine, Depends(database)]
Figures = Annotated[FigureCache, Depends(figures)]


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take: a misspelt `?limt=5` would
    otherwise be ignored without a word."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = set(_query_names(route.dependant))
    for name, value in request.query_params.multi_items():
        if name not in known:
            raise invalid_parameter(name, value, "is not a parameter of this endpoint")


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (field.alias for field in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def invalid_parameter(name: str, value: str, why: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": f"{name} {why}", "input": value}]
    )
