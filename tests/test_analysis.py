"""Owner figures and readers' views, on a small channel collected by the real collector.

`build_dataset` writes the same data on each engine; every expected value below follows
from it by hand (the comments say how). test_api.py serves the same data over HTTP.
"""

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from conftest import ENGINES, postgres_schema_url
from smart_retention import analysis
from smart_retention.analysis import EstimateMethod, NotFoundError
from smart_retention.collector import Collector
from smart_retention.observation import Counters, Observation, PostInfo, PostKey
from smart_retention.policy import DEFAULT_PROFILE
from smart_retention.schedule import DEFAULT_TIERS, Tier, tier_for_age
from smart_retention.sources.recording import RecordedSource
from smart_retention.storage import migrate, repository
from smart_retention.storage.engine import make_engine

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

# Channel 7, checked by the collector (views; forwards 0 and reactions 0 unless given):
#  1: posted 50 min ago; 10,000 / 10,000 / 10,003 / 10,010 -> saves the 1st and 4th
#     (7 views >= 5); last check 5 min ago. Not stable.
#  2: posted 5 h ago; 500 three times -> saves the 1st; stable since the 2nd check.
#  3: posted 3 d ago; 1,000 (1 forward) / 1,000 (2 forwards: saved, counters) /
#     1,005 23 h later (under 20 views and 2%, and under the 24 h checkpoint) -> 2 saves.
#  4: posted 40 d ago; 2,000 twice -> 1 save; no longer polled.
#  5: posted 10 min ago; registered, never checked.
# Channel 8:
#  1: posted 2 h ago; one check, saved.
#  6: posted 35 d ago; no check row, four rows stored as an old collector did:
#     700, 700, 700, 710 (replies unknown in all) -> 2 consecutive duplicates.
CHANNEL, OTHER_CHANNEL = 7, 8
POSTED = {
    (7, 1): NOW - 50 * M,
    (7, 2): NOW - 5 * H,
    (7, 3): NOW - 3 * D,
    (7, 4): NOW - 40 * D,
    (7, 5): NOW - 10 * M,
    (8, 1): NOW - 2 * H,
    (8, 6): NOW - 35 * D,
}
CHECKS: dict[tuple[int, int], list[tuple[datetime, int, int]]] = {
    (7, 1): [(NOW - 35 * M, 10_000, 0), (NOW - 25 * M, 10_000, 0), (NOW - 15 * M, 10_003, 0),
             (NOW - 5 * M, 10_010, 0)],
    (7, 2): [(NOW - 4 * H, 500, 0), (NOW - 3 * H, 500, 0), (NOW - 2 * H, 500, 0)],
    (7, 3): [(NOW - 3 * D + H, 1_000, 1), (NOW - 2 * D, 1_000, 2), (NOW - 25 * H, 1_005, 2)],
    (7, 4): [(NOW - 39 * D, 2_000, 0), (NOW - 38 * D, 2_000, 0)],
    (8, 1): [(NOW - 90 * M, 50, 0)],
}  # fmt: skip
LEGACY_KEY = PostKey(8, 6)
LEGACY_TIMES = [NOW - 34 * D + i * H for i in range(4)]
LEGACY_VIEWS = [700, 700, 700, 710]
UNCHECKED_KEY = PostKey(7, 5)

TOTAL_POSTS = 7
TOTAL_CHECKS = 4 + 3 + 3 + 2 + 1
TOTAL_SAVES = 2 + 1 + 2 + 1 + 1
SNAPSHOT_ROWS = TOTAL_SAVES + len(LEGACY_TIMES)
STABLE_POSTS = 3  # 7/2, 7/3, 7/4
ACTIVE_POSTS = 5  # under 30 days old: 7/1, 7/2, 7/3, 7/5, 8/1
DUPLICATES = 2


def observation(key: tuple[int, int], at: datetime, views: int, forwards: int) -> Observation:
    return Observation(PostKey(*key), POSTED[key], at, Counters(views, forwards, 0, None))


def build_dataset(engine: Engine) -> None:
    """The posts above, through the real collector, one batch per moment."""
    observations = [
        observation(key, at, views, forwards)
        for key, checks in CHECKS.items()
        for at, views, forwards in checks
    ]
    never_checked = observation(tuple(UNCHECKED_KEY), NOW - 5 * M, 1, 0)  # type: ignore[arg-type]
    source = RecordedSource(
        sorted([*observations, never_checked], key=lambda o: (o.observed_at, o.key))
    )
    collector = Collector(engine, source)
    with engine.begin() as connection:
        repository.register_posts(connection, source.discover(NOW), NOW)
        repository.register_posts(connection, [PostInfo(LEGACY_KEY, POSTED[(8, 6)])], NOW)
        repository.insert_snapshots(
            connection,
            [
                {"channel_id": 8, "msg_id": 6, "snapshot_time": at, "views": views,
                 "forwards": 0, "reactions": 0, "replies": None}
                for at, views in zip(LEGACY_TIMES, LEGACY_VIEWS, strict=True)
            ],
        )  # fmt: skip
    by_moment: dict[datetime, list[Observation]] = defaultdict(list)
    for item in observations:
        by_moment[item.observed_at].append(item)
    for moment in sorted(by_moment):
        collector.check(by_moment[moment])


@contextmanager
def dataset_database(kind: str, folder: Path) -> Iterator[Engine]:
    """A migrated database holding `build_dataset`, shared by a module's read-only tests
    (building it for every test would cost most of their time)."""
    with ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{folder / 'dataset.sqlite3'}"
        else:
            url = stack.enter_context(postgres_schema_url())
        engine = make_engine(url)
        stack.callback(engine.dispose)
        migrate.upgrade(engine)
        build_dataset(engine)
        yield engine


@pytest.fixture(scope="module", params=ENGINES)
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with dataset_database(request.param, tmp_path_factory.mktemp("dataset")) as engine:
        yield engine


def test_collection_stats_are_sums_over_the_check_rows(dataset: Engine) -> None:
    with dataset.connect() as connection:
        stats = analysis.collection_stats(connection, NOW)
        size, _ = analysis.table_bytes(connection, "post_metrics")
    assert stats.total_posts == TOTAL_POSTS
    assert stats.total_checks == TOTAL_CHECKS
    assert stats.total_snapshots_saved == TOTAL_SAVES
    assert stats.efficiency_rate == pytest.approx(100 * 7 / 13)
    assert stats.stable_posts_count == STABLE_POSTS
    assert stats.active_posts_count == ACTIVE_POSTS
    assert stats.bytes_per_snapshot_row == pytest.approx(size / SNAPSHOT_ROWS)
    assert stats.storage_saved_mb == pytest.approx((13 - 7) * size / SNAPSHOT_ROWS / 2**20)
    assert stats.estimates["post_metrics_records"].method == EstimateMethod.EXACT_COUNT
    assert stats.estimates["table_size"].exact


def test_storage_analysis_adds_up(dataset: Engine) -> None:
    """Projected is a row per check plus the rows no check made (the legacy post's four),
    times bytes per row; savings are projected minus current."""
    with dataset.connect() as connection:
        report = analysis.storage_analysis(connection, NOW)
    per_row = report.table_bytes["post_metrics"] / SNAPSHOT_ROWS
    current = report.table_bytes["post_metrics"] + report.table_bytes["post_metrics_checks"]
    assert report.post_metrics_records == SNAPSHOT_ROWS
    assert report.total_checks == TOTAL_CHECKS
    assert report.avg_snapshots_per_post == pytest.approx(SNAPSHOT_ROWS / TOTAL_POSTS)
    assert report.duplicate_snapshots_estimate == DUPLICATES
    assert report.estimates["duplicate_snapshots"].method == EstimateMethod.EXACT_SCAN
    assert report.bytes_per_snapshot_row == pytest.approx(per_row)
    assert report.current_storage_mb == pytest.approx(current / 2**20)
    projected_rows = TOTAL_CHECKS + len(LEGACY_TIMES)
    assert projected_rows == 17
    assert report.projected_storage_without_smart_mb == pytest.approx(
        projected_rows * per_row / 2**20
    )
    savings = projected_rows * per_row - current
    assert report.savings_mb == pytest.approx(savings / 2**20)
    assert report.savings_pct == pytest.approx(100 * savings / (projected_rows * per_row))
    assert all(size > 0 for size in report.table_bytes.values())


def test_an_empty_database_reports_zeros_and_no_ratios(engine: Engine) -> None:
    with engine.connect() as connection:
        stats = analysis.collection_stats(connection, NOW)
        storage = analysis.storage_analysis(connection, NOW)
    assert (stats.total_posts, stats.total_checks, stats.total_snapshots_saved) == (0, 0, 0)
    assert stats.efficiency_rate is None and stats.storage_saved_mb is None
    assert storage.post_metrics_records == 0 and storage.duplicate_snapshots_estimate == 0
    assert storage.projected_storage_without_smart_mb is None and storage.savings_pct is None
    assert storage.avg_snapshots_per_post is None


def test_duplicates_are_estimated_from_a_sample_of_posts_when_there_are_many(
    dataset: Engine,
) -> None:
    """A sample of 7 of 11 rows is 4 of 7 posts: every 2nd msg_id (the even ones: 7/2,
    7/4, 8/6). The share of duplicates there is applied to all rows: 2 of 6, times 11."""
    with dataset.connect() as connection:
        estimate, how = analysis.duplicate_snapshots(
            connection, SNAPSHOT_ROWS, TOTAL_POSTS, sample_rows=7
        )
        exact, exact_how = analysis.duplicate_snapshots(
            connection, SNAPSHOT_ROWS, TOTAL_POSTS, exact=True
        )
    # Sampled rows: 7/2 has 1, 7/4 has 1, 8/6 has 4 -> 6 rows, 2 duplicates.
    assert (estimate, how.method, how.exact) == (
        round(2 / 6 * 11),
        EstimateMethod.POST_SAMPLE,
        False,
    )
    assert (exact, exact_how.method) == (DUPLICATES, EstimateMethod.EXACT_SCAN)


def test_unknown_counters_equal_each_other_but_not_a_number(engine: Engine) -> None:
    key = PostKey(9, 1)
    with engine.begin() as connection:
        repository.register_posts(connection, [PostInfo(key, NOW - D)], NOW)
        rows = [(None, 1), (None, 1), (0, 1), (0, 1), (0, None)]  # views, forwards
        repository.insert_snapshots(
            connection,
            [
                {"channel_id": 9, "msg_id": 1, "snapshot_time": NOW - D + i * H, "views": v,
                 "forwards": f, "reactions": None, "replies": None}
                for i, (v, f) in enumerate(rows)
            ],
        )  # fmt: skip
    with engine.connect() as connection:
        found, _ = analysis.duplicate_snapshots(connection, len(rows), 1)
    assert found == 2  # the 2nd (unknown = unknown) and the 4th


def test_a_post_first_row_is_never_a_duplicate_even_if_it_equals_another_post(
    engine: Engine,
) -> None:
    with engine.begin() as connection:
        infos = [PostInfo(PostKey(9, i), NOW - D) for i in (1, 2)]
        repository.register_posts(connection, infos, NOW)
        repository.insert_snapshots(
            connection,
            [
                {"channel_id": 9, "msg_id": i, "snapshot_time": NOW - H, "views": 5,
                 "forwards": 0, "reactions": 0, "replies": 0}
                for i in (1, 2)
            ],
        )  # fmt: skip
    with engine.connect() as connection:
        assert analysis.duplicate_snapshots(connection, 2, 2)[0] == 0


def test_efficiency_by_age_groups_checked_posts_by_their_age_now(dataset: Engine) -> None:
    with dataset.connect() as connection:
        report = analysis.efficiency_by_age(connection, NOW)
    figures = [
        (r.bracket, r.post_count, r.avg_checks, r.avg_saves, r.efficiency_pct) for r in report
    ]
    assert figures == [
        ("under 1h", 1, 4.0, 2.0, 50.0),  # 7/1; 7/5 was never checked
        ("1h-24h", 2, 2.0, 1.0, 50.0),  # 7/2 (3 checks, 1 save), 8/1 (1, 1)
        ("24h-7d", 1, 3.0, 2.0, pytest.approx(200 / 3)),  # 7/3
        ("7d+", 1, 2.0, 1.0, 50.0),  # 7/4; 8/6 has no check row
    ]
    assert [(r.min_age_hours, r.max_age_hours) for r in report] == [
        (0, 1),
        (1, 24),
        (24, 168),
        (168, None),
    ]


def test_storage_trend_counts_snapshots_and_posts_per_utc_day(dataset: Engine) -> None:
    with dataset.connect() as connection:
        trend = analysis.storage_trend(connection, NOW, 7)
    figures = {d.day: (d.snapshots_saved, d.unique_posts, d.avg_per_post) for d in trend}
    assert list(figures) == [date(2026, 3, day) for day in range(4, 11)]
    # 7/3 saved on 7 March 13:00 and 8 March 12:00; today: 7/1 twice, 7/2 and 8/1.
    assert figures[date(2026, 3, 7)] == (1, 1, 1.0)
    assert figures[date(2026, 3, 8)] == (1, 1, 1.0)
    assert figures[date(2026, 3, 10)] == (4, 3, pytest.approx(4 / 3))
    assert figures[date(2026, 3, 9)] == (0, 0, None)


def test_storage_trend_refuses_days_out_of_range(engine: Engine) -> None:
    with engine.connect() as connection, pytest.raises(ValueError, match="days must be"):
        analysis.storage_trend(connection, NOW, 0)


def test_the_live_view_is_the_last_check_not_the_last_snapshot(dataset: Engine) -> None:
    with dataset.connect() as connection:
        live = analysis.post_live(connection, PostKey(7, 1), NOW)
    # The last stored snapshot says 10,010 too, so look at post 3: stored 1,000, saw 1,005.
    assert (live.views, live.forwards, live.reactions, live.replies) == (10_010, 0, 0, None)
    assert live.last_checked_at == NOW - 5 * M and live.seconds_since_last_check == 300
    assert (live.tier, live.next_due_at, live.active, live.stable) == (
        "fresh",
        NOW + 5 * M,
        True,
        False,
    )
    with dataset.connect() as connection:
        third = analysis.post_live(connection, PostKey(7, 3), NOW)
    assert (third.views, third.check_count, third.save_count) == (1_005, 3, 2)
    assert third.stable_since == NOW - 25 * H and third.last_changed_at == NOW - 25 * H
    assert (third.tier, third.next_due_at) == ("daily", NOW)


def test_a_post_past_the_last_tier_is_inactive_and_never_due(dataset: Engine) -> None:
    with dataset.connect() as connection:
        old = analysis.post_live(connection, PostKey(7, 4), NOW)
        fresh = analysis.post_live(connection, UNCHECKED_KEY, NOW)
    assert (old.tier, old.next_due_at, old.active, old.stable) == (None, None, False, True)
    assert (fresh.views, fresh.last_checked_at, fresh.check_count) == (None, None, 0)
    assert (fresh.tier, fresh.next_due_at, fresh.active) == ("fresh", NOW, True)


def test_unknown_channels_and_posts_are_named(dataset: Engine) -> None:
    with dataset.connect() as connection:
        with pytest.raises(NotFoundError, match=r"^channel 99 not found$"):
            analysis.post_live(connection, PostKey(99, 1), NOW)
        with pytest.raises(NotFoundError, match=r"^channel 7 has no post 42$"):
            analysis.post_live(connection, PostKey(7, 42), NOW)
        with pytest.raises(NotFoundError, match=r"^channel 99 not found$"):
            analysis.channel_posts(connection, 99, NOW, limit=5)


def test_history_gives_each_step_its_error_band(dataset: Engine) -> None:
    """7/3: 1,000 stored at 1 h of age held until 24 h (the 1h-24h bracket: 1% or 10
    views, so less than 10 views off); 1,000 with 2 forwards stored at 24 h held until
    the last check at 47 h (24h-7d: 2% or 20 views, so less than 20)."""
    with dataset.connect() as connection:
        history = analysis.post_history(connection, PostKey(7, 3), NOW, limit=100)
    assert (history.rule, history.profile, history.value_at_start) == ("step", "default", None)
    assert history.start == POSTED[(7, 3)] and history.end == NOW
    steps = [
        (p.snapshot_time, p.views, p.forwards, p.holds_until, p.bracket, p.views_band)
        for p in history.snapshots
    ]
    assert steps == [
        (NOW - 3 * D + H, 1_000, 1, NOW - 2 * D, "1h-24h", 10.0),
        (NOW - 2 * D, 1_000, 2, NOW - 25 * H, "24h-7d", 20.0),
    ]
    first = history.snapshots[0]
    assert (first.views_relative, first.views_absolute) == (0.01, 10)
    assert history.next_start is None


def test_history_in_a_range_starts_with_the_value_in_force(dataset: Engine) -> None:
    with dataset.connect() as connection:
        history = analysis.post_history(
            connection, PostKey(7, 3), NOW, start=NOW - 30 * H, end=NOW, limit=100
        )
    assert history.snapshots == []
    assert history.value_at_start is not None
    assert (history.value_at_start.snapshot_time, history.value_at_start.forwards) == (
        NOW - 2 * D,
        2,
    )


def test_history_is_cut_at_the_limit_and_says_where_the_rest_starts(dataset: Engine) -> None:
    with dataset.connect() as connection:
        history = analysis.post_history(connection, LEGACY_KEY, NOW, limit=2)
    assert [p.views for p in history.snapshots] == LEGACY_VIEWS[:2]
    assert [p.holds_until for p in history.snapshots] == LEGACY_TIMES[1:3]
    assert history.next_start == LEGACY_TIMES[2]


def test_a_step_spanning_brackets_takes_the_widest_band() -> None:
    brackets = DEFAULT_PROFILE.brackets
    assert analysis.widest_bracket(DEFAULT_PROFILE, 10_000, 30 * M, 2 * H) == brackets[1]
    assert analysis.widest_bracket(DEFAULT_PROFILE, 10_000, 30 * M, 59 * M) == brackets[0]
    assert analysis.widest_bracket(DEFAULT_PROFILE, 10_000, 2 * D, 30 * D) == brackets[3]


def test_channel_posts_come_newest_first_a_page_at_a_time(dataset: Engine) -> None:
    pages = []
    before = None
    with dataset.connect() as connection:
        while True:
            page = analysis.channel_posts(connection, 7, NOW, limit=2, before_msg_id=before)
            pages.append([post.msg_id for post in page.posts])
            before = page.next_before_msg_id
            if before is None:
                break
    assert pages == [[5, 4], [3, 2], [1]]


def test_stats_and_the_live_view_agree_on_which_posts_are_active_and_stable(
    dataset: Engine,
) -> None:
    with dataset.connect() as connection:
        stats = analysis.collection_stats(connection, NOW)
        views = [analysis.post_live(connection, PostKey(*key), NOW) for key in POSTED]
    assert sum(view.active for view in views) == stats.active_posts_count == ACTIVE_POSTS
    assert sum(view.stable for view in views) == stats.stable_posts_count == STABLE_POSTS


def test_adjacent_tiers_merge_into_one_polled_range() -> None:
    assert analysis.polled_age_ranges(DEFAULT_TIERS) == [(timedelta(0), 30 * D)]
    gap = (Tier("a", timedelta(0), H, M), Tier("b", 2 * H, D, H))
    assert analysis.polled_age_ranges(gap) == [(timedelta(0), H), (2 * H, D)]


@given(age_minutes=st.integers(min_value=-60, max_value=60 * 24 * 40))
def test_a_post_is_in_a_polled_range_exactly_when_it_has_a_tier(age_minutes: int) -> None:
    age = age_minutes * M
    in_range = any(low <= age < high for low, high in analysis.polled_age_ranges(DEFAULT_TIERS))
    assert in_range == (tier_for_age(age) is not None)


def test_without_dbstat_sqlite_pages_are_shared_out_by_rows(tmp_path: Path) -> None:
    """The fallback for SQLite builds without dbstat: the pages in use, split by rows."""
    with dataset_database("sqlite", tmp_path) as engine, engine.connect() as connection:
        shares = {
            name: analysis.sqlite_pages_by_rows(connection, name)
            for name in ("channels", "posts", "post_metrics", "post_metrics_checks")
        }
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
    in_use = (pages - free) * page_size
    assert sum(size for size, _ in shares.values()) == pytest.approx(in_use, abs=4)
    rows = 2 + TOTAL_POSTS + SNAPSHOT_ROWS + 5  # channels, posts, snapshots, check rows
    assert shares["post_metrics"][0] == round(in_use * SNAPSHOT_ROWS / rows)
    assert shares["post_metrics"][1].method == EstimateMethod.SQLITE_PAGES_BY_ROWS
    assert not shares["post_metrics"][1].exact
