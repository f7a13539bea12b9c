"""Benchmark: the HTTP API on a big PostgreSQL database, under concurrent load.

Seeds a schema of its own (default `bench_api`) in the shape of issue 5's target,
100,000 posts and 7,000,000 snapshot rows at --scale 1 (70 rows per post, one in four a
repeat of the row before, one check row per post), with SQL generate_series: foreign keys
are not checked row by row and the primary key is built after the load. A schema seeded
at the same scale is reused unless --reseed is given.

Then it measures, all on this machine:

1. the owner figures in process (no HTTP): milliseconds per call of
   analysis.collection_stats and analysis.storage_analysis (the <100 ms goal);
2. `smart-retention serve` started on 127.0.0.1 (uvicorn, one process), driven over
   loopback by a small asyncio HTTP/1.1 client with keep-alive connections: requests per
   second and p50/p99 latency for the metrics endpoint (random posts), the stats and the
   storage endpoints, at each --concurrency, once per --cache-seconds setting of the
   owner figure cache (0: every request computes its figures). Every phase is bounded by
   --requests and --max-seconds, and the server is stopped after each setting.

Run: .venv/bin/python bench/api.py [--scale 0.1] [--concurrency 1 16] [--requests 2000]
"""

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from smart_retention import analysis
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.storage.totals import reset_totals

DEFAULT_URL = os.environ.get(
    "SMART_RETENTION_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
FULL_POSTS = 100_000
ROWS_PER_POST = 70
CHANNELS = 20
# Posts were published over the last 60 days, so some are in each polling tier.
SPREAD_DAYS = 60
# Checks per stored row: a 10-minute poll stores about one check in twenty.
CHECKS_PER_SAVE = 20
OWNER_TOKEN = "bench-owner-token-6c1f0e9a7d2b"
SERVER_START_SECONDS = 60
IN_PROCESS_CALLS = 50
CLI = Path(sys.executable).parent / "smart-retention"


@dataclass
class LoadResult:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> dict[str, float | int | str]:
        ordered = sorted(self.latencies_ms)
        return {
            "endpoint": self.name,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.requests / self.seconds, 1),
            "p50_ms": round(_percentile(ordered, 50), 2),
            "p99_ms": round(_percentile(ordered, 99), 2),
        }


def schema_url(base: str, schema: str) -> str:
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def seed(base_url: str, schema: str, posts: int, reseed: bool) -> tuple[str, datetime]:
    """Create and fill the schema unless it already holds this scale; its URL and `now`."""
    admin = create_engine(base_url)
    with admin.begin() as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        ).scalar()
        if exists and reseed:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            exists = None
        if not exists:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = schema_url(base_url, schema)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            has_tables = connection.execute(text("SELECT to_regclass('bench_seed')")).scalar()
            if has_tables:
                found = connection.execute(text("SELECT posts, now FROM bench_seed")).one()
                if found.posts == posts:
                    print(f"reusing schema {schema}: {posts:,} posts", file=sys.stderr)
                    return url, found.now
        if has_tables:
            raise SystemExit(f"schema {schema} holds another scale; pass --reseed")
        now = datetime.now(UTC).replace(microsecond=0)
        _fill(engine, posts, now)
    finally:
        engine.dispose()
    return url, now


def _fill(engine: Engine, posts: int, now: datetime) -> None:
    started = time.perf_counter()
    migrate.upgrade(engine)
    params = {
        "posts": posts,
        "channels": CHANNELS,
        "rows": ROWS_PER_POST,
        "now": now,
        "spread": SPREAD_DAYS * 86_400,
        "checks_per_save": CHECKS_PER_SAVE,
    }
    statements = [
        # Foreign keys are triggers; replica mode skips them for the bulk load.
        "SET session_replication_role = replica",
        "ALTER TABLE post_metrics DROP CONSTRAINT pk_post_metrics",
        """INSERT INTO channels (channel_id, username, title, created_at)
           SELECT c, 'bench' || c, 'bench channel ' || c, :now
           FROM generate_series(1, :channels) AS c""",
        """INSERT INTO posts (channel_id, msg_id, posted_at)
           SELECT 1 + p % :channels, p,
                  :now - make_interval(secs => (:posts - p + 1) * CAST(:spread AS float8) / :posts)
           FROM generate_series(1, :posts) AS p""",
        # Rows spread evenly over each post's life; every 4th repeats the one before.
        """INSERT INTO post_metrics
               (channel_id, msg_id, snapshot_time, views, forwards, reactions, replies)
           SELECT p.channel_id, p.msg_id,
                  p.posted_at + (:now - p.posted_at) * i / (:rows + 1),
                  (i - (i % 4 = 0)::int) * 10 + p.msg_id % 7,
                  (i - (i % 4 = 0)::int) / 20, (i - (i % 4 = 0)::int) / 10, NULL
           FROM posts AS p CROSS JOIN generate_series(1, :rows) AS i""",
        "ALTER TABLE post_metrics ADD CONSTRAINT pk_post_metrics "
        "PRIMARY KEY (channel_id, msg_id, snapshot_time)",
        """INSERT INTO post_metrics_checks
               (channel_id, msg_id, last_checked_at, last_changed_at, last_saved_at,
                check_count, save_count, checks_since_save, stable_since, post_age_hours,
                last_views, last_forwards, last_reactions, last_replies, policy_state)
           SELECT p.channel_id, p.msg_id,
                  :now - (p.msg_id % 600) * interval '1 second',
                  :now - (p.msg_id % 600) * interval '1 second',
                  p.posted_at + (:now - p.posted_at) * :rows / (:rows + 1),
                  :rows * :checks_per_save, :rows, p.msg_id % 50,
                  CASE WHEN p.msg_id % 3 = 0 THEN :now - (p.msg_id % 600) * interval '1 second'
                  END,
                  extract(epoch FROM :now - p.posted_at) / 3600,
                  :rows * 10 + p.msg_id % 7, :rows / 20, :rows / 10, NULL, NULL
           FROM posts AS p""",
        "CREATE TABLE bench_seed (posts integer NOT NULL, now timestamptz NOT NULL)",
        "INSERT INTO bench_seed VALUES (:posts, :now)",
    ]
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), params)
        # Replica mode skipped the triggers that keep the totals row too: recount it.
        connection.execute(text("SET session_replication_role = origin"))
        reset_totals(connection)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(
            text("VACUUM ANALYZE channels, posts, post_metrics, post_metrics_checks")
        )
    print(
        f"seeded {posts:,} posts, {posts * ROWS_PER_POST:,} rows "
        f"in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )


def in_process(url: str, now: datetime) -> dict[str, dict[str, float]]:
    """Milliseconds per call of the owner figures, without HTTP."""
    engine = make_engine(url)
    results = {}
    try:
        for name, report in (
            ("collection_stats", analysis.collection_stats),
            ("storage_analysis", analysis.storage_analysis),
        ):
            timings = []
            with engine.connect() as connection:
                report(connection, now)  # warm the caches
                for _ in range(IN_PROCESS_CALLS):
                    started = time.perf_counter()
                    report(connection, now)
                    timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            results[name] = {
                "calls": IN_PROCESS_CALLS,
                "p50_ms": round(_percentile(timings, 50), 2),
                "p99_ms": round(_percentile(timings, 99), 2),
                "max_ms": round(timings[-1], 2),
            }
    finally:
        engine.dispose()
    return results


def start_server(url: str, port: int, cache_s: float) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SMART_RETENTION_OWNER_TOKENS": OWNER_TOKEN,
        "SMART_RETENTION_LOG_LEVEL": "WARNING",
        "SMART_RETENTION_OWNER_FIGURES_MAX_AGE_S": str(cache_s),
    }
    server = subprocess.Popen(
        [str(CLI), "serve", "--host", "127.0.0.1", "--port", str(port), "--db", url],
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        try:
            status, _ = asyncio.run(_get_once(port, "/openapi.json"))
            if status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise SystemExit(f"the server did not answer on port {port} within {SERVER_START_SECONDS} s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def _get_once(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _request(reader, writer, path, {})
    finally:
        writer.close()


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, headers: dict
) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def drive(
    port: int, name: str, paths: list[str], concurrency: int, total: int, max_seconds: float
) -> LoadResult:
    """`total` requests from `concurrency` keep-alive connections, or until max_seconds."""
    headers = {"Authorization": f"Bearer {OWNER_TOKEN}"}
    latencies: list[float] = []
    errors = 0
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal issued, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < total and time.perf_counter() < deadline:
                path = paths[issued % len(paths)]
                issued += 1
                sent = time.perf_counter()
                status, _ = await _request(reader, writer, path, headers)
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(
        name, concurrency, len(latencies), errors, time.perf_counter() - started, latencies
    )


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100,000 posts, 7M rows")
    parser.add_argument("--db", default=DEFAULT_URL, help="PostgreSQL URL (a schema is added)")
    parser.add_argument("--schema", default="bench_api")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint and level")
    parser.add_argument("--max-seconds", type=float, default=60, help="per endpoint and level")
    parser.add_argument(
        "--cache-seconds",
        type=float,
        nargs="+",
        default=[0, 10],
        help="owner figure cache settings to serve with (0: every request computes)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    posts = max(1, round(FULL_POSTS * args.scale))
    url, now = seed(args.db, args.schema, posts, args.reseed)
    load_before = os.getloadavg()[0]
    figures = in_process(url, now)
    rng = random.Random(5)
    metric_paths = [
        f"/channels/{1 + m % CHANNELS}/posts/{m}/metrics"
        for m in (rng.randint(1, posts) for _ in range(1000))
    ]
    endpoints = {
        "metrics": metric_paths,
        "stats": ["/owner/database/smart-collection/stats"],
        "storage": ["/owner/database/storage-analysis"],
    }
    loads = []
    for index, cache_s in enumerate(args.cache_seconds):
        server = start_server(url, args.port, cache_s)
        try:
            for concurrency in args.concurrency:
                for name, paths in endpoints.items():
                    if name == "metrics" and index > 0:
                        continue  # the cache holds owner figures only
                    # A few requests first, so connections and caches are warm.
                    asyncio.run(drive(args.port, name, paths, 4, 20, 10))
                    result = asyncio.run(
                        drive(args.port, name, paths, concurrency, args.requests, args.max_seconds)
                    )
                    row = {**result.row(), "cache_s": cache_s}
                    loads.append(row)
                    print(json.dumps(row), file=sys.stderr)
        finally:
            stop_server(server)

    # Other work on the machine slows every figure; the load average says how busy it was.
    load = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    report = {
        "load_average_1min": load,
        "posts": posts,
        "post_metrics_rows": posts * ROWS_PER_POST,
        "in_process": figures,
        "http": loads,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"\n{posts:,} posts, {posts * ROWS_PER_POST:,} post_metrics rows; "
        f"load average {load['before']} before, {load['after']} after\n"
    )
    print("| figure, in process | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, row in figures.items():
        print(f"| {name} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    print("\n| endpoint | cache s | concurrency | requests | errors | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in loads:
        print(
            f"| {row['endpoint']} | {row['cache_s']:g} | {row['concurrency']} | {row['requests']} "
            f"| {row['errors']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} |"
        )


if __name__ == "__main__":
    main()
