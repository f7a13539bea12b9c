"""The Telegram boundary: the few requests the source sends, and Telethon behind them.

`TelegramClient` is all the source needs, three coroutines that each send one request,
so tests drive the source with a fake that returns real Telethon objects and raises real
Telethon errors, and no test touches the network. `TelethonClient` implements it on a
Telethon client, connected on first use, which also resolves channels for
`smart-retention channels add`.

Telethon's own FloodWait sleeping is switched off (`flood_sleep_threshold=0`): the
source decides whether to sleep or defer (`limits.py`), and paces every request.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

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


@dataclass(frozen=True, slots=True)
class ResolvedChannel:
    channel_id: int
    access_hash: int
    username: str | None
    title: str | None


class TelethonClient:
    """`TelegramClient` on Telethon. Connects on first use, in the caller's event loop
    (Telethon binds a client to the loop it connected in)."""

    def __init__(self, credentials: TelegramCredentials) -> None:
        if credentials.session is None:
            raise TelegramSettingError("no Telegram session given")
        self._credentials = credentials
        # Opened now, so a missing session file fails when the source is built, not at
        # the first request of the first run.
        self._session = open_session(credentials.session)
        self._client: Any = None

    async def connected(self) -> Any:
        if self._client is None:
            from telethon import TelegramClient as Telethon

            client = Telethon(
                self._session,
                self._credentials.api_id,
                self._credentials.api_hash,
                flood_sleep_threshold=0,
                # A collector reads on request; it has no use for pushed updates.
                receive_updates=False,
            )
            await client.connect()
            if not await client.is_user_authorized():
                await client.disconnect()
                raise TelegramNotAuthorized(
                    "the Telegram session is not logged in; run 'smart-retention telegram "
                    "login' and point SMART_RETENTION_TELEGRAM_SESSION at its session"
                )
            self._client = client
        return self._client

    async def get_messages(self, channel: Any, ids: Sequence[int]) -> Sequence[Any]:
        client = await self.connected()
        return list(await client.get_messages(channel, ids=list(ids)))

    async def get_history(self, channel: Any, after_id: int, limit: int) -> Sequence[Any]:
        client = await self.connected()
        return list(await client.get_messages(channel, limit=limit, min_id=after_id, reverse=True))

    async def get_message_before(self, channel: Any, moment: datetime) -> Any | None:
        client = await self.connected()
        found = await client.get_messages(channel, limit=1, offset_date=moment)
        return found[0] if found else None

    async def resolve_channel(self, ref: ChannelRef) -> ResolvedChannel:
        """Look a channel up once: by username, or by id among what the account knows."""
        from telethon import errors
        from telethon.tl.types import Channel, PeerChannel

        client = await self.connected()
        try:
            if ref.username is not None:
                entity = await client.get_entity(ref.username)
            else:
                entity = await _entity_by_id(client, PeerChannel(ref.channel_id))
        except (errors.UsernameNotOccupiedError, errors.UsernameInvalidError):
            raise ChannelNotResolved(f"channel {ref}: no such username on Telegram") from None
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
            await self._client.disconnect()
            self._client = None


async def _entity_by_id(client: Any, peer: Any) -> Any:
    """An id alone is not enough to read a channel: its access hash is needed, and only
    an account that has seen the channel has it. Look in the session first, then once
    through the account's dialogs (which teaches the session every joined channel)."""
    try:
        return await client.get_entity(peer)
    except ValueError:
        pass
    await client.get_dialogs()
    try:
        return await client.get_entity(peer)
    except ValueError:
        raise ChannelNotResolved(
            f"channel id {peer.channel_id} is unknown to this account; join the channel "
            "with it, or add the channel by @username or t.me link"
        ) from None
