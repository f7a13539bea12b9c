"""Channel references: the three id forms name one channel; ambiguous ids are refused."""

import pytest
from sqlalchemy import Engine

from smart_retention.channels import (
    ChannelIdError,
    ChannelRef,
    bare_channel_id,
    check_bare_channel_id,
    parse_channel_ref,
    peer_channel_id,
)
from smart_retention.storage.channels import find_channel, save_channel

BARE = 1234567890
PEER = -1001234567890


@pytest.mark.parametrize("text", ["1234567890", "-1001234567890", " -1001234567890 "])
def test_a_bare_id_and_a_peer_id_name_the_same_channel(text: str) -> None:
    assert parse_channel_ref(text) == ChannelRef(channel_id=BARE)
    assert bare_channel_id(text) == BARE


def test_the_peer_id_of_a_bare_id_is_minus_100_followed_by_it() -> None:
    assert peer_channel_id(BARE) == PEER
    assert bare_channel_id(peer_channel_id(7)) == 7
    assert peer_channel_id(7) == -1000000000007


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1001234567890",
            "channel id 1001234567890 is ambiguous: it starts with 100 like a -100 peer id "
            "without its minus sign; write -1001234567890 if it is a peer id (bare id 1234567890)",
        ),
        (
            "1001234567",
            "channel id 1001234567 is ambiguous: it starts with 100 like a -100 peer id without "
            "its minus sign; write -1001001234567 if 1001234567 is the bare id",
        ),
    ],
)
def test_a_positive_id_starting_with_100_is_refused_saying_how_to_write_it(
    text: str, message: str
) -> None:
    with pytest.raises(ChannelIdError) as raised:
        parse_channel_ref(text)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@RecSysChannel", ChannelRef(username="recsyschannel")),
        ("recsyschannel", ChannelRef(username="recsyschannel")),
        ("https://t.me/RecSysChannel", ChannelRef(username="recsyschannel")),
        ("t.me/recsyschannel/", ChannelRef(username="recsyschannel")),
        ("http://telegram.me/recsyschannel", ChannelRef(username="recsyschannel")),
        ("https://t.me/s/recsyschannel", ChannelRef(username="recsyschannel")),
        ("https://t.me/recsyschannel/123", ChannelRef(username="recsyschannel")),
        ("https://t.me/c/1234567890/55", ChannelRef(channel_id=BARE)),
        # Queries and fragments say nothing about the channel.
        ("https://t.me/durov?start=1", ChannelRef(username="durov")),
        ("t.me/durov#x", ChannelRef(username="durov")),
        ("https://t.me/durov/123?single", ChannelRef(username="durov")),
        ("https://t.me/c/1234567890/55?thread=3#top", ChannelRef(channel_id=BARE)),
        # Collectible usernames have four characters.
        ("@ab_c", ChannelRef(username="ab_c")),
        ("https://t.me/news", ChannelRef(username="news")),
    ],
)
def test_usernames_and_links_are_understood(text: str, expected: ChannelRef) -> None:
    assert parse_channel_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("https://t.me/+AbCdEf123", "is an invite link"),
        ("https://t.me/joinchat/AbCdEf", "is an invite link"),
        ("@ab", "is neither a username"),
        ("@abc", r"is neither a username \(4-32 letters"),
        (
            "https://t.me/c/1001234567890/5",
            "1001234567890 is not a channel id; t.me/c/ links carry the bare id .*"
            "if 1001234567890 is a peer id without its minus sign, add 1234567890",
        ),
        ("https://t.me/c/0/5", "0 is not a channel id"),
        ("", "no channel given"),
        ("-123", "is not a channel's peer id"),
        ("99999999999999", "is out of range"),
    ],
)
def test_bad_references_are_one_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(ChannelIdError, match=fragment):
        parse_channel_ref(text)


def test_storage_refuses_a_peer_id_where_a_bare_id_belongs() -> None:
    with pytest.raises(ChannelIdError, match="is a peer id; storage keeps the bare id 1234567890"):
        check_bare_channel_id(PEER)
    # Ids from Telegram are bare, even those starting with 100.
    assert check_bare_channel_id(1001234567) == 1001234567


def test_every_id_form_finds_the_stored_channel(engine: Engine) -> None:
    from datetime import UTC, datetime

    with engine.begin() as connection:
        save_channel(
            connection,
            BARE,
            access_hash=99,
            username="RecSysChannel",
            title="RecSys",
            now=datetime(2026, 12, 1, tzinfo=UTC),
        )
    with engine.connect() as connection:
        for text in ("1234567890", "-1001234567890", "@recsyschannel", "t.me/RecSysChannel"):
            found = find_channel(connection, parse_channel_ref(text))
            assert found is not None and found.channel_id == BARE, text
            assert found.username == "RecSysChannel" and found.access_hash == 99
