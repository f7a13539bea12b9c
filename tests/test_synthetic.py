"""The synthetic live source: deterministic, streamed, and usable by the real collector."""

import json
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path

import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from smart_retention import policy
from smart_retention.cli import app
from smart_retention.collector import Collector
from smart_retention.observation import PostKey
from smart_retention.sources.synthetic import FIRST_CHANNEL_ID, SYNTHETIC_START, SyntheticSource
from smart_retention.storage import repository
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import channels, post_metrics, post_metrics_checks, posts

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
# Posts published over one day are 5 to 6 days old here: their views have levelled off,
# and the daily tier (24 h to 7 d, every 6 h) holds every one of them.
LEVELLED = SYNTHETIC_START + 6 * DAY
DAILY_INTERVAL = timedelta(hours=6)


def source(channels: int = 3, posts_per_channel: int = 4, **options: object) -> SyntheticSource:
    return SyntheticSource(channels, posts_per_channel, 1, **options)  # type: ignore[arg-type]


def all_keys(synthetic: SyntheticSource) -> list[PostKey]:
    return [
        PostKey(channel_id, msg_id)
        for channel_id in synthetic.channel_ids
        for msg_id in range(1, synthetic.posts_per_channel + 1)
    ]


def test_the_same_seed_gives_the_same_posts_and_counters() -> None:
    first, second, other = source(seed=11), source(seed=11), source(seed=12)
    moments = [SYNTHETIC_START + HOUR * hours for hours in (1, 5, 30, 200)]

    assert list(first.discover(LEVELLED)) == list(second.discover(LEVELLED))
    for now in moments:
        assert first.fetch(all_keys(first), now) == second.fetch(all_keys(second), now)
    assert [first.counters_at(k, LEVELLED) for k in all_keys(first)] != [
        other.counters_at(k, LEVELLED) for k in all_keys(other)
    ]


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    channel=st.integers(min_value=0, max_value=4),
    msg_id=st.integers(min_value=1, max_value=50),
    ages=st.lists(st.integers(min_value=0, max_value=40 * 86_400), min_size=2, max_size=6),
    changed_fraction=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_counters_are_never_negative_and_views_and_forwards_never_fall_with_age(
    seed: int, channel: int, msg_id: int, ages: list[int], changed_fraction: float
) -> None:
    synthetic = SyntheticSource(5, 50, 3, seed=seed, changed_fraction=changed_fraction)
    key = PostKey(FIRST_CHANNEL_ID + channel, msg_id)
    posted_at = synthetic.posted_at(key)
    assert posted_at is not None
    seen = [synthetic.counters_at(key, posted_at + timedelta(seconds=s)) for s in sorted(ages)]

    for counters in seen:
        assert counters is not None
        assert all(value is not None and value >= 0 for value in counters)
    assert [c.views for c in seen] == sorted(c.views for c in seen)  # type: ignore[union-attr]
    assert [c.forwards for c in seen] == sorted(c.forwards for c in seen)  # type: ignore[union-attr]


def test_some_posts_lose_a_reaction_now_and_then() -> None:
    synthetic = source(channels=10, posts_per_channel=10)
    every_two_hours = [SYNTHETIC_START + HOUR * hours for hours in range(24, 24 * 5, 2)]
    losers = 0
    for key in all_keys(synthetic):
        reactions = [synthetic.counters_at(key, now).reactions for now in every_two_hours]  # type: ignore[union-attr]
        losers += any(later < earlier for earlier, later in pairwise(reactions))
    assert 0 < losers < len(all_keys(synthetic)) / 2


def test_discover_announces_each_post_once_and_only_once_it_is_published() -> None:
    synthetic = source(channels=3, posts_per_channel=5)
    announced: list[PostKey] = []
    previous = SYNTHETIC_START - HOUR
    for step in range(27):
        now = SYNTHETIC_START + HOUR * step
        for info in synthetic.discover(now):
            assert previous < info.posted_at <= now
            announced.append(info.key)
        previous = now

    assert sorted(announced) == sorted(all_keys(synthetic))
    published = [synthetic.posted_at(key) for key in announced]
    assert published == sorted(published)  # type: ignore[type-var]
    assert synthetic.next_discovery_at() is None
    assert list(synthetic.discover(SYNTHETIC_START + 30 * DAY)) == []


def test_discover_is_a_generator_that_resumes_where_its_caller_stopped() -> None:
    synthetic = source()
    first_two = list(islice(synthetic.discover(LEVELLED), 2))
    rest = list(synthetic.discover(LEVELLED))

    assert len(first_two) == 2
    assert [i.key for i in first_two + rest] == [i.key for i in source().discover(LEVELLED)]


def test_skip_announced_leaves_only_the_posts_published_later() -> None:
    walked, skipped = source(), source()
    middle = SYNTHETIC_START + 11 * HOUR
    list(walked.discover(middle))
    skipped.skip_announced(middle)

    assert skipped.next_discovery_at() == walked.next_discovery_at()
    assert list(skipped.discover(LEVELLED)) == list(walked.discover(LEVELLED))


def test_fetch_leaves_out_unknown_and_not_yet_published_posts() -> None:
    synthetic = source(channels=3, posts_per_channel=4)
    last_channel = FIRST_CHANNEL_ID + 2
    unknown = [
        PostKey(FIRST_CHANNEL_ID - 1, 1),
        PostKey(last_channel + 1, 1),
        PostKey(FIRST_CHANNEL_ID, 0),
        PostKey(FIRST_CHANNEL_ID, 5),
    ]
    latest = PostKey(last_channel, 4)
    before_latest = synthetic.posted_at(latest) - timedelta(microseconds=1)  # type: ignore[operator]

    assert synthetic.fetch(unknown, LEVELLED).observations == []
    assert synthetic.fetch([latest], before_latest).observations == []
    assert [o.key for o in synthetic.fetch([*unknown, latest], LEVELLED).observations] == [latest]


@pytest.mark.parametrize("changed_fraction", [0.0, 0.1, 0.5, 1.0])
def test_about_changed_fraction_of_levelled_posts_change_past_the_threshold_per_window(
    changed_fraction: float,
) -> None:
    synthetic = source(channels=20, posts_per_channel=100, changed_fraction=changed_fraction)
    keys = all_keys(synthetic)
    before = synthetic.fetch(keys, LEVELLED).observations
    after = synthetic.fetch(keys, LEVELLED + DAILY_INTERVAL).observations
    stored = sum(
        policy.decide(
            now.counters, then.counters, now.observed_at - now.posted_at, 0, DAILY_INTERVAL
        ).store
        for then, now in zip(before, after, strict=True)
    )
    assert stored / len(keys) == pytest.approx(changed_fraction, abs=0.02)


def table_count(engine: Engine, table: object) -> int:
    with engine.connect() as connection:
        return repository.count_rows(connection, table)


@pytest.mark.parametrize(("changed_fraction", "stored_again"), [(0.0, 0), (1.0, 12)])
def test_a_collector_on_the_synthetic_source_checks_every_due_post_once_per_cycle(
    engine: Engine, changed_fraction: float, stored_again: int
) -> None:
    synthetic = source(channels=3, posts_per_channel=4, changed_fraction=changed_fraction)
    collector = Collector(engine, synthetic, batch_size=5)

    primed = collector.run_cycle(LEVELLED)
    assert (primed.checks, primed.saved, primed.rejected) == (12, 12, 0)
    assert table_count(engine, channels) == 3
    assert table_count(engine, posts) == 12

    again = collector.run_cycle(LEVELLED + DAILY_INTERVAL)
    assert (again.checks, again.saved, again.rejected) == (12, stored_again, 0)
    assert table_count(engine, post_metrics) == 12 + stored_again

    nothing_due = collector.run_cycle(LEVELLED + DAILY_INTERVAL + HOUR)
    assert nothing_due.checks == 0
    with engine.connect() as connection:
        counts = connection.execute(
            select(func.sum(post_metrics_checks.c.check_count), func.count())
        ).one()
        latest = connection.execute(
            select(post_metrics_checks).where(post_metrics_checks.c.msg_id == 4)
        ).mappings()
        live = {row["channel_id"]: row["last_views"] for row in latest}
    assert tuple(counts) == (24, 12)
    expected = {
        key.channel_id: synthetic.counters_at(key, LEVELLED + DAILY_INTERVAL).views  # type: ignore[union-attr]
        for key in all_keys(synthetic)
        if key.msg_id == 4
    }
    assert live == expected


def run_demo(*args: str) -> Result:
    return CliRunner().invoke(app, ["demo", *args])


def test_the_scaled_demo_polls_the_synthetic_source_and_reports_what_it_stored(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'scaled.sqlite3'}"
    options = ("--channels", "2", "--posts-per-channel", "3", "--days", "1", "--json")
    first = run_demo(*options, "--db", url)
    refused = run_demo(*options, "--db", url)
    second = run_demo(*options, "--db", url, "--replace")

    assert refused.exit_code == 2
    assert (
        "already holds posts of channel(s) 2000001, 2000002; use another database" in refused.output
    )

    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert json.loads(second.stdout) == report
    assert report["posts"] == 6 and report["rejected"] == 0
    assert report["naive_rows"] == report["checks"] > report["snapshots_stored"] > 0
    engine = make_engine(url)
    with engine.connect() as connection:
        total_checks = connection.execute(
            select(func.sum(post_metrics_checks.c.check_count))
        ).scalar_one()
        assert total_checks == report["checks"]
        assert repository.count_rows(connection, post_metrics) == report["snapshots_stored"]
        assert repository.count_rows(connection, posts) == 6
    engine.dispose()


def test_the_scaled_demo_refuses_posts_meant_for_the_single_channel_demo() -> None:
    result = run_demo("--channels", "2", "--posts", "3")

    assert result.exit_code == 2
    assert "--posts-per-channel" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--channels", "100001"), "100000"),
        (("--posts-per-channel", "1000001"), "1000000"),
        (("--channels", "20000", "--posts-per-channel", "1000"), "at most 10,000,000 in all"),
        (("--channels", "99999999999999999999"), "--channels"),
        (("--days", "3651"), "3650"),
        (("--posts", "1001"), "1000"),
    ],
)
def test_the_demo_refuses_a_model_too_large_to_run_in_one_line(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    result = run_demo(*args, "--db", f"sqlite:///{tmp_path / 'never.sqlite3'}")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "never.sqlite3").exists()


def test_a_rejected_demo_leaves_the_last_demo_database_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_demo("--posts", "2", "--days", "1", "--json").exit_code == 0
    kept = (tmp_path / "smart-retention-demo.sqlite3").read_bytes()
    refused = run_demo("--channels", "11", "--posts-per-channel", "1000000")
    assert refused.exit_code == 2
    assert (tmp_path / "smart-retention-demo.sqlite3").read_bytes() == kept


def test_a_synthetic_model_ending_past_the_year_9999_is_refused() -> None:
    with pytest.raises(ValueError, match="plus 30 days is past the year 9999"):
        SyntheticSource(1, 1, 30, start=datetime(9999, 12, 31, tzinfo=UTC))
