"""The Telegram source against a fake Telegram: real Telethon objects, no network."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from telethon.errors import ChannelPrivateError
from telethon.tl.types import (
    InputPeerChannel,
    MessageEmpty,
    MessageReactions,
    PeerChannel,
    ReactionCount,
    ReactionCustomEmoji,
    ReactionEmoji,
    ReactionPaid,
)

from smart_retention.channels import TrackedChannel
from smart_retention.observation import Counters, PostKey
from smart_retention.sources.telegram.client import TelethonClient
from smart_retention.sources.telegram.credentials import TelegramCredentials
from smart_retention.sources.telegram.limits import FLOOD_WAIT_MARGIN_S, RequestPacer
from smart_retention.sources.telegram.source import DEFAULT_CHANNEL_ERROR_DEFER
from telegram_fakes import Clock, FakeTelegram, MemoryCatalog, make_source, post, service

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
POSTED = NOW - timedelta(hours=2)
A, B, C = 1234567890, 2234567890, 1987654321
HASH_A, HASH_B, HASH_C = -4511234567890123456, 77, 5


def tracked(*ids: int, last: int | None = None) -> list[TrackedChannel]:
    hashes = {A: HASH_A, B: HASH_B, C: HASH_C}
    return [TrackedChannel(i, hashes[i], f"chan{i}", f"Channel {i}", last) for i in ids]


def keys(channel_id: int, ids: range | list[int]) -> list[PostKey]:
    return [PostKey(channel_id, msg_id) for msg_id in ids]


def setup(
    *channels: int, posts_per_channel: int = 0, last: int | None = None
) -> tuple[FakeTelegram, MemoryCatalog, Clock, Any]:
    telegram = FakeTelegram()
    for channel_id in channels:
        telegram.add(
            *(
                post(channel_id, i, POSTED, views=1000 + i, reactions=(i % 3, 1))
                for i in range(1, posts_per_channel + 1)
            )
        )
    catalog = MemoryCatalog(tracked(*channels, last=last))
    clock = Clock(NOW)
    return telegram, catalog, clock, make_source(telegram, catalog, clock)


# --- fetching: chunks, misses, counters ----------------------------------------------


def test_a_full_chunk_of_100_and_a_partial_one_take_two_requests() -> None:
    telegram, _, _, source = setup(A, posts_per_channel=130)
    result = source.fetch(keys(A, range(1, 131)), NOW)
    assert [(name, len(ids)) for name, _, ids in telegram.calls] == [
        ("get_messages", 100),
        ("get_messages", 30),
    ]
    assert telegram.calls[0][2] == list(range(1, 101))
    assert telegram.calls[1][2] == list(range(101, 131))
    assert len(result.observations) == 130
    assert result.missing == [] and result.rejections == [] and result.deferred == {}
    first, last = result.observations[0], result.observations[-1]
    assert first.key == PostKey(A, 1)
    assert first.counters == Counters(views=1001, forwards=1, reactions=1 + 1, replies=2)
    assert last.key == PostKey(A, 130)
    assert last.counters == Counters(views=1130, forwards=1, reactions=130 % 3 + 1, replies=2)
    assert first.posted_at == POSTED and first.observed_at == NOW
    assert first.posted_at.tzinfo is UTC


def test_a_deleted_id_in_the_middle_of_a_chunk_is_missing_and_the_rest_observed() -> None:
    telegram, _, _, source = setup(A, posts_per_channel=7)
    telegram.delete(A, 3)  # Telethon hands back None for it
    telegram.omitted.add((A, 4))  # Telegram may also leave an id out of the answer
    telegram.messages[A][5] = MessageEmpty(id=5, peer_id=PeerChannel(A))
    telegram.messages[A][6] = service(A, 6, POSTED)
    result = source.fetch(keys(A, range(1, 8)), NOW)
    assert result.missing == keys(A, [3, 4, 5, 6])
    assert [o.key.msg_id for o in result.observations] == [1, 2, 7]
    assert len(telegram.calls) == 1
    assert result.max_misses == 3


def test_counters_the_api_leaves_out_are_unknown_not_zero() -> None:
    telegram, _, _, source = setup(A)
    telegram.add(
        post(A, 1, POSTED, views=None, forwards=None, replies=None, reactions=None),
        post(A, 2, POSTED, views=50, forwards=0, replies=0, reactions=()),
        post(A, 3, POSTED, views=3_000_000_000, forwards=9, replies=11, reactions=(5, 2, 1)),
    )
    result = source.fetch(keys(A, [1, 2, 3]), NOW)
    assert [o.counters for o in result.observations] == [
        Counters(views=None, forwards=None, reactions=None, replies=None),
        # A post with no reactions: the reactions object is there with no results.
        Counters(views=50, forwards=0, reactions=0, replies=0),
        # Reactions are the sum of the reaction counts; replies come from the header.
        Counters(views=3_000_000_000, forwards=9, reactions=8, replies=11),
    ]


def test_reactions_going_down_are_reported_as_they_are() -> None:
    telegram, _, clock, source = setup(A)
    telegram.add(post(A, 1, POSTED, reactions=(6, 4)))
    first = source.fetch([PostKey(A, 1)], NOW)
    telegram.add(post(A, 1, POSTED, reactions=(3,)))
    clock.now = NOW + timedelta(minutes=10)
    second = source.fetch([PostKey(A, 1)], clock.now)
    assert first.observations[0].counters.reactions == 10
    assert second.observations[0].counters.reactions == 3


def test_a_bad_counter_is_rejected_naming_post_and_field_and_the_batch_goes_on() -> None:
    telegram, _, _, source = setup(A)
    telegram.add(
        post(A, 1, POSTED, views=-5),
        post(A, 2, POSTED, reactions=(4, -1)),
        post(A, 3, POSTED, views=10),
    )
    result = source.fetch(keys(A, [1, 2, 3]), NOW)
    assert [str(r) for r in result.rejections] == [
        f"post {A}/1: field views: -5 is negative",
        f"post {A}/2: field reactions: -1 is negative",
    ]
    assert [(r.post, r.field) for r in result.rejections] == [
        (PostKey(A, 1), "views"),
        (PostKey(A, 2), "reactions"),
    ]
    assert [o.key.msg_id for o in result.observations] == [3]


def test_paid_star_reactions_are_not_counted_as_reactions() -> None:
    telegram, _, _, source = setup(A)
    message = post(A, 1, POSTED)
    message.reactions = MessageReactions(
        results=[
            ReactionCount(reaction=ReactionEmoji(emoticon="👍"), count=3),
            ReactionCount(reaction=ReactionCustomEmoji(document_id=5), count=2),
            ReactionCount(reaction=ReactionPaid(), count=2500),
        ]
    )
    telegram.add(message)
    only_paid = post(A, 2, POSTED)
    only_paid.reactions = MessageReactions(
        results=[ReactionCount(reaction=ReactionPaid(), count=40)]
    )
    telegram.add(only_paid)
    result = source.fetch(keys(A, [1, 2]), NOW)
    assert [o.counters.reactions for o in result.observations] == [5, 0]


def test_a_post_of_an_untracked_channel_is_rejected_without_a_request() -> None:
    telegram, _, _, source = setup(A, posts_per_channel=1)
    result = source.fetch([PostKey(C, 1), PostKey(A, 1)], NOW)
    assert [str(r) for r in result.rejections] == [
        f"post {C}/1: field channel_id: {C} is not a tracked Telegram channel; add it with "
        "'smart-retention channels add'"
    ]
    assert [name for name, _, _ in telegram.calls] == ["get_messages"]
    assert len(result.observations) == 1


def test_a_channel_the_account_can_no_longer_read_is_deferred_not_missing() -> None:
    """Losing access is often temporary (a private channel, a ban lifted): its posts are
    left waiting with the channel, never counted as misses, which end polling."""
    telegram, _, _, source = setup(A, B, posts_per_channel=2)
    telegram.errors[1] = ChannelPrivateError(request=None)
    result = source.fetch(keys(A, [1, 2]) + keys(B, [1, 2]), NOW)
    assert result.missing == []
    assert result.deferred == {A: NOW + DEFAULT_CHANNEL_ERROR_DEFER}
    assert [o.key for o in result.observations] == keys(B, [1, 2])
    # Later batches leave the channel alone until then, without a request.
    again = source.fetch(keys(A, [1, 2]), NOW)
    assert again.deferred == {A: NOW + DEFAULT_CHANNEL_ERROR_DEFER}
    assert len(telegram.calls) == 2


def test_requests_use_the_stored_access_hash_and_never_a_username() -> None:
    telegram, _, _, source = setup(A, posts_per_channel=1)

    seen: list[Any] = []
    original = telegram.get_messages

    async def spy(channel: Any, ids: Any) -> Any:
        seen.append(channel)
        return await original(channel, ids)

    telegram.get_messages = spy  # type: ignore[method-assign]
    source.fetch([PostKey(A, 1)], NOW)
    assert seen == [InputPeerChannel(channel_id=A, access_hash=HASH_A)]


# --- FloodWait and pacing ------------------------------------------------------------


def test_a_short_flood_wait_is_slept_through_and_the_request_sent_again() -> None:
    telegram, _, clock, source = setup(A, posts_per_channel=150)
    telegram.floods[2] = 12
    result = source.fetch(keys(A, range(1, 151)), NOW)
    assert clock.slept == [12 + FLOOD_WAIT_MARGIN_S]
    assert [len(ids) for _, _, ids in telegram.calls] == [100, 50, 50]
    assert len(result.observations) == 150
    assert result.deferred == {}


def test_a_long_flood_wait_defers_the_channel_and_keeps_what_was_fetched() -> None:
    telegram, _catalog, clock, source = setup(A, B, posts_per_channel=250)
    telegram.floods[2] = 300  # the second chunk of channel A
    result = source.fetch(keys(A, range(1, 251)) + keys(B, range(1, 51)), NOW)
    until = NOW + timedelta(seconds=300 + FLOOD_WAIT_MARGIN_S)
    assert clock.slept == []  # never slept through a long wait
    assert result.deferred == {A: until}
    assert [o.key for o in result.observations] == keys(A, range(1, 101)) + keys(B, range(1, 51))
    assert [(name, ch, len(ids)) for name, ch, ids in telegram.calls] == [
        ("get_messages", A, 100),
        ("get_messages", A, 100),  # the one that was told to wait: not sent again
        ("get_messages", B, 50),
    ]
    # Later batches leave A alone until the wait ends, without asking Telegram.
    clock.now = NOW + timedelta(seconds=120)
    later = source.fetch(keys(A, range(101, 201)), clock.now)
    assert later.deferred == {A: until} and later.observations == []
    assert len(telegram.calls) == 3
    # Once it has ended, A is asked again.
    clock.now = until + timedelta(seconds=1)
    after = source.fetch(keys(A, range(101, 201)), clock.now)
    assert len(after.observations) == 100 and after.deferred == {}


def test_a_deferral_stored_by_another_process_is_honoured_without_a_request() -> None:
    telegram, catalog, _, source = setup(A, posts_per_channel=3)
    until = NOW + timedelta(minutes=5)
    catalog.channels = [TrackedChannel(A, HASH_A, "a", "A", 3, deferred_until=until)]
    result = source.fetch(keys(A, [1, 2, 3]), NOW)
    assert result.deferred == {A: until}
    assert telegram.calls == []


def test_a_second_channel_told_to_wait_means_the_account_waits() -> None:
    telegram, _, _, source = setup(A, B, C, posts_per_channel=10)
    telegram.floods[1] = 100  # A
    telegram.floods[2] = 400  # B, while A still waits: the limit is the account's
    result = source.fetch(keys(A, [1]) + keys(B, [1]) + keys(C, [1]), NOW)
    a_until = NOW + timedelta(seconds=100 + FLOOD_WAIT_MARGIN_S)
    account_until = NOW + timedelta(seconds=400 + FLOOD_WAIT_MARGIN_S)
    # Every tracked channel is deferred (C too, though never asked), each at least
    # until the account's wait ends.
    assert result.deferred == {A: account_until, B: account_until, C: account_until}
    assert a_until < account_until
    assert [ch for _, ch, _ in telegram.calls] == [A, B]
    assert result.observations == []


def test_requests_are_paced_per_account() -> None:
    moments = iter([0.0, 0.1, 0.3, 2.0])
    slept: list[float] = []
    pacer = RequestPacer(2.0, clock=lambda: next(moments), sleep=slept.append)
    for _ in range(4):
        pacer.wait()
    # 2 per second: requests at 0, 0.5, 1.0 (asked for at 0, 0.1, 0.3), then 2.0 unpaced.
    assert slept == [pytest.approx(0.4), pytest.approx(0.7)]


def test_the_pacer_runs_before_every_request_of_the_source() -> None:
    telegram, catalog, clock, _ = setup(A, posts_per_channel=250)
    waits: list[int] = []

    class CountingPacer(RequestPacer):
        def wait(self) -> None:
            waits.append(len(telegram.calls))

    from smart_retention.sources.telegram.source import TelegramSource

    source = TelegramSource(telegram, catalog, pacer=CountingPacer(1.0), clock=clock)
    source.fetch(keys(A, range(1, 251)), NOW)
    assert waits == [0, 1, 2]


# --- discovery -----------------------------------------------------------------------


def test_discovery_reads_only_after_the_highest_known_id_and_skips_service_messages() -> None:
    telegram, _, _, source = setup(A, last=10)
    telegram.add(*(post(A, i, NOW - timedelta(days=30)) for i in range(1, 11)))
    telegram.add(*(post(A, i, POSTED + timedelta(seconds=i)) for i in range(11, 251)))
    telegram.add(service(A, 100, POSTED), service(A, 251, POSTED))
    telegram.messages[A][100] = service(A, 100, POSTED)  # message 100 is a service message
    found = list(source.discover(NOW))
    assert [info.key.msg_id for info in found] == [i for i in range(11, 251) if i != 100]
    assert all(info.key.channel_id == A for info in found)
    assert found[0].posted_at == POSTED + timedelta(seconds=11)
    assert found[0].posted_at.tzinfo is UTC
    # Pages of 100 after the highest id seen so far; nothing at or below 10 is read.
    assert [(name, after) for name, _, after in telegram.calls] == [
        ("get_history", 10),
        ("get_history", 110),
        ("get_history", 210),
    ]


def test_discovery_of_a_new_channel_starts_the_backfill_before_now() -> None:
    telegram, _, _, source = setup(A)
    telegram.add(post(A, 1, NOW - timedelta(days=20)), post(A, 2, NOW - timedelta(days=8)))
    telegram.add(post(A, 3, NOW - timedelta(days=6)), post(A, 4, NOW - timedelta(hours=1)))
    found = list(source.discover(NOW))
    assert [info.key.msg_id for info in found] == [3, 4]
    assert telegram.calls[0] == ("get_message_before", A, NOW - timedelta(days=7))
    assert telegram.calls[1] == ("get_history", A, 2)


def test_a_long_flood_wait_during_discovery_defers_the_channel_and_keeps_what_was_found() -> None:
    telegram, catalog, _, source = setup(A, B, last=0)
    telegram.add(*(post(A, i, POSTED) for i in range(1, 151)))
    telegram.add(post(B, 1, POSTED))
    telegram.floods[2] = 3600
    found = list(source.discover(NOW))
    assert [info.key for info in found] == [*keys(A, range(1, 101)), PostKey(B, 1)]
    assert catalog.deferrals == [{A: NOW + timedelta(seconds=3600 + FLOOD_WAIT_MARGIN_S)}]
    # The next discovery skips A without asking, and B has nothing new.
    catalog.channels = [
        TrackedChannel(A, HASH_A, last_msg_id=100),
        TrackedChannel(B, HASH_B, last_msg_id=1),
    ]
    assert list(source.discover(NOW + timedelta(minutes=1))) == []
    assert [ch for _, ch, _ in telegram.calls] == [A, A, B, B]


# --- the Telethon adapter ------------------------------------------------------------


class RecordingTelethon:
    """Stands in for telethon.TelegramClient: records the calls the adapter makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    async def get_messages(self, entity: Any, **kwargs: Any) -> list[Any]:
        self.calls.append((entity, kwargs))
        return [post(A, 9, POSTED)]

    async def disconnect(self) -> None:
        self.calls.append(("disconnect", {}))

    def is_connected(self) -> bool:
        return True


def test_the_telethon_adapter_sends_one_request_per_call(tmp_path: Any) -> None:
    session = tmp_path / "account.session"
    session.touch()
    adapter = TelethonClient(TelegramCredentials(25_123_456, "a" * 16 + "b" * 16, str(session)))
    telethon = RecordingTelethon()
    adapter._client = telethon
    peer = InputPeerChannel(A, HASH_A)
    source = make_source(adapter, MemoryCatalog(tracked(A)), Clock(NOW))  # type: ignore[arg-type]
    result = source.fetch(keys(A, [9]), NOW)
    assert [o.key for o in result.observations] == [PostKey(A, 9)]
    list(source.discover(NOW))
    source.close()
    assert telethon.calls == [
        (peer, {"ids": [9]}),
        (peer, {"limit": 1, "offset_date": NOW - timedelta(days=7)}),
        (peer, {"limit": 100, "min_id": 9, "reverse": True}),
        ("disconnect", {}),
    ]
