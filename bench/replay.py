"""Benchmark: replay of a real recording, with an every-poll collector as the baseline.

Each case runs in a child process of its own, so its peak memory (max RSS) is its own.
Cases, all on a fresh SQLite file:

- baseline: read the recording and insert every row into post_metrics, as a collector
  that stores every poll does (batches of 500, one transaction each);
- as-recorded: every recorded row is one check through smart-retention's policy;
- scheduled: the replay job, the recording played through the schedule
  (with --max-age-days, so posts older than 30 days are polled too).

Run: .venv/bin/python bench/replay.py [--recording PATH] [--max-age-days N]
"""

import argparse
import multiprocessing
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from smart_retention.observation import PostInfo
from smart_retention.replay import ReplayOptions, run_replay
from smart_retention.sources.recording import read_recording
from smart_retention.storage import migrate, repository
from smart_retention.storage.engine import make_engine
from smart_retention.storage.tables import post_metrics

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
DEFAULT_RECORDING = REAL_DATA / "tg-recsyschannel" / "snapshots.csv.gz"
TELEGRAM_COLUMNS = {
    "msg_id": "post_id",
    "posted_at": "post_date_utc",
    "observed_at": "snapshot_utc",
    "reactions": "reactions_total",
}
BASELINE_BATCH_SIZE = 500


def _every_poll_baseline(engine, recording) -> None:
    infos = {o.key: PostInfo(o.key, o.posted_at) for o in recording.observations}
    first = recording.observations[0].observed_at
    with engine.begin() as connection:
        repository.register_posts(connection, list(infos.values()), first)
    rows = recording.observations
    for start in range(0, len(rows), BASELINE_BATCH_SIZE):
        with engine.begin() as connection:
            repository.insert_snapshots(
                connection,
                [
                    {
                        "channel_id": o.key.channel_id,
                        "msg_id": o.key.msg_id,
                        "snapshot_time": o.observed_at,
                        **o.counters._asdict(),
                    }
                    for o in rows[start : start + BASELINE_BATCH_SIZE]
                ],
            )


def _run_case(case: str, recording_path: str, max_age_days: float, db_path: str, out) -> None:
    started = time.perf_counter()
    engine = make_engine(f"sqlite:///{db_path}")
    migrate.upgrade(engine)
    recording = read_recording(recording_path, TELEGRAM_COLUMNS, channel_id=1)
    if case == "baseline":
        _every_poll_baseline(engine, recording)
    else:
        options = ReplayOptions(
            as_recorded=case == "as-recorded",
            max_age=timedelta(days=max_age_days) if case == "scheduled" else None,
        )
        run_replay(engine, recording, options)
    seconds = time.perf_counter() - started
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(post_metrics)).scalar_one()
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.send((seconds, peak_mb, rows, Path(db_path).stat().st_size))


def measure(case: str, recording: Path, max_age_days: float, folder: Path) -> tuple:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=_run_case,
        args=(case, str(recording), max_age_days, str(folder / f"{case}.sqlite3"), sender),
    )
    child.start()
    result = receiver.recv()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recording", type=Path, default=DEFAULT_RECORDING)
    parser.add_argument("--max-age-days", type=float, default=1000)
    args = parser.parse_args()
    print(f"recording: {args.recording}")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for case in ("baseline", "as-recorded", "scheduled"):
            results[case] = measure(case, args.recording, args.max_age_days, Path(folder))
    base_seconds, _, base_rows, base_bytes = results["baseline"]
    print(
        f"{'case':<12} {'seconds':>8} {'peak MB':>8} {'rows':>9} {'db MB':>7} "
        f"{'time/base':>9} {'rows/base':>9} {'bytes/base':>10}"
    )
    for case, (seconds, peak_mb, rows, size) in results.items():
        print(
            f"{case:<12} {seconds:8.1f} {peak_mb:8.0f} {rows:9,d} {size / 2**20:7.1f} "
            f"{seconds / base_seconds:9.2f} {rows / base_rows:9.4f} {size / base_bytes:10.4f}"
        )


if __name__ == "__main__":
    main()
