"""Telegram channel references: as users write them, and as storage keeps them.

Storage keeps the *bare* channel id (DESIGN.md). Users paste whatever they have: an
@username, a t.me link, the bare id, or the -100 prefixed peer id that the Bot API and
most bots show. Everything that enters through the command line, a source or storage
goes through this module, so both forms of an id name the same channel.

Telegram encodes a channel's peer id as -(10^12 + bare id); for today's ten-digit ids
that reads as "-100" followed by the bare id. A positive number starting with 100 is
therefore a trap: it may be a bare id that happens to start with 100, or a peer id
whose minus sign was lost. Such input is refused, saying how to write it: as a peer id
(with the minus sign) and, when the number is small enough to be a bare id too, as the
peer id of that bare id.
"""

import re
from dataclasses import dataclass
from datetime import datetime

from smart_retention.errors import UserError

# The peer id of channel N is -(PEER_ID_OFFSET + N), so bare ids stay below the offset.
PEER_ID_OFFSET = 10**12
MAX_BARE_CHANNEL_ID = PEER_ID_OFFSET - 1
AMBIGUOUS_PREFIX = "100"
# Telegram usernames: letters, digits and underscores, starting with a letter; 5 to 32
# when chosen, 4 for collectible (auction) usernames.
_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,30}[A-Za-z0-9]")
# A link's query (?start=1, ?single) and fragment (#x) say nothing about the channel.
_LINK = re.compile(
    r"(?:https?://)?(?:www\.)?(?:t|telegram)\.(?:me|dog)/(?P<path>[^?#]*)(?:[?#].*)?",
    re.IGNORECASE | re.DOTALL,
)
_INTEGER = re.compile(r"[+-]?[0-9]+")


class ChannelIdError(UserError):
    """A channel reference cannot be understood, or an id is ambiguous."""


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """What the user named: a username (lower case, no @) or a bare channel id."""

    username: str | None = None
    channel_id: int | None = None

    def __str__(self) -> str:
        return f"@{self.username}" if self.username is not None else str(self.channel_id)


@dataclass(frozen=True, slots=True)
class TrackedChannel:
    """A channel collected from: enough to address it without looking its name up.

    `access_hash` is what Telegram requires, with the id, to read a channel; it belongs
    to the account that resolved the channel. `last_msg_id` is the highest message id
    registered as a post (None: none yet). `deferred_until` is set while a rate limit
    keeps collection away from the channel.
    """

    channel_id: int
    access_hash: int
    username: str | None = None
    title: str | None = None
    last_msg_id: int | None = None
    deferred_until: datetime | None = None


def peer_channel_id(bare_id: int) -> int:
    """The -100 prefixed peer id of a bare channel id."""
    return -(PEER_ID_OFFSET + check_bare_channel_id(bare_id))


def check_bare_channel_id(value: int) -> int:
    """`value` if it is a bare channel id; a peer id or a number out of range is an error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChannelIdError(f"channel id {value!r} is not a whole number")
    if value < 0:
        raise ChannelIdError(
            f"channel id {value} is a peer id; storage keeps the bare id {bare_channel_id(value)}"
        )
    if not 0 < value <= MAX_BARE_CHANNEL_ID:
        raise ChannelIdError(f"channel id {value} is out of range (1 to {MAX_BARE_CHANNEL_ID})")
    return value


def bare_channel_id(value: int | str) -> int:
    """The bare id of a channel given by its bare id or its -100 prefixed peer id.

    For ids written by a person: a positive id starting with 100 is refused as
    ambiguous. Ids that come from Telegram itself (a `PeerChannel`, an entity's `id`)
    are bare already and need only `check_bare_channel_id`.
    """
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise ChannelIdError(f"channel id {text!r} is not a whole number")
    number = int(text)
    if number < 0:
        bare = -number - PEER_ID_OFFSET
        if not 0 < bare <= MAX_BARE_CHANNEL_ID:
            raise ChannelIdError(
                f"channel id {number} is not a channel's peer id; those are -100 followed by "
                f"the bare id, e.g. {peer_channel_id(1234567890)}"
            )
        return bare
    if text.lstrip("+").startswith(AMBIGUOUS_PREFIX):
        raise ChannelIdError(_ambiguity_message(number))
    if not 0 < number <= MAX_BARE_CHANNEL_ID:
        raise ChannelIdError(f"channel id {number} is out of range (1 to {MAX_BARE_CHANNEL_ID})")
    return number


def _ambiguity_message(number: int) -> str:
    ways = []
    if PEER_ID_OFFSET < number <= PEER_ID_OFFSET + MAX_BARE_CHANNEL_ID:
        ways.append(f"-{number} if it is a peer id (bare id {number - PEER_ID_OFFSET})")
    if 0 < number <= MAX_BARE_CHANNEL_ID:
        ways.append(f"{peer_channel_id(number)} if {number} is the bare id")
    how = " or ".join(ways) if ways else "the peer id with its minus sign"
    return (
        f"channel id {number} is ambiguous: it starts with 100 like a -100 peer id without "
        f"its minus sign; write {how}"
    )


def parse_channel_ref(text: str) -> ChannelRef:
    """A channel as a person names it: @username, username, a t.me link, a bare id or a
    -100 peer id. Private links (t.me/c/ID/...) give the id; invite links are refused."""
    raw = text.strip()
    if not raw:
        raise ChannelIdError("no channel given; write @username, a t.me link or an id")
    link = _LINK.fullmatch(raw)
    if link is not None:
        return _parse_link(raw, link.group("path"))
    if _INTEGER.fullmatch(raw):
        return ChannelRef(channel_id=bare_channel_id(raw))
    name = raw[1:] if raw.startswith("@") else raw
    if _USERNAME.fullmatch(name):
        return ChannelRef(username=name.lower())
    raise ChannelIdError(
        f"channel {raw!r} is neither a username (4-32 letters, digits, _), a t.me link nor an id"
    )


def _private_link_hint(raw: str, number: int) -> str:
    """A t.me/c/ link whose id cannot be a bare id: most often the -100 peer id pasted
    into the link (t.me/c/1001234567890/5)."""
    message = (
        f"link {raw!r}: {number} is not a channel id; t.me/c/ links carry the bare id "
        f"(1 to {MAX_BARE_CHANNEL_ID}), the peer id without -100"
    )
    text = str(number)
    if text.startswith(AMBIGUOUS_PREFIX) and number > PEER_ID_OFFSET:
        bare = number - PEER_ID_OFFSET
        message += f"; if {number} is a peer id without its minus sign, add {bare}"
    return message


def _parse_link(raw: str, path: str) -> ChannelRef:
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise ChannelIdError(f"link {raw!r} names no channel")
    head = parts[0]
    if head.startswith("+") or head.lower() == "joinchat":
        raise ChannelIdError(
            f"link {raw!r} is an invite link; join the channel with the account, then add it "
            "by id or @username"
        )
    if head.lower() == "c" and len(parts) >= 2 and parts[1].isdigit():
        # t.me/c/<bare id>/<message>: the link Telegram gives to posts of private channels.
        number = int(parts[1])
        if not 0 < number <= MAX_BARE_CHANNEL_ID:
            raise ChannelIdError(_private_link_hint(raw, number))
        return ChannelRef(channel_id=number)
    if head.lower() == "s" and len(parts) >= 2:
        head = parts[1]  # t.me/s/<username>: the public web preview
    if _USERNAME.fullmatch(head):
        return ChannelRef(username=head.lower())
    raise ChannelIdError(f"link {raw!r} does not name a channel by username")
