"""Benchmark: collection throughput of one tier on Celery workers, 1 and 2 processes.

100,000 synthetic posts (20 channels x 5,000), all aged 1 to 7 days: the daily tier. For
each worker count, on a fresh PostgreSQL schema and Redis database:

1. register the posts in this process (discovery is not what is measured);
2. start `celery -A smart_retention.tasks worker --concurrency=N`;
3. run the daily tier at NOW, then measure a second run 6 hours later (the tier's
   interval), when every post is due again and the policy compares with a stored row.

The run's seconds are the task's own (from the tier task's start to the chord's end).

Run: .venv/bin/python bench/celery_tiers.py [--posts-per-channel N] [--workers 1 2]
Needs PostgreSQL (SMART_RETENTION_TEST_POSTGRES_URL) and Redis (SMART_RETENTION_TEST_REDIS_URL).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from smart_retention.config import Settings
from smart_retention.scheduler import register_discovered
from smart_retention.sources.factory import build_source
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine
from smart_retention.tasks import create_app

POSTGRES_URL = os.environ.get(
    "SMART_RETENTION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SMART_RETENTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAILY_INTERVAL = timedelta(hours=6)
CHANNELS = 20
# Published from 6.4 to 1.4 days before NOW: still in the daily tier 6 hours later.
START = NOW - timedelta(days=6.4)
DAYS = 5
RUN_TIMEOUT_S = 1800
REGISTER_BATCH = 5000


def _schema_url(schema: str) -> str:
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def _measure(workers: int, posts_per_channel: int) -> dict[str, float]:
    spec = (
        f"synthetic?channels={CHANNELS}&posts={posts_per_channel}&days={DAYS}"
        f"&start={START.isoformat()}&changed_fraction=0.1"
    )
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _schema_url(schema)
    engine = make_engine(url)
    migrate.upgrade(engine)
    register_discovered(engine, build_source(spec), NOW, REGISTER_BATCH)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_RETENTION_")}
    env.update(
        SMART_RETENTION_DATABASE_URL=url,
        SMART_RETENTION_BROKER_URL=REDIS_URL,
        # Every post is registered already: discovery in the workers announces nothing.
        SMART_RETENTION_SOURCE=f"{spec}&registered_until={NOW.isoformat()}",
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "smart_retention.tasks", "worker",
         "--pool=prefork", f"--concurrency={workers}", "--hostname=bench@local",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    client = create_app(Settings(broker_url=REDIS_URL, result_backend=REDIS_URL))
    try:
        while not client.control.ping(destination=["bench@local"], timeout=0.5):
            time.sleep(0.2)
        entry = client.conf.beat_schedule["smart-collect-daily-posts"]
        figures = {}
        for label, moment in (("first", NOW), ("second", NOW + DAILY_INTERVAL)):
            result = client.send_task(
                entry["task"], kwargs={**entry["kwargs"], "now": moment.isoformat()}
            ).get(timeout=RUN_TIMEOUT_S)
            figures[f"{label}_checks"] = result["checks"]
            figures[f"{label}_saved"] = result["saved"]
            figures[f"{label}_seconds"] = result["seconds"]
            figures[f"{label}_checks_per_s"] = round(result["checks"] / result["seconds"])
        return figures
    finally:
        worker.send_signal(signal.SIGQUIT)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        client.close()
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts-per-channel", type=int, default=5000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"posts: {CHANNELS * args.posts_per_channel:,}, tier: daily, cores: {os.cpu_count()}")
    for workers in args.workers:
        figures = _measure(workers, args.posts_per_channel)
        print(f"worker processes: {workers}: {figures}", flush=True)


if __name__ == "__main__":
    main()
