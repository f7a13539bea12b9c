"""Response bodies of the API, built from the reports in `smart_retention.analysis`.

The command line prints the same models as JSON, so the API and `smart-retention stats`
show one set of figures. MB means 2^20 bytes, as PostgreSQL's pg_size_pretty counts.
"""

from collections.abc import Iterable
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field


class Report(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorMessage(BaseModel):
    detail: str = Field(description="What went wrong, naming the thing and the value.")


class Estimate(Report):
    method: str = Field(
        description="pg_total_relation_size, sqlite_dbstat, sqlite_pages_shared_by_rows, "
        "pg_class_reltuples, exact_count, exact_scan, post_sample or kept_totals"
    )
    exact: bool
    detail: str


class CollectionStats(Report):
    as_of: datetime = Field(description="When the figures were computed.")
    total_posts: int = Field(description="Registered posts, deleted ones included.")
    total_checks: int = Field(description="Checks ever made: sum of check_count.")
    total_snapshots_saved: int = Field(
        description="Snapshots the checks stored: sum of save_count."
    )
    efficiency_rate: float | None = Field(
        description="Percent of checks that stored a snapshot; lower is better. "
        "Null before the first check."
    )
    storage_saved_mb: float | None = Field(
        description="Checks that stored nothing times the bytes of one post_metrics row. "
        "Null while post_metrics is empty."
    )
    stable_posts_count: int = Field(description="Posts whose latest check stored nothing.")
    active_posts_count: int = Field(
        description="Posts not deleted whose age falls in a polling tier."
    )
    bytes_per_snapshot_row: float | None = Field(
        description="post_metrics size (with indexes) over its rows."
    )
    estimates: dict[str, Estimate] = Field(
        description="How table_size and post_metrics_records were made."
    )


class StorageAnalysis(Report):
    as_of: datetime = Field(description="When the figures were computed.")
    current_storage_mb: float = Field(description="post_metrics plus post_metrics_checks.")
    projected_storage_without_smart_mb: float | None = Field(
        description="total_checks rows of post_metrics: every check stored."
    )
    savings_mb: float | None = Field(description="Projected minus current.")
    savings_pct: float | None = Field(description="savings_mb as a percent of projected.")
    post_metrics_records: int
    avg_snapshots_per_post: float | None = Field(description="post_metrics_records / posts.")
    duplicate_snapshots_estimate: int = Field(
        description="Rows equal in every counter to the row before them (a cleanup removes them)."
    )
    total_checks: int
    bytes_per_snapshot_row: float | None
    table_bytes: dict[str, int] = Field(description="Bytes per table, indexes included.")
    estimates: dict[str, Estimate] = Field(
        description="How table_size, post_metrics_records and duplicate_snapshots were made."
    )


class AgeEfficiency(Report):
    bracket: str
    min_age_hours: float
    max_age_hours: float | None
    post_count: int = Field(description="Checked posts of this age now.")
    avg_checks: float | None
    avg_saves: float | None
    efficiency_pct: float | None = Field(description="Saves over checks, in percent.")


class EfficiencyByAge(BaseModel):
    as_of: datetime = Field(description="When the figures were computed.")
    brackets: list[AgeEfficiency]

    @classmethod
    def of(cls, now: datetime, brackets: Iterable[object]) -> "EfficiencyByAge":
        return cls(as_of=now, brackets=[AgeEfficiency.model_validate(b) for b in brackets])


class TrendDay(Report):
    day: date = Field(description="A UTC day.")
    snapshots_saved: int
    unique_posts: int
    avg_per_post: float | None


class StorageTrend(BaseModel):
    as_of: datetime = Field(description="When the figures were computed.")
    days: list[TrendDay]

    @classmethod
    def of(cls, now: datetime, days: Iterable[object]) -> "StorageTrend":
        return cls(as_of=now, days=[TrendDay.model_validate(d) for d in days])


class PostLive(Report):
    channel_id: int
    msg_id: int
    posted_at: datetime
    deleted_at: datetime | None
    views: int | None = Field(description="Last observed; null when never checked or unknown.")
    forwards: int | None
    reactions: int | None
    replies: int | None
    last_checked_at: datetime | None
    last_changed_at: datetime | None
    seconds_since_last_check: float | None
    check_count: int
    save_count: int
    stable: bool = Field(description="The latest check stored nothing (stable_since is set).")
    stable_since: datetime | None
    active: bool = Field(description="Not deleted, and its age falls in a polling tier.")
    age_hours: float
    tier: str | None = Field(description="Polling tier now; null when no longer polled.")
    next_due_at: datetime | None = Field(description="Null when it is never due again.")


class PostPage(BaseModel):
    posts: list[PostLive]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class HistoryPoint(Report):
    snapshot_time: datetime
    views: int | None
    forwards: int | None
    reactions: int | None
    replies: int | None
    holds_until: datetime | None = Field(
        description="The next snapshot, or the latest check for the last one."
    )
    bracket: str = Field(description="The age bracket whose thresholds bound this step.")
    views_relative: float = Field(description="Relative views threshold, e.g. 0.01 = 1%.")
    views_absolute: int = Field(description="Absolute views threshold.")
    views_band: float | None = Field(
        description="Observed views stayed within less than this of `views` while it held."
    )


class PostHistory(Report):
    channel_id: int
    msg_id: int
    rule: str = Field(description="step: a value holds until the next snapshot.")
    profile: str
    start: datetime
    end: datetime
    value_at_start: HistoryPoint | None = Field(description="The snapshot in force at start.")
    snapshots: list[HistoryPoint]
    next_start: datetime | None = Field(
        description="Set when `limit` cut the list: pass as ?from= for the rest."
    )
