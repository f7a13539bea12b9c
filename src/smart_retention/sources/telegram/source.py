"""The Telegram source: live post counters over MTProto, behind the `Source` interface.

Discovery, per tracked channel: the messages after the highest registered message id,
oldest first, 100 per request, service messages skipped. Oldest first matters: a run cut
short by a FloodWait has registered a gap-free prefix, and the next run goes on from
its end. A channel with no posts yet starts `backfill` before now.

Fetching: the due posts of each channel, 100 ids per request (channels.getMessages).
An id that comes back empty, or as a service message, is *missing*. A FloodWait up to
`short_wait_s` is slept through; a longer one *defers* the channel until it ends: the
rest of its posts in this batch are reported deferred (the collector marks them and
the channel), and later batches and runs leave it alone until then. Telegram does not
say whether a wait on reading one channel binds the whole account; the source assumes
the channel, and takes the account as deferred once a second channel is told to wait
while the first still waits, or when a request tied to no channel is.

What fails, and what it stops:

- one channel (Telegram refuses a request about it: ChannelInvalidError, e.g. an access
  hash another account resolved; ChannelPrivateError or ChannelBannedError, the account
  lost access; a FloodError that names no wait; any other RPCError): that channel is
  deferred for `channel_error_defer` (1 h), like a long FloodWait, with a WARNING naming
  the channel and the error, and the run goes on with the others. Its posts are never
  counted as missing for it: losing access is often temporary, and misses end polling.
- the session (UnauthorizedError such as AuthKeyUnregisteredError, SessionRevokedError,
  UserDeactivatedError; AuthKeyDuplicatedError): `TelegramSessionRevoked`, one line
  saying to log in again; the run stops.
- the connection (refused, dropped, no answer in time): `TelegramUnreachable`, one line;
  the batch being fetched rolls back, batches committed before stay.

The source is synchronous, as the collector is; Telethon is asyncio, so each source
runs its own event loop and drives one coroutine per request to completion. One loop
serves one request at a time: threads sharing a source (a thread-pool worker) take
turns, so their Telegram requests are serialised (they are paced per account anyway).
"""

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from telethon.errors import FloodError, RPCError
from telethon.tl.types import InputPeerChannel, MessageEmpty

from smart_retention.channels import TrackedChannel
from smart_retention.observation import (
    ObservationError,
    PostInfo,
    PostKey,
    Rejection,
    build_observation,
    parse_timestamp,
    utc_now,
)
from smart_retention.sources import DEFAULT_MAX_MISSES, FetchResult
from smart_retention.sources.telegram.client import (
    CONNECTION_ERRORS,
    MAX_IDS_PER_REQUEST,
    TelegramClient,
    account_errors,
    session_revoked,
    unreachable,
)
from smart_retention.sources.telegram.limits import (
    FLOOD_WAIT_MARGIN_S,
    SHORT_WAITS_PER_REQUEST,
    RequestPacer,
    flood_wait_seconds,
)
from smart_retention.sources.telegram.messages import belongs_to, counter_fields, is_post

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SHORT_WAIT_S = 30.0
DEFAULT_REQUESTS_PER_SECOND = 1.0
DEFAULT_BACKFILL = timedelta(days=7)
# A channel Telegram refuses a request about is left alone this long.
DEFAULT_CHANNEL_ERROR_DEFER = timedelta(hours=1)
NO_CHANNELS_HINT = (
    "no tracked Telegram channels: nothing to collect; add one with "
    "'smart-retention channels add @name'"
)


class ChannelCatalog(Protocol):
    """Where the tracked channels live (storage, for the real thing)."""

    def tracked(self) -> Sequence[TrackedChannel]: ...

    def defer(self, deferrals: Mapping[int, datetime]) -> None: ...


class _ChannelFailed(Exception):
    """Telegram refused a request about one channel: leave the channel until then."""

    def __init__(self, until: datetime, error: RPCError) -> None:
        super().__init__(until, error)
        self.until = until
        self.error = error


class _Deferred(Exception):
    """A FloodWait too long to sleep through: leave the channel (or account) until then."""

    def __init__(self, until: datetime, account: bool) -> None:
        super().__init__(until, account)
        self.until = until
        self.account = account


class TelegramSource:
    def __init__(
        self,
        client: TelegramClient,
        catalog: ChannelCatalog,
        *,
        max_misses: int = DEFAULT_MAX_MISSES,
        short_wait_s: float = DEFAULT_SHORT_WAIT_S,
        pacer: RequestPacer | None = None,
        backfill: timedelta = DEFAULT_BACKFILL,
        channel_error_defer: timedelta = DEFAULT_CHANNEL_ERROR_DEFER,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_misses < 1:
            raise ValueError(f"max_misses must be at least 1, got {max_misses}")
        self.client = client
        self.catalog = catalog
        self.max_misses = max_misses
        self.short_wait_s = short_wait_s
        self.pacer = pacer or RequestPacer(DEFAULT_REQUESTS_PER_SECOND, sleep=sleep)
        self.backfill = backfill
        self.channel_error_defer = channel_error_defer
        self._clock = clock
        self._sleep = sleep
        self._loop = asyncio.new_event_loop()
        # The loop runs one request at a time: threads sharing the source take turns.
        self._lock = threading.RLock()
        # A source dropped without close() (a worker's, at exit) still frees its loop.
        self._close_loop = weakref.finalize(self, self._loop.close)
        # Requests sent so far (tests and the log lines read it).
        self.requests = 0
        # What this process was told to wait for; storage has it too, for other processes.
        self._channel_until: dict[int, datetime] = {}
        self._account_until: datetime | None = None
        # Channels Telegram refused a request about (not FloodWaits: they never make the
        # account wait).
        self._failed_until: dict[int, datetime] = {}

    # --- the Source interface ---------------------------------------------------------

    def discover(self, now: datetime) -> Iterator[PostInfo]:
        """New posts of every tracked channel that is not deferred, channel by channel."""
        requests_before, found, skipped = self.requests, 0, 0
        tracked = list(self.catalog.tracked())
        if not tracked:
            log.info("telegram.no_channels %s", NO_CHANNELS_HINT)
        for channel in tracked:
            if self._deferred_until(channel) is not None:
                skipped += 1
                continue
            try:
                for info in self._discover_channel(channel, now):
                    found += 1
                    yield info
            except _Deferred as deferral:
                skipped += 1
                self.catalog.defer(self._deferrals(deferral, channel.channel_id, tracked))
            except _ChannelFailed as failure:
                skipped += 1
                self.catalog.defer({channel.channel_id: failure.until})
        log.debug(
            "telegram.discover channels=%d new_posts=%d requests=%d deferred=%d",
            len(tracked),
            found,
            self.requests - requests_before,
            skipped,
        )

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        """Counters of `keys`, 100 ids per request, channel by channel."""
        result = FetchResult(max_misses=self.max_misses)
        requests_before = self.requests
        tracked = {channel.channel_id: channel for channel in self.catalog.tracked()}
        by_channel: dict[int, list[int]] = {}
        for key in keys:
            by_channel.setdefault(key.channel_id, []).append(key.msg_id)
        for channel_id, msg_ids in by_channel.items():
            channel = tracked.get(channel_id)
            if channel is None:
                result.rejections.extend(_untracked(channel_id, msg_ids))
                continue
            until = self._deferred_until(channel)
            if until is not None:
                result.deferred[channel_id] = until
                continue
            try:
                self._fetch_channel(channel, msg_ids, now, result)
            except _Deferred as deferral:
                result.deferred.update(self._deferrals(deferral, channel_id, tracked.values()))
            except _ChannelFailed as failure:
                # The posts not fetched yet wait with their channel; none is a miss.
                result.deferred[channel_id] = failure.until
        log.debug(
            "telegram.fetch posts=%d requests=%d observed=%d missing=%d rejected=%d "
            "deferred_channels=%d",
            len(keys),
            self.requests - requests_before,
            len(result.observations),
            len(result.missing),
            len(result.rejections),
            len(result.deferred),
        )
        return result

    def close(self) -> None:
        """Disconnect and close the event loop; the source is unusable afterwards."""
        with self._lock:
            if self._loop.is_closed():
                return
            disconnect = getattr(self.client, "disconnect", None)
            try:
                if disconnect is not None:
                    self._loop.run_until_complete(disconnect())
            except Exception as error:  # closing: log it, never fail the caller
                log.warning("telegram.close_failed error=%r", error)
            finally:
                self._cancel_leftover_tasks()
                self._close_loop()

    def _cancel_leftover_tasks(self) -> None:
        """Telethon leaves tasks behind when a connection keeps failing (one per
        reconnection); cancelled here, asyncio does not report them as destroyed."""
        leftover = asyncio.all_tasks(self._loop)
        for task in leftover:
            task.cancel()
        if leftover:
            self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))

    def has_channels(self) -> bool:
        """Whether any channel is tracked (`run` says how to add one when none is)."""
        return bool(self.catalog.tracked())

    # --- discovery and fetching -------------------------------------------------------

    def _discover_channel(self, channel: TrackedChannel, now: datetime) -> Iterator[PostInfo]:
        channel_id = channel.channel_id
        peer = InputPeerChannel(channel_id, channel.access_hash)
        after = channel.last_msg_id
        if after is None:
            # A channel new to us: start `backfill` back rather than at its first post.
            before = self._request(
                channel_id, partial(self.client.get_message_before, peer, now - self.backfill)
            )
            after = before.id if before is not None else 0
        while True:
            page = self._request(
                channel_id, partial(self.client.get_history, peer, after, MAX_IDS_PER_REQUEST)
            )
            newer = sorted((m for m in page if m is not None and m.id > after), key=lambda m: m.id)
            for message in newer:
                after = message.id
                if not is_post(message) or not belongs_to(message, channel_id):
                    continue
                try:
                    posted_at = parse_timestamp("posted_at", message.date)
                except ObservationError as error:
                    error.post = PostKey(channel_id, message.id)
                    log.warning("telegram.post_skipped %s", error)
                    continue
                yield PostInfo(PostKey(channel_id, message.id), posted_at)
            if len(page) < MAX_IDS_PER_REQUEST or not newer:
                return

    def _fetch_channel(
        self, channel: TrackedChannel, msg_ids: Sequence[int], now: datetime, result: FetchResult
    ) -> None:
        channel_id = channel.channel_id
        peer = InputPeerChannel(channel_id, channel.access_hash)
        for start in range(0, len(msg_ids), MAX_IDS_PER_REQUEST):
            chunk = list(msg_ids[start : start + MAX_IDS_PER_REQUEST])
            messages = self._request(channel_id, partial(self.client.get_messages, peer, chunk))
            _read_chunk(channel_id, chunk, messages, now, result)

    # --- requests, pacing and FloodWaits ----------------------------------------------

    def _request(self, channel_id: int | None, call: Callable[[], Awaitable[T]]) -> T:
        """One paced request. A short FloodWait is slept through and the request sent
        again (at most SHORT_WAITS_PER_REQUEST times); a longer one raises _Deferred.
        Any other refusal about a channel raises _ChannelFailed; a finished session
        TelegramSessionRevoked; a lost connection TelegramUnreachable."""
        attempt = 0
        while True:
            try:
                with self._lock:
                    self.pacer.wait()
                    self.requests += 1
                    return self._loop.run_until_complete(call())  # type: ignore[arg-type]
            except account_errors() as error:
                raise session_revoked(error) from None
            except CONNECTION_ERRORS as error:
                raise unreachable(error) from None
            except FloodError as error:
                seconds = flood_wait_seconds(error)
                if seconds is None:
                    raise self._channel_failed(channel_id, error) from error
                wait = seconds + FLOOD_WAIT_MARGIN_S
                if seconds <= self.short_wait_s and attempt < SHORT_WAITS_PER_REQUEST:
                    attempt += 1
                    log.info("telegram.flood_wait_sleep channel=%s seconds=%d", channel_id, wait)
                    self._sleep(wait)
                    continue
                raise self._defer(channel_id, wait) from error
            except RPCError as error:
                raise self._channel_failed(channel_id, error) from error

    def _channel_failed(self, channel_id: int | None, error: RPCError) -> _ChannelFailed:
        until = self._clock() + self.channel_error_defer
        if channel_id is not None:
            self._failed_until[channel_id] = until
        log.warning(
            "telegram.channel_skipped channel=%s error=%s until=%s detail=%r",
            channel_id,
            type(error).__name__,
            until.isoformat(),
            str(error),
        )
        return _ChannelFailed(until, error)

    def _defer(self, channel_id: int | None, seconds: int) -> _Deferred:
        now = self._clock()
        until = now + timedelta(seconds=seconds)
        still_waiting = [c for c, t in self._channel_until.items() if c != channel_id and t > now]
        account = channel_id is None or bool(still_waiting)
        if account:
            self._account_until = max(until, self._account_until or until)
        else:
            assert channel_id is not None  # a wait tied to no channel is the account's
            self._channel_until[channel_id] = max(until, self._channel_until.get(channel_id, until))
        log.warning(
            "telegram.flood_wait scope=%s channel=%s seconds=%d until=%s",
            "account" if account else "channel",
            channel_id,
            seconds,
            until.isoformat(),
        )
        return _Deferred(until, account)

    def _deferred_until(self, channel: TrackedChannel) -> datetime | None:
        """When the channel may be asked again, if not now: the latest of what this
        process was told (for the channel or the account) and what storage says."""
        now = self._clock()
        moments = (
            self._account_until,
            self._channel_until.get(channel.channel_id),
            self._failed_until.get(channel.channel_id),
            channel.deferred_until,
        )
        waiting = [moment for moment in moments if moment is not None and moment > now]
        return max(waiting) if waiting else None

    def _deferrals(
        self, deferral: _Deferred, channel_id: int, tracked: Iterable[TrackedChannel]
    ) -> dict[int, datetime]:
        """What to record for a deferral: the channel, or every tracked channel."""
        if not deferral.account:
            return {channel_id: deferral.until}
        return {
            channel.channel_id: self._deferred_until(channel) or deferral.until
            for channel in tracked
        }


def _read_chunk(
    channel_id: int,
    requested: Sequence[int],
    messages: Sequence[Any],
    now: datetime,
    result: FetchResult,
) -> None:
    """Observations for the messages that came back, misses for the ids that did not.

    Matched by id, not position: Telegram may leave deleted ids out of the answer.
    """
    by_id = {
        message.id: message
        for message in messages
        if message is not None
        and not isinstance(message, MessageEmpty)
        and belongs_to(message, channel_id)
    }
    for msg_id in requested:
        key = PostKey(channel_id, msg_id)
        message = by_id.get(msg_id)
        if not is_post(message):
            result.missing.append(key)
            continue
        fields = {
            "channel_id": channel_id,
            "msg_id": msg_id,
            "posted_at": message.date,
            "observed_at": now,
            **counter_fields(message),
        }
        try:
            result.observations.append(build_observation(fields, not_after=now))
        except ObservationError as error:
            error.post = key
            result.rejections.append(Rejection.from_error(error))


def _untracked(channel_id: int, msg_ids: Sequence[int]) -> list[Rejection]:
    return [
        Rejection.from_error(
            ObservationError(
                "channel_id",
                channel_id,
                "is not a tracked Telegram channel; add it with 'smart-retention channels add'",
                PostKey(channel_id, msg_id),
            )
        )
        for msg_id in msg_ids
    ]
