"""Telethon messages as the collector's raw fields.

Which counter comes from where, and what "unknown" means:

- views, forwards: the message's own fields; absent (None) is unknown.
- replies: the replies header (`MessageReplies.replies`); no header is unknown
  (the channel has no comments).
- reactions: the sum of the emoji and custom-emoji counts in `MessageReactions.results`;
  paid "star" reactions (`ReactionPaid`, a count of stars bought, often thousands) are
  not reactions of readers and are left out. No reactions object is unknown, an object
  with no (emoji) results is 0.

A value that is not a non-negative whole number is passed on as it is, so
`build_observation` rejects it naming the post and the field.
"""

from typing import Any

from telethon.tl.types import (
    Message,
    MessageReactions,
    MessageReplies,
    PeerChannel,
    ReactionCustomEmoji,
    ReactionEmoji,
)

# The reactions counted: what readers tap. Not ReactionPaid (stars), nor whatever new
# kind Telegram adds, until someone decides it counts.
COUNTED_REACTIONS = (ReactionEmoji, ReactionCustomEmoji)


def is_post(message: Any) -> bool:
    """A real post: not a service message ("channel created", "photo changed") nor empty."""
    return isinstance(message, Message)


def belongs_to(message: Any, channel_id: int) -> bool:
    peer = getattr(message, "peer_id", None)
    return not isinstance(peer, PeerChannel) or peer.channel_id == channel_id


def counter_fields(message: Message) -> dict[str, object]:
    return {
        "views": message.views,
        "forwards": message.forwards,
        "replies": _replies(message.replies),
        "reactions": _reactions(message.reactions),
    }


def _replies(header: Any) -> object:
    if header is None:
        return None
    if isinstance(header, MessageReplies):
        return header.replies
    return header  # not a replies header: rejected as an unsupported value


def _reactions(reactions: Any) -> object:
    if reactions is None:
        return None
    if not isinstance(reactions, MessageReactions):
        return reactions
    total = 0
    for result in reactions.results or ():
        if not isinstance(getattr(result, "reaction", None), COUNTED_REACTIONS):
            continue
        count = getattr(result, "count", None)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            # One bad count makes the sum meaningless: reject it, not a wrong total.
            return count
        total += count
    return total
