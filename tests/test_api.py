"""The HTTP API on the data of test_analysis.py, on SQLite and PostgreSQL.

Every endpoint is checked for exact values, for the whole auth matrix (no header, a
malformed one, a wrong token, a read token, an owner token), and for its 404 and 422
answers. The app runs in process (Starlette's test client) with a fixed clock.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlalchemy import Engine
from typer.testing import CliRunner

from conftest import ENGINES
from smart_retention import analysis
from smart_retention.api import create_app, metrics
from smart_retention.api.cache import FigureCache
from smart_retention.cli import app as cli_app
from smart_retention.config import Settings
from test_analysis import (
    ACTIVE_POSTS,
    DUPLICATES,
    NOW,
    SNAPSHOT_ROWS,
    STABLE_POSTS,
    TOTAL_CHECKS,
    TOTAL_POSTS,
    TOTAL_SAVES,
    dataset_database,
)

OWNER_TOKEN = "owner-token-4f9c2a7e1b3d5f60"
SECOND_OWNER_TOKEN = "owner-token-second-8a1c3e5g7i"
READ_TOKEN = "read-token-0c8e4a2f6b1d9e37"
WRONG_TOKEN = "read-token-0c8e4a2f6b1d9e38"  # one character off

CLI = Path(sys.executable).parent / "smart-retention"
SERVE_START_SECONDS = 30

OWNER_ENDPOINTS = [
    "/owner/database/smart-collection/stats",
    "/owner/database/storage-analysis",
    "/owner/database/efficiency-by-age",
    "/owner/database/storage-trend?days=7",
]
READ_ENDPOINTS = [
    "/channels/7/posts/1/metrics",
    "/channels/7/posts/3/history",
    "/channels/7/posts?limit=2",
]
AUTH_CASES = {
    "none": (None, 401, 401),
    "not bearer": ("Basic b3duZXI6c2VjcmV0", 401, 401),
    "bearer without token": ("Bearer ", 401, 401),
    "wrong token": (f"Bearer {WRONG_TOKEN}", 401, 401),
    "read token": (f"Bearer {READ_TOKEN}", 403, 200),
    "owner token": (f"Bearer {OWNER_TOKEN}", 200, 200),
    "second owner token": (f"Bearer {SECOND_OWNER_TOKEN}", 200, 200),
}
OWNER = {"Authorization": f"Bearer {OWNER_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}


def settings_for(engine: Engine) -> Settings:
    return Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        owner_tokens=[OWNER_TOKEN, SECOND_OWNER_TOKEN],
        read_tokens=[READ_TOKEN],
    )


@pytest.fixture(scope="module", params=ENGINES)
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The data of test_analysis.py, built once per engine for this module's reads."""
    with dataset_database(request.param, tmp_path_factory.mktemp("api")) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(dataset: Engine) -> Iterator[TestClient]:
    app = create_app(settings_for(dataset), engine=dataset, clock=lambda: NOW)
    with TestClient(app) as test_client:
        yield test_client


def at(moment: datetime) -> str:
    """A timestamp as the API writes it."""
    return moment.isoformat().replace("+00:00", "Z")


def test_stats_endpoint_gives_the_collection_figures(client: TestClient) -> None:
    body = client.get(OWNER_ENDPOINTS[0], headers=OWNER).json()
    assert body["as_of"] == at(NOW)
    assert {key: body[key] for key in ("total_posts", "total_checks", "total_snapshots_saved")} == {
        "total_posts": TOTAL_POSTS,
        "total_checks": TOTAL_CHECKS,
        "total_snapshots_saved": TOTAL_SAVES,
    }
    assert body["efficiency_rate"] == pytest.approx(100 * TOTAL_SAVES / TOTAL_CHECKS)
    assert (body["stable_posts_count"], body["active_posts_count"]) == (STABLE_POSTS, ACTIVE_POSTS)
    per_row = body["bytes_per_snapshot_row"]
    assert body["storage_saved_mb"] == pytest.approx((TOTAL_CHECKS - TOTAL_SAVES) * per_row / 2**20)
    assert body["estimates"]["post_metrics_records"] == {
        "method": "exact_count",
        "exact": True,
        "detail": "count(*) over post_metrics",
    }
    assert body["estimates"]["table_size"]["method"] in ("pg_total_relation_size", "sqlite_dbstat")


def test_storage_analysis_endpoint_matches_the_analysis(
    client: TestClient, dataset: Engine
) -> None:
    body = client.get(OWNER_ENDPOINTS[1], headers=OWNER).json()
    with dataset.connect() as connection:
        expected = analysis.storage_analysis(connection, NOW)
    assert body["post_metrics_records"] == SNAPSHOT_ROWS
    assert body["duplicate_snapshots_estimate"] == DUPLICATES
    assert body["avg_snapshots_per_post"] == pytest.approx(SNAPSHOT_ROWS / TOTAL_POSTS)
    assert body["table_bytes"] == expected.table_bytes
    for key in ("current_storage_mb", "projected_storage_without_smart_mb", "savings_mb"):
        assert body[key] == pytest.approx(getattr(expected, key))
    assert body["estimates"]["duplicate_snapshots"]["method"] == "exact_scan"


def test_exact_counts_can_be_asked_for(client: TestClient) -> None:
    body = client.get(OWNER_ENDPOINTS[1] + "?exact=true", headers=OWNER).json()
    assert body["post_metrics_records"] == SNAPSHOT_ROWS
    assert all(estimate["exact"] for estimate in body["estimates"].values())


def test_efficiency_by_age_endpoint(client: TestClient) -> None:
    body = client.get(OWNER_ENDPOINTS[2], headers=OWNER).json()
    rows = [
        (b["bracket"], b["post_count"], b["avg_checks"], b["avg_saves"], b["efficiency_pct"])
        for b in body["brackets"]
    ]
    assert rows == [
        ("under 1h", 1, 4.0, 2.0, 50.0),
        ("1h-24h", 2, 2.0, 1.0, 50.0),
        ("24h-7d", 1, 3.0, 2.0, pytest.approx(200 / 3)),
        ("7d+", 1, 2.0, 1.0, 50.0),
    ]


def test_storage_trend_endpoint(client: TestClient) -> None:
    body = client.get("/owner/database/storage-trend?days=3", headers=OWNER).json()
    assert body == {
        "as_of": at(NOW),
        "days": [
            {"day": "2026-03-08", "snapshots_saved": 1, "unique_posts": 1, "avg_per_post": 1.0},
            {"day": "2026-03-09", "snapshots_saved": 0, "unique_posts": 0, "avg_per_post": None},
            {
                "day": "2026-03-10",
                "snapshots_saved": 4,
                "unique_posts": 3,
                "avg_per_post": pytest.approx(4 / 3),
            },
        ],
    }


def test_metrics_endpoint_gives_the_last_observed_values_and_the_schedule(
    client: TestClient,
) -> None:
    body = client.get("/channels/7/posts/3/metrics", headers=READER).json()
    assert body == {
        "channel_id": 7,
        "msg_id": 3,
        "posted_at": "2026-03-07T12:00:00Z",
        "deleted_at": None,
        "views": 1_005,  # the last check; the last stored snapshot says 1,000
        "forwards": 2,
        "reactions": 0,
        "replies": None,
        "last_checked_at": "2026-03-09T11:00:00Z",
        "last_changed_at": "2026-03-09T11:00:00Z",
        "seconds_since_last_check": 25 * 3600.0,
        "check_count": 3,
        "save_count": 2,
        "stable": True,
        "stable_since": "2026-03-09T11:00:00Z",
        "active": True,
        "age_hours": 72.0,
        "tier": "daily",
        "next_due_at": "2026-03-10T12:00:00Z",
    }


def test_history_endpoint_gives_snapshots_and_their_error_band(client: TestClient) -> None:
    body = client.get("/channels/7/posts/3/history", headers=READER).json()
    assert (body["rule"], body["profile"], body["value_at_start"], body["next_start"]) == (
        "step",
        "default",
        None,
        None,
    )
    assert body["snapshots"] == [
        {
            "snapshot_time": "2026-03-07T13:00:00Z",
            "views": 1_000,
            "forwards": 1,
            "reactions": 0,
            "replies": None,
            "holds_until": "2026-03-08T12:00:00Z",
            "bracket": "1h-24h",
            "views_relative": 0.01,
            "views_absolute": 10,
            "views_band": 10.0,
        },
        {
            "snapshot_time": "2026-03-08T12:00:00Z",
            "views": 1_000,
            "forwards": 2,
            "reactions": 0,
            "replies": None,
            "holds_until": "2026-03-09T11:00:00Z",
            "bracket": "24h-7d",
            "views_relative": 0.02,
            "views_absolute": 20,
            "views_band": 20.0,
        },
    ]


def test_history_endpoint_takes_a_range(client: TestClient) -> None:
    query = "?from=2026-03-08T00:00:00%2B01:00&to=2026-03-08T12:00:00Z"
    body = client.get(f"/channels/7/posts/3/history{query}", headers=READER).json()
    assert (body["start"], body["end"]) == ("2026-03-07T23:00:00Z", "2026-03-08T12:00:00Z")
    assert [p["snapshot_time"] for p in body["snapshots"]] == ["2026-03-08T12:00:00Z"]
    assert body["value_at_start"]["snapshot_time"] == "2026-03-07T13:00:00Z"


def test_channel_posts_are_paged_by_cursor(client: TestClient) -> None:
    pages, cursor = [], None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        body = client.get(f"/channels/7/posts?limit=2{suffix}", headers=READER).json()
        pages.append([(p["msg_id"], p["views"]) for p in body["posts"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [[(5, None), (4, 2_000)], [(3, 1_005), (2, 500)], [(1, 10_010)]]


@pytest.mark.parametrize("case", AUTH_CASES)
def test_auth_matrix(client: TestClient, case: str) -> None:
    """Owner endpoints want an owner token (a read token is 403); read endpoints any."""
    header, owner_status, read_status = AUTH_CASES[case]
    headers = {"Authorization": header} if header is not None else {}
    answers = {
        path: client.get(path, headers=headers).status_code
        for path in OWNER_ENDPOINTS + READ_ENDPOINTS
    }
    expected = {path: owner_status for path in OWNER_ENDPOINTS} | {
        path: read_status for path in READ_ENDPOINTS
    }
    assert answers == expected
    if owner_status == 401:
        response = client.get(OWNER_ENDPOINTS[0], headers=headers)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "detail" in response.json()


def test_a_wrong_token_is_told_apart_from_a_missing_one(client: TestClient) -> None:
    missing = client.get(OWNER_ENDPOINTS[0])
    wrong = client.get(OWNER_ENDPOINTS[0], headers={"Authorization": f"Bearer {WRONG_TOKEN}"})
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert WRONG_TOKEN not in wrong.text


def test_tokens_never_reach_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (OWNER_TOKEN, READ_TOKEN, WRONG_TOKEN):
        for path in OWNER_ENDPOINTS + READ_ENDPOINTS:
            client.get(path, headers={"Authorization": f"Bearer {token}"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not any(token in logged for token in (OWNER_TOKEN, READ_TOKEN, WRONG_TOKEN))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/channels/99/posts/1/metrics", "channel 99 not found"),
        ("/channels/7/posts/42/metrics", "channel 7 has no post 42"),
        ("/channels/99/posts/1/history", "channel 99 not found"),
        ("/channels/7/posts/42/history", "channel 7 has no post 42"),
        ("/channels/99/posts", "channel 99 not found"),
    ],
)
def test_unknown_channels_and_posts_are_404_with_a_message(
    client: TestClient, path: str, message: str
) -> None:
    response = client.get(path, headers=READER)
    assert (response.status_code, response.json()) == (404, {"detail": message})


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/channels/7/posts?limit=0", "limit"),
        ("/channels/7/posts?limit=501", "limit"),
        ("/channels/7/posts?cursor=not-a-cursor", "cursor"),
        ("/channels/7/posts?cursor=-1", "cursor"),
        ("/channels/7/posts?limt=5", "limt"),  # misspelt, not silently ignored
        ("/channels/0/posts", "channel_id"),
        ("/channels/seven/posts", "channel_id"),
        ("/channels/7/posts/1/history?from=2026-03-08T00:00:00", "from"),  # naive
        ("/channels/7/posts/1/history?from=yesterday", "from"),
        ("/channels/7/posts/1/history?from=2026-03-09T00:00:00Z&to=2026-03-08T00:00:00Z", "from"),
        ("/channels/7/posts/1/history?limit=10001", "limit"),
        ("/owner/database/smart-collection/stats?days=7", "days"),
        ("/owner/database/storage-trend?days=0", "days"),
        ("/owner/database/storage-trend?days=367", "days"),
        ("/owner/database/storage-analysis?exact=maybe", "exact"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    client: TestClient, path: str, parameter: str
) -> None:
    response = client.get(path, headers=OWNER)
    assert response.status_code == 422
    assert [error["loc"][-1] for error in response.json()["detail"]] == [parameter]


def test_moments_beyond_the_utc_range_are_clamped_not_refused(client: TestClient) -> None:
    query = "?from=0001-01-01T00:00:00%2B01:00&to=9999-12-31T23:00:00-05:00"
    body = client.get(f"/channels/7/posts/3/history{query}", headers=READER).json()
    assert (body["start"], body["end"]) == ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z")
    assert len(body["snapshots"]) == 2


def test_a_cursor_past_the_largest_id_starts_at_the_top(client: TestClient) -> None:
    body = client.get("/channels/7/posts?cursor=99999999999999999999", headers=READER).json()
    assert [post["msg_id"] for post in body["posts"]] == [5, 4, 3, 2, 1]


def test_openapi_and_docs_are_published(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/owner/database/smart-collection/stats",
        "/owner/database/storage-analysis",
        "/owner/database/efficiency-by-age",
        "/owner/database/storage-trend",
        "/channels/{channel_id}/posts/{msg_id}/metrics",
        "/channels/{channel_id}/posts/{msg_id}/history",
        "/channels/{channel_id}/posts",
    }
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_prometheus_metrics_come_from_the_database_and_the_cycles(client: TestClient) -> None:
    metrics.record_cycle("fresh", seconds=0.2, rejected=3, finished_at=NOW)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }
    assert samples[("smart_retention_checks_total", ())] == TOTAL_CHECKS
    assert samples[("smart_retention_snapshots_stored_total", ())] == TOTAL_SAVES
    assert samples[("smart_retention_posts", (("state", "active"),))] == ACTIVE_POSTS
    assert samples[("smart_retention_posts", (("state", "stable"),))] == STABLE_POSTS
    assert samples[("smart_retention_database_up", ())] == 1
    fresh = (("tier", "fresh"),)
    last_cycle = samples[("smart_retention_last_successful_cycle_timestamp_seconds", fresh)]
    assert last_cycle == NOW.timestamp()
    assert samples[("smart_retention_cycle_seconds_count", fresh)] >= 1
    assert samples[("smart_retention_rows_rejected_total", fresh)] >= 3


@pytest.mark.parametrize(
    ("command", "path", "key"),
    [
        ("stats", "/owner/database/smart-collection/stats", None),
        ("storage", "/owner/database/storage-analysis", None),
        ("efficiency", "/owner/database/efficiency-by-age", None),
        ("trend", "/owner/database/storage-trend?days=7", None),
    ],
)
def test_the_command_line_prints_the_same_figures(
    dataset: Engine,
    command: str,
    path: str,
    key: str | None,
) -> None:
    """The CLI and an API on the real clock, asked one after the other, agree."""
    url = dataset.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli_app, [command, "--json", "--db", url])
    assert result.exit_code == 0, result.output
    with TestClient(create_app(settings_for(dataset), engine=dataset)) as live:
        served = live.get(path, headers=OWNER).json()
    printed = json.loads(result.stdout)
    assert printed.pop("as_of") <= served.pop("as_of")  # ISO-8601 UTC: text order is time order
    assert printed == served


def test_the_command_line_prints_tables(dataset: Engine) -> None:
    url = dataset.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli_app, ["stats", "--db", url])
    assert result.exit_code == 0, result.output
    assert "total checks" in result.stdout and f"{TOTAL_CHECKS}" in result.stdout


def test_an_owner_figure_is_reused_until_it_is_too_old() -> None:
    now = [100.0]
    cache = FigureCache(max_age_s=10, clock=lambda: now[0])
    computed = []

    def compute() -> int:
        computed.append(now[0])
        return len(computed)

    assert [cache.get("stats", compute) for _ in range(3)] == [1, 1, 1]
    now[0] = 109.9
    assert cache.get("stats", compute) == 1
    now[0] = 110.0
    assert cache.get("stats", compute) == 2
    assert cache.get("other", compute) == 3
    assert FigureCache(max_age_s=0).get("stats", compute) == 4  # 0: computed every time


def test_requests_arriving_while_a_figure_is_computed_wait_for_it() -> None:
    cache = FigureCache(max_age_s=60)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow() -> str:
        calls.append(1)
        started.set()
        release.wait(5)
        return "figure"

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(cache.get, "stats", slow)
        started.wait(5)
        others = [pool.submit(cache.get, "stats", slow) for _ in range(3)]
        release.set()
        answers = [first.result(5)] + [other.result(5) for other in others]
    assert answers == ["figure"] * 4 and len(calls) == 1


def test_serve_starts_the_api_on_the_given_port(tmp_path: Path) -> None:
    """`smart-retention serve`, as users start it: OpenAPI and the docs page answer, an
    owner endpoint wants its token, and SIGINT stops the server cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SMART_RETENTION_OWNER_TOKENS": OWNER_TOKEN}
    database = f"sqlite:///{tmp_path / 'served.sqlite3'}"
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            [str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port), "--db", database],
            env=env,
            stderr=stderr,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_SECONDS
        while True:
            try:
                schema = httpx2.get(f"{base}/openapi.json", timeout=2)
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                assert server.poll() is None, log.read_text()
                time.sleep(0.2)
        assert schema.status_code == 200 and schema.json()["info"]["title"] == "smart-retention"
        assert httpx2.get(f"{base}/docs", timeout=2).status_code == 200
        assert httpx2.get(f"{base}{OWNER_ENDPOINTS[0]}", timeout=2).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0


def test_tokens_are_read_comma_separated_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMART_RETENTION_OWNER_TOKENS", f" {OWNER_TOKEN}, {SECOND_OWNER_TOKEN},")
    monkeypatch.setenv("SMART_RETENTION_READ_TOKENS", READ_TOKEN)
    settings = Settings()
    assert settings.owner_tokens == [OWNER_TOKEN, SECOND_OWNER_TOKEN]
    assert settings.read_tokens == [READ_TOKEN]


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("changeme", "token 1 is a placeholder"),
        (f"{OWNER_TOKEN},replace-with-a-real-token-0001", "token 2 is a placeholder"),
        ("too-short-for-a-token", "token 1 is 21 characters long"),
        ("a" * 40, "token 1 is one repeated character"),
    ],
)
def test_placeholder_and_weak_tokens_are_refused_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch, tokens: str, message: str
) -> None:
    monkeypatch.setenv("SMART_RETENTION_OWNER_TOKENS", tokens)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert message in str(refused.value)
    assert all(token not in str(refused.value) for token in tokens.split(","))


def test_a_token_cannot_be_both_owner_and_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMART_RETENTION_OWNER_TOKENS", OWNER_TOKEN)
    monkeypatch.setenv("SMART_RETENTION_READ_TOKENS", OWNER_TOKEN)
    with pytest.raises(ValidationError, match="both an owner token and a read token"):
        Settings()
