"""A Telegram that lives in memory, for the Telegram source tests: no network.

`FakeTelegram` implements the source's `TelegramClient` boundary. It answers with real
Telethon objects (`Message` with `MessageReplies` and `MessageReactions`,
`MessageService`, `PeerChannel`) and raises real Telethon errors (`FloodWaitError`), so
the source meets exactly what Telethon would hand it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from telethon.errors import FloodWaitError
from telethon.tl import functions
from telethon.tl.types import (
    InputPeerChannel,
    Message,
    MessageActionChannelCreate,
    MessageReactions,
    MessageReplies,
    MessageService,
    PeerChannel,
    ReactionCount,
    ReactionEmoji,
)

from smart_retention.channels import TrackedChannel
from smart_retention.sources.telegram.limits import RequestPacer
from smart_retention.sources.telegram.source import TelegramSource

EMOJI = ("👍", "❤", "🔥", "😁")


def post(
    channel_id: int,
    msg_id: int,
    date: datetime,
    *,
    views: int | None = 100,
    forwards: int | None = 1,
    replies: int | None = 2,
    reactions: Sequence[int] | None = (3, 4),
) -> Message:
    """A channel post as Telegram sends it; None leaves the field out."""
    return Message(
        id=msg_id,
        peer_id=PeerChannel(channel_id),
        date=date,
        message=f"post {msg_id}",
        post=True,
        views=views,
        forwards=forwards,
        replies=None if replies is None else MessageReplies(replies=replies, replies_pts=7),
        reactions=None
        if reactions is None
        else MessageReactions(
            results=[
                ReactionCount(reaction=ReactionEmoji(emoticon=EMOJI[i % len(EMOJI)]), count=n)
                for i, n in enumerate(reactions)
            ]
        ),
    )


def service(channel_id: int, msg_id: int, date: datetime) -> MessageService:
    return MessageService(
        id=msg_id,
        peer_id=PeerChannel(channel_id),
        date=date,
        action=MessageActionChannelCreate(title="created"),
    )


@dataclass
class FakeTelegram:
    """Channels of messages by id. `floods` maps a request's number (1 = the first
    request) to the FloodWait seconds that request raises instead of answering."""

    messages: dict[int, dict[int, Any]] = field(default_factory=dict)
    floods: dict[int, int] = field(default_factory=dict)
    # Ids the server leaves out of a getMessages answer entirely (not even None).
    omitted: set[tuple[int, int]] = field(default_factory=set)
    calls: list[tuple[str, int, Any]] = field(default_factory=list)
    errors: dict[int, Exception] = field(default_factory=dict)

    def add(self, *messages: Any) -> None:
        for message in messages:
            self.messages.setdefault(message.peer_id.channel_id, {})[message.id] = message

    def delete(self, channel_id: int, msg_id: int) -> None:
        del self.messages[channel_id][msg_id]

    def _request(self, name: str, channel: InputPeerChannel, argument: Any, request: Any) -> None:
        self.calls.append((name, channel.channel_id, argument))
        number = len(self.calls)
        if number in self.floods:
            raise FloodWaitError(request=request, capture=self.floods[number])
        if number in self.errors:
            raise self.errors[number]

    async def get_messages(self, channel: InputPeerChannel, ids: Sequence[int]) -> list[Any]:
        assert len(ids) <= 100, "channels.getMessages takes at most 100 ids"
        self._request(
            "get_messages",
            channel,
            list(ids),
            functions.channels.GetMessagesRequest(channel=channel, id=list(ids)),
        )
        stored = self.messages.get(channel.channel_id, {})
        return [
            stored.get(msg_id) for msg_id in ids if (channel.channel_id, msg_id) not in self.omitted
        ]

    async def get_history(self, channel: InputPeerChannel, after_id: int, limit: int) -> list[Any]:
        request = functions.messages.GetHistoryRequest(
            peer=channel,
            offset_id=after_id + 1,
            offset_date=None,
            add_offset=-limit,
            limit=limit,
            max_id=0,
            min_id=0,
            hash=0,
        )
        self._request("get_history", channel, after_id, request)
        stored = self.messages.get(channel.channel_id, {})
        return [stored[i] for i in sorted(stored) if i > after_id][:limit]

    async def get_message_before(self, channel: InputPeerChannel, moment: datetime) -> Any:
        request = functions.messages.GetHistoryRequest(
            peer=channel,
            offset_id=0,
            offset_date=moment,
            add_offset=0,
            limit=1,
            max_id=0,
            min_id=0,
            hash=0,
        )
        self._request("get_message_before", channel, moment, request)
        stored = self.messages.get(channel.channel_id, {}).values()
        earlier = [m for m in stored if m.date < moment]
        return max(earlier, key=lambda m: m.id) if earlier else None


@dataclass
class MemoryCatalog:
    """The source's channel catalog without a database."""

    channels: list[TrackedChannel]
    deferrals: list[dict[int, datetime]] = field(default_factory=list)

    def tracked(self) -> list[TrackedChannel]:
        return list(self.channels)

    def defer(self, deferrals: Mapping[int, datetime]) -> None:
        self.deferrals.append(dict(deferrals))


class Clock:
    """A settable UTC clock; `sleep` advances it, as a real sleep would."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def make_source(client: FakeTelegram, catalog: Any, clock: Clock, **options: Any) -> TelegramSource:
    """A source whose sleeps (FloodWait and pacing) go to `clock` instead of real time."""
    pacer = RequestPacer(1000.0, clock=lambda: 0.0, sleep=lambda _s: None)
    return TelegramSource(client, catalog, pacer=pacer, clock=clock, sleep=clock.sleep, **options)
