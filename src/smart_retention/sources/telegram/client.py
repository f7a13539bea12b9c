"""The Telegram boundary: the few requests the source sends, and Telethon behind them.

`TelegramClient` is all the source needs, three coroutines that each send one request,
so tests drive the source with a fake that returns real Telethon objects and raises real
Telethon errors, and no test touches the network. `TelethonClient` implements it on a
Telethon client, connected on first use, which also resolves channels for
`smart-retention channels add`.

Telethon's own FloodWait sleeping is switched off (`flood_sleep_threshold=0`): the
source decides whether to sleep or defer (`limits.py`), and paces every request.

Nothing waits forever: connecting (with the key exchange and the first request) has
`connect_timeout_s` in all, and every request `request_timeout_s`. A timeout, a refused
or dropped connection and Telethon giving up its own retries are all one
`TelegramUnreachable` ("cannot reach Telegram: why"). A client Telethon disconnected (it
gives up reconnecting after a few tries) is connected again before the next request,
so a long-lived source recovers once the network does.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from smart_retention.channels import ChannelRef, check_bare_channel_id
from smart_retention.errors import UserError
from smart_retention.sources.telegram.credentials import (
    TelegramCredentials,
    TelegramNotAuthorized,
    TelegramSettingError,
    open_session,
)

# channels.getMessages takes at most this many ids; GetHistory returns at most this many.
MAX_IDS_PER_REQUEST = 100
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_REQUEST_TIMEOUT_S = 60.0
# A client found disconnected is connected again at most this many times in a row.
RECONNECT_ATTEMPTS = 2
# What a lost, refused, dropped or silent connection raises: OSError covers
# ConnectionError and TimeoutError (asyncio's too), EOFError asyncio.IncompleteReadError.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)
CONNECT_TIMEOUT_VARIABLE = "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S"
REQUEST_TIMEOUT_VARIABLE = "SMART_RETENTION_TELEGRAM_REQUEST_TIMEOUT_S"
# What Telethon says when a request meets a connection it has already dropped.
_TELETHON_DISCONNECTED = frozenset({"Not connected", "Cannot send requests while disconnected"})
T = TypeVar("T")
log = logging.getLogger(__name__)


class TelegramClient(Protocol):
    """One request per call. `channel` is a `telethon.tl.types.InputPeerChannel`."""

    async def get_messages(self, channel: Any, ids: Sequence[int]) -> Sequence[Any]:
        """The messages with these ids (at most 100): a Message, MessageService,
        MessageEmpty or None each; ids that no longer exist may be None or left out."""
        ...

    async def get_history(self, channel: Any, after_id: int, limit: int) -> Sequence[Any]:
        """Up to `limit` messages with ids above `after_id`, oldest first."""
        ...

    async def get_message_before(self, channel: Any, moment: datetime) -> Any | None:
        """The newest message published before `moment`, or None."""
        ...


class ChannelNotResolved(UserError):
    """`channels add` could not find the channel, or it is not a channel."""


class TelegramUnreachable(UserError):
    """Telegram could not be reached, or did not answer in time."""


class TelegramSessionRevoked(UserError):
    """Telegram no longer accepts the session: the account must log in again."""


def unreachable(
    error: BaseException,
    timeout_s: float | None = None,
    setting: str = CONNECT_TIMEOUT_VARIABLE,
) -> TelegramUnreachable:
    """One line for a connection error, saying why without Telethon's internals."""
    if isinstance(error, TimeoutError):
        limit = f" within {timeout_s:g} s" if timeout_s is not None else ""
        why = f"no answer{limit} (set {setting} to wait longer)"
    elif isinstance(error, asyncio.IncompleteReadError | EOFError):
        why = "the connection was closed before Telegram answered"
    elif type(error) is ConnectionError and str(error) in _TELETHON_DISCONNECTED:
        why = "the connection was lost (closed by Telegram or the network)"
    elif isinstance(error, OSError) and error.strerror:
        why = error.strerror
    else:
        why = str(error) or type(error).__name__
    return TelegramUnreachable(f"cannot reach Telegram: {why}")


def session_revoked(error: BaseException) -> TelegramSessionRevoked:
    return TelegramSessionRevoked(
        f"Telegram no longer accepts the session ({type(error).__name__}: it was logged "
        "out, revoked or used elsewhere at the same time); log in again with "
        "'smart-retention telegram login' and update SMART_RETENTION_TELEGRAM_SESSION"
    )


def account_errors() -> tuple[type[BaseException], ...]:
    """Telethon errors that mean the session, not one request, is finished."""
    from telethon.errors import AuthKeyError, UnauthorizedError

    return (UnauthorizedError, AuthKeyError)


def ignore_lost_connection_futures(loop: asyncio.AbstractEventLoop) -> None:
    """Telethon fails every pending request when a connection is lost, some of them
    futures nobody awaits any more; asyncio would log each as "Future exception was
    never retrieved" with a traceback. The error that matters is raised to the caller
    already; these are logged at DEBUG."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, CONNECTION_ERRORS) and "never retrieved" in context.get("message", ""):
            log.debug("telegram.lost_request error=%r", error)
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def with_timeout(
    awaitable: Awaitable[T], timeout_s: float, setting: str = CONNECT_TIMEOUT_VARIABLE
) -> T:
    """`awaitable`, or TelegramUnreachable once `timeout_s` (the value of `setting`) has
    passed or the connection fails."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except CONNECTION_ERRORS as error:
        raise unreachable(error, timeout_s, setting) from None


@dataclass(frozen=True, slots=True)
class ResolvedChannel:
    channel_id: int
    access_hash: int
    username: str | None
    title: str | None


class TelethonClient:
    """`TelegramClient` on Telethon. Connects on first use, in the caller's event loop
    (Telethon binds a client to the loop it connected in), and again when Telethon has
    dropped the connection."""

    def __init__(
        self,
        credentials: TelegramCredentials,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        auto_reconnect: bool = True,
    ) -> None:
        if credentials.session is None:
            raise TelegramSettingError("no Telegram session given")
        self._credentials = credentials
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        # Off for one-shot commands: a server that hangs up at once fails them at once,
        # where Telethon would reconnect until the timeout.
        self.auto_reconnect = auto_reconnect
        # Opened now, so a missing session file fails when the source is built, not at
        # the first request of the first run.
        self._session = open_session(credentials.session)
        self._client: Any = None

    def _new_client(self) -> Any:
        from telethon import TelegramClient as Telethon

        return Telethon(
            self._session,
            self._credentials.api_id,
            self._credentials.api_hash,
            flood_sleep_threshold=0,
            # A collector reads on request; it has no use for pushed updates.
            receive_updates=False,
            # Telethon's own tries stay within our overall connect timeout.
            timeout=max(1, int(self.connect_timeout_s / 3)),
            auto_reconnect=self.auto_reconnect,
        )

    async def connected(self) -> Any:
        if self._client is None:
            ignore_lost_connection_futures(asyncio.get_running_loop())
            client = self._new_client()
            try:
                await with_timeout(client.connect(), self.connect_timeout_s)
                authorized = await with_timeout(client.is_user_authorized(), self.connect_timeout_s)
            except BaseException:
                await self._drop(client)
                raise
            if not authorized:
                await self._drop(client)
                raise TelegramNotAuthorized(
                    "the Telegram session is not logged in; run 'smart-retention telegram "
                    "login' and point SMART_RETENTION_TELEGRAM_SESSION at its session"
                )
            self._client = client
        elif not self._client.is_connected():
            await self._reconnect()
        return self._client

    async def _reconnect(self) -> None:
        """Telethon gave up on the connection: connect the same client again (its
        session and entity cache stay), a bounded number of times."""
        failure: TelegramUnreachable | None = None
        for _attempt in range(RECONNECT_ATTEMPTS):
            try:
                await with_timeout(self._client.connect(), self.connect_timeout_s)
            except TelegramUnreachable as error:
                failure = error
                continue
            if self._client.is_connected():
                return
        raise failure or TelegramUnreachable("cannot reach Telegram: the connection was lost")

    async def _drop(self, client: Any) -> None:
        """Disconnect a client that failed to connect, without waiting long for it."""
        # Already failing: the first error is the one to show.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        return await with_timeout(awaitable, self.request_timeout_s, REQUEST_TIMEOUT_VARIABLE)

    async def get_messages(self, channel: Any, ids: Sequence[int]) -> Sequence[Any]:
        client = await self.connected()
        return list(await self._call(client.get_messages(channel, ids=list(ids))))

    async def get_history(self, channel: Any, after_id: int, limit: int) -> Sequence[Any]:
        client = await self.connected()
        return list(
            await self._call(
                client.get_messages(channel, limit=limit, min_id=after_id, reverse=True)
            )
        )

    async def get_message_before(self, channel: Any, moment: datetime) -> Any | None:
        client = await self.connected()
        found = await self._call(client.get_messages(channel, limit=1, offset_date=moment))
        return found[0] if found else None

    async def resolve_channel(self, ref: ChannelRef) -> ResolvedChannel:
        """Look a channel up once: by username, or by id among what the account knows."""
        from telethon import errors
        from telethon.tl.types import Channel, PeerChannel

        client = await self.connected()
        try:
            if ref.username is not None:
                entity = await self._call(client.get_entity(ref.username))
            else:
                entity = await _entity_by_id(self, client, PeerChannel(ref.channel_id))
        except (errors.UsernameNotOccupiedError, errors.UsernameInvalidError):
            raise ChannelNotResolved(f"no channel or user named {ref}") from None
        except ValueError:
            # Telethon turns USERNAME_NOT_OCCUPIED (and an unknown entity) into
            # ValueError('No user has "x" as username').
            raise ChannelNotResolved(f"no channel or user named {ref}") from None
        except (errors.ChannelPrivateError, errors.ChannelInvalidError) as error:
            raise ChannelNotResolved(f"channel {ref}: not accessible ({error})") from None
        if not isinstance(entity, Channel):
            raise ChannelNotResolved(f"{ref} is a {type(entity).__name__.lower()}, not a channel")
        if entity.megagroup:
            raise ChannelNotResolved(
                f"{ref} is a group, not a channel; its messages carry no view counts"
            )
        if entity.access_hash is None:
            raise ChannelNotResolved(f"channel {ref}: Telegram gave no access hash")
        return ResolvedChannel(
            channel_id=check_bare_channel_id(entity.id),
            access_hash=entity.access_hash,
            username=entity.username,
            title=entity.title,
        )

    async def disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._drop(client)


async def _entity_by_id(adapter: TelethonClient, client: Any, peer: Any) -> Any:
    """An id alone is not enough to read a channel: its access hash is needed, and only
    an account that has seen the channel has it. Look in the session first, then once
    through the account's dialogs (which teaches the session every joined channel)."""
    try:
        return await adapter._call(client.get_entity(peer))
    except ValueError:
        pass
    await adapter._call(client.get_dialogs())
    try:
        return await adapter._call(client.get_entity(peer))
    except ValueError:
        raise ChannelNotResolved(
            f"channel id {peer.channel_id} is unknown to this account; join the channel "
            "with it, or add the channel by @username or t.me link"
        ) from None
