"""Read endpoints: each post's live numbers and its stored history. A read or owner token."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import AwareDatetime
from sqlalchemy import Connection

from smart_retention import analysis
from smart_retention.api import schemas
from smart_retention.api.auth import require_reader
from smart_retention.api.deps import Clock, invalid_parameter, read_connection, reject_unknown_query
from smart_retention.observation import MAX_COUNTER, PostKey

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_HISTORY = 10_000
DEFAULT_HISTORY = 1_000
CURSOR_PATTERN = r"^[0-9]{1,20}$"

router = APIRouter(
    prefix="/channels/{channel_id}",
    tags=["posts"],
    dependencies=[Depends(require_reader), Depends(reject_unknown_query)],
    responses={
        401: {"model": schemas.ErrorMessage, "description": "No, malformed or unknown token."},
        404: {"model": schemas.ErrorMessage, "description": "Unknown channel or post."},
    },
)

Db = Annotated[Connection, Depends(read_connection)]
ChannelId = Annotated[int, Path(ge=1, le=MAX_COUNTER, description="The bare Telegram channel id.")]
MsgId = Annotated[int, Path(ge=1, le=MAX_COUNTER)]


@router.get("/posts/{msg_id}/metrics", response_model=schemas.PostLive)
def post_metrics(channel_id: ChannelId, msg_id: MsgId, db: Db, clock: Clock) -> analysis.PostLive:
    """The values the last check saw (not the last stored snapshot), and the schedule."""
    with _not_found_as_404():
        return analysis.post_live(db, PostKey(channel_id, msg_id), clock())


@router.get("/posts/{msg_id}/history", response_model=schemas.PostHistory)
def post_history(
    channel_id: ChannelId,
    msg_id: MsgId,
    db: Db,
    clock: Clock,
    start: Annotated[
        AwareDatetime | None,
        Query(alias="from", description="From this moment (included); default: posted_at."),
    ] = None,
    end: Annotated[
        AwareDatetime | None, Query(alias="to", description="Until this moment (included).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = DEFAULT_HISTORY,
) -> analysis.PostHistory:
    """Stored snapshots in the range, with the thresholds that bound each one's error."""
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and start > end:
        raise invalid_parameter("from", start.isoformat(), "must not be after 'to'")
    with _not_found_as_404():
        return analysis.post_history(
            db, PostKey(channel_id, msg_id), clock(), start=start, end=end, limit=limit
        )


@router.get("/posts", response_model=schemas.PostPage)
def channel_posts(
    channel_id: ChannelId,
    db: Db,
    clock: Clock,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor: Annotated[
        str | None,
        Query(
            pattern=CURSOR_PATTERN,
            description="next_cursor of the previous page (the msg_id to continue below).",
        ),
    ] = None,
) -> schemas.PostPage:
    """The channel's posts with their live values, newest first."""
    before = _decode_cursor(cursor) if cursor is not None else None
    with _not_found_as_404():
        page = analysis.channel_posts(db, channel_id, clock(), limit=limit, before_msg_id=before)
    return schemas.PostPage(
        posts=[schemas.PostLive.model_validate(post) for post in page.posts],
        next_cursor=_encode_cursor(page.next_before_msg_id),
    )


@contextmanager
def _not_found_as_404() -> Iterator[None]:
    try:
        yield
    except analysis.NotFoundError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None


def _encode_cursor(before_msg_id: int | None) -> str | None:
    return str(before_msg_id) if before_msg_id is not None else None


def _decode_cursor(cursor: str) -> int | None:
    """The msg_id a page continues below; past the largest id, no bound at all."""
    value = int(cursor)
    return value if value <= MAX_COUNTER else None


def _utc(moment: datetime | None) -> datetime | None:
    """In UTC; a moment beyond the first or last representable one is clamped to it."""
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (
            datetime.min.replace(tzinfo=UTC)
            if moment.year == 1
            else datetime.max.replace(tzinfo=UTC)
        )
