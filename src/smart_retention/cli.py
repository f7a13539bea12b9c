"""The `smart-retention` command line.

Expected failures (`UserError`) print one line and exit with their code; anything else
is a bug and keeps its traceback.
"""

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from alembic.util.exc import CommandError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from smart_retention.cleanup import DEFAULT_BATCH_SIZE as CLEANUP_BATCH_SIZE
from smart_retention.cleanup import MAX_BATCH_SIZE as CLEANUP_MAX_BATCH_SIZE
from smart_retention.cleanup import (
    CleanupNotConfirmed,
    CleanupReport,
    count_snapshots,
    run_cleanup,
)
from smart_retention.cli_telegram import channels_app, telegram_app
from smart_retention.collector import BracketStats, CollectionStats, Collector
from smart_retention.config import chosen_database_url, load_settings
from smart_retention.demo import ChannelModel, synthetic_recording
from smart_retention.errors import InvalidOption, StrictModeRejection, UserError
from smart_retention.importer import DEFAULT_BATCH_SIZE as IMPORT_BATCH_SIZE
from smart_retention.importer import ImportReport, PostedAt, run_import
from smart_retention.policy import Profile
from smart_retention.replay import (
    ProgressCallback,
    ReplayOptions,
    ReplayReport,
    _bracket_figures,
    _reduction_pct,
    align_to_tick,
    prepare_target,
    run_replay,
)
from smart_retention.sources import synthetic
from smart_retention.sources.recording import (
    parse_column_mapping,
    read_recording,
    read_recording_first_seen,
)
from smart_retention.sources.synthetic import SyntheticSource
from smart_retention.storage import migrate
from smart_retention.storage.engine import check_sqlite_file, display_url, make_engine

app = typer.Typer(
    help="Keep post metrics without drowning in them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
# The Telegram account and channel commands live in cli_telegram.py.
app.add_typer(telegram_app, name="telegram")
app.add_typer(channels_app, name="channels")

# The shell's status for a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT_STATUS = 130
console = Console()
# soft_wrap: an error or rejection stays on one line however narrow the terminal or pipe.
err_console = Console(stderr=True, soft_wrap=True)

DEMO_DATABASE_FILE = "smart-retention-demo.sqlite3"
DEMO_MODEL = ChannelModel()
# The single-channel demo keeps its whole poll log in memory (posts x days x 144 polls).
DEMO_MAX_POSTS = 1_000
# How many rejection messages a report prints; the count is always complete.
REJECTIONS_SHOWN = 20

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL; wins over SMART_RETENTION_DATABASE_URL."),
]


def main() -> None:
    """The console entry point: expected failures outside any one command (a database
    that cannot be reached or parsed, a bad setting, an unknown revision) are one line."""
    try:
        app()
    except (ArgumentError, NoSuchModuleError) as error:
        _fail(f"database URL: {error}")
    except DBAPIError as error:
        _fail(f"database: {str(error.orig).strip().splitlines()[0]}")
    except CommandError as error:
        _fail(f"migration: {error}")
    except UserError as error:
        # Raised outside a command's own _user_errors (an unsupported database URL, a
        # SQLite path that is a folder, when the engine is made).
        _fail(str(error), error.exit_code)
    except ValidationError as error:
        first = error.errors()[0]
        setting = "SMART_RETENTION_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        _fail(f"{setting}: {first['msg']}")


def _fail(message: str, exit_code: int = UserError.exit_code) -> NoReturn:
    err_console.print(f"error: {message}", markup=False, highlight=False)
    raise SystemExit(exit_code)


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log per batch.")] = False,
) -> None:
    level = logging.DEBUG if verbose else getattr(logging, load_settings().log_level.upper())
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # Third-party chatter stays at WARNING whatever our level is.
    for noisy in ("alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Telethon logs every failed connection attempt (some at ERROR); the command's
    # one-line error says it once. -v shows them.
    logging.getLogger("telethon").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def _engine(db: str | None, *, must_exist: bool = False) -> Engine:
    """The engine of --db or the setting. A SQLite path that is a folder is refused; with
    `must_exist`, so is one naming no file (connecting would create an empty database)."""
    url = chosen_database_url(db)
    check_sqlite_file(url, must_exist=must_exist)
    return make_engine(url)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as error:
        err_console.print(f"error: {error}", markup=False, highlight=False)
        raise typer.Exit(error.exit_code) from None


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    db: DbOption = None,
) -> None:
    """Migrate the schema up to REVISION (default: the newest)."""
    engine = _engine(db)
    migrate.upgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target: a revision, base, or a step back written as -- -1.")
    ],
    db: DbOption = None,
) -> None:
    """Migrate the schema down to REVISION ('base' removes every table but Alembic's own)."""
    with _user_errors():
        engine = _engine(db, must_exist=True)
    migrate.downgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine) or 'base'}")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the schema revision of the database."""
    with _user_errors():
        engine = _engine(db, must_exist=True)
    console.print(migrate.current_revision(engine) or "base (no schema)")


@db_app.command("recount-totals")
def db_recount_totals(db: DbOption = None) -> None:
    """Set the kept totals (posts, checks, saves, stable posts) to a count over the tables.

    Triggers keep them; a bulk load that bypassed triggers (PostgreSQL's
    session_replication_role = replica) leaves them stale until this runs."""
    from smart_retention.storage.totals import read_totals, reset_totals

    with _user_errors():
        engine = _engine(db, must_exist=True)
        with engine.begin() as connection:
            before = read_totals(connection)
            after = reset_totals(connection)
    changed = "unchanged" if before == after else f"were {_totals_line(before)}"
    console.print(f"totals: {_totals_line(after)} ({changed})")


def _totals_line(totals: Any) -> str:
    return (
        f"{totals.posts:,} posts, {totals.checks:,} checks, {totals.saves:,} saves, "
        f"{totals.stable_posts:,} stable posts"
    )


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="Recorded CSV, plain or gzipped.")],
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="Map a canonical column to the file's name: canonical=theirs."
        ),
    ] = None,
    channel_id: Annotated[
        int | None, typer.Option("--channel-id", help="Channel id for rows that have none.", min=1)
    ] = None,
    max_age_days: Annotated[
        float | None,
        typer.Option(
            "--max-age-days",
            help="Poll posts up to this age in days, more than 7 (extends the weekly tier).",
            min=0,
            max=36_500,
        ),
    ] = None,
    as_recorded: Annotated[
        bool, typer.Option("--as-recorded", help="Every recorded row is one check; no schedule.")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 at the first rejected row.")
    ] = False,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Delete the recording's channels from the database first."),
    ] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    db: DbOption = None,
) -> None:
    """Replay a recording through the schedule and the retention policy, and report."""
    with _user_errors():
        mapping = parse_column_mapping(column or [])
        recording = read_recording(file, mapping, channel_id)
        if strict and recording.rejections:
            raise StrictModeRejection(f"--strict: {recording.rejections[0]}")
        options = ReplayOptions(
            as_recorded=as_recorded,
            max_age=timedelta(days=max_age_days) if max_age_days is not None else None,
            batch_size=batch_size or load_settings().batch_size,
            replace=replace,
        )
        report = _replay_with_progress(_engine(db), recording, options, quiet=as_json)
        if strict and report.rejected:
            raise StrictModeRejection(f"--strict: {report.rejection_messages[0]}")
    _print_report(report, as_json, title=f"replay of {file.name}")


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the synthetic channel.")] = DEMO_MODEL.seed,
    posts: Annotated[
        int | None,
        typer.Option(
            help="Posts in the channel (its whole poll log is kept in memory; for more, "
            "scale out with --channels).",
            min=1,
            max=DEMO_MAX_POSTS,
            show_default=str(DEMO_MODEL.posts),
        ),
    ] = None,
    days: Annotated[
        int, typer.Option(help="Days of history.", min=1, max=synthetic.MAX_DAYS)
    ] = DEMO_MODEL.days,
    channels: Annotated[
        int | None,
        typer.Option(
            help="Scale out: this many synthetic channels, polled live on the schedule "
            f"(no poll log is kept in memory; at most {synthetic.MAX_TOTAL_POSTS:,} posts "
            "in all).",
            min=1,
            max=synthetic.MAX_CHANNELS,
        ),
    ] = None,
    posts_per_channel: Annotated[
        int | None,
        typer.Option(
            "--posts-per-channel",
            help="Scale out: posts per channel.",
            min=1,
            max=synthetic.MAX_POSTS_PER_CHANNEL,
            show_default=str(DEMO_MODEL.posts),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help=f"Database URL (default: ./{DEMO_DATABASE_FILE}, recreated)."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="With --db: delete the demo's channels there first (else a database that "
            "holds them is refused).",
        ),
    ] = False,
) -> None:
    """Generate a synthetic channel, replay its poll log, and report. Needs nothing.

    With --channels or --posts-per-channel, a synthetic live source of that many posts,
    published over --days, is polled on the schedule instead, for load at any scale.
    """
    scaled = channels is not None or posts_per_channel is not None
    if scaled and posts is not None:
        raise typer.BadParameter(
            "is for the single-channel demo; with --channels give --posts-per-channel",
            param_hint="--posts",
        )
    with _user_errors():
        if scaled:
            channels = channels or 1
            posts_per_channel = posts_per_channel or DEMO_MODEL.posts
            try:
                source = SyntheticSource(
                    channels, posts_per_channel, days, seed=seed, start=DEMO_MODEL.start
                )
            except ValueError as error:
                raise InvalidOption(f"demo: {error}") from None
        # Only once the options are known to be good: the default demo file is recreated.
        db = _recreated_demo_database() if db is None else chosen_database_url(db)
        if scaled:
            report = _scaled_demo_with_progress(_engine(db), source, replace, quiet=as_json)
            title = (
                f"demo: {_count(channels, 'channel')} x {_count(posts_per_channel, 'post')} "
                f"over {_count(days, 'day')}, polled on the schedule"
            )
        else:
            posts = posts or DEMO_MODEL.posts
            recording = synthetic_recording(ChannelModel(seed=seed, posts=posts, days=days))
            report = _replay_with_progress(
                _engine(db), recording, ReplayOptions(replace=replace), quiet=as_json
            )
            title = f"demo: {_count(posts, 'post')} over {_count(days, 'day')}, polled every 10 min"
    _print_report(report, as_json, title=title)
    if not as_json:
        console.print(f"stored in {db}")


def _replay_with_progress(
    engine: Engine, recording: Any, options: ReplayOptions, quiet: bool
) -> ReplayReport:
    migrate.upgrade(engine)
    if quiet or not err_console.is_terminal:
        return run_replay(engine, recording, options)
    with Progress(
        TextColumn("replaying"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=1.0)
        update: Callable[[float], None] = lambda done: bar.update(task, completed=done)  # noqa: E731
        return run_replay(engine, recording, options, progress=update)


def _scaled_demo_with_progress(
    engine: Engine, source: SyntheticSource, replace: bool, quiet: bool
) -> ReplayReport:
    migrate.upgrade(engine)
    prepare_target(engine, source.channel_ids, replace)
    if quiet or not err_console.is_terminal:
        return _run_scaled_demo(engine, source, None)
    with Progress(
        TextColumn("collecting"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("collect", total=1.0)
        update: Callable[[float], None] = lambda done: bar.update(task, completed=done)  # noqa: E731
        return _run_scaled_demo(engine, source, update)


def _recreated_demo_database() -> str:
    """The default demo database's URL, its file (and SQLite's WAL files) removed."""
    for suffix in ("", "-wal", "-shm"):
        Path(DEMO_DATABASE_FILE + suffix).unlink(missing_ok=True)
    return f"sqlite:///{DEMO_DATABASE_FILE}"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def _run_scaled_demo(
    engine: Engine, source: SyntheticSource, progress: ProgressCallback | None
) -> ReplayReport:
    """Poll a synthetic live source on a virtual clock, as the replay job polls a recording.

    The clock ticks at the shortest tier interval from the first publication to the end of
    the source's days; ticks at which nothing can be due are skipped, as in replay.
    """
    started = time.perf_counter()
    collector = Collector(engine, source, batch_size=load_settings().batch_size)
    tick = min(tier.interval for tier in collector.tiers)
    span = (source.end - source.start).total_seconds()
    stats = CollectionStats()
    now = align_to_tick(source.start, tick)
    while now <= source.end:
        stats.merge(collector.run_cycle(now))
        if progress is not None:
            progress(min(1.0, (now - source.start).total_seconds() / span))
        wake_ups = [w for w in (collector.next_due_at(now), source.next_discovery_at()) if w]
        if not wake_ups:
            break
        now = max(now + tick, align_to_tick(min(wake_ups), tick))
    return _scaled_demo_report(source.announced, stats, collector.profile, started)


def _scaled_demo_report(
    posts: int, stats: CollectionStats, profile: Profile, started: float
) -> ReplayReport:
    """The replay report's figures for a live source: every fetched observation is read."""
    overall = BracketStats()
    for bracket_stats in stats.by_bracket.values():
        overall.merge(bracket_stats)
    return ReplayReport(
        posts=posts,
        observations=stats.checks + stats.rejected,
        rejected=stats.rejected,
        checks=stats.checks,
        snapshots_stored=stats.saved,
        naive_rows=stats.checks,
        reduction_pct=_reduction_pct(stats.saved, stats.checks),
        views_error_max=overall.error_max,
        views_error_mean=round(overall.error_mean, 3),
        by_bracket={
            bracket.name: _bracket_figures(stats.by_bracket.get(bracket.name, BracketStats()))
            for bracket in profile.brackets
        },
        seconds=time.perf_counter() - started,
        rejection_messages=[str(r) for r in stats.rejections],
    )


def _print_report(report: ReplayReport, as_json: bool, title: str) -> None:
    for message in report.rejection_messages[:REJECTIONS_SHOWN]:
        err_console.print(f"rejected: {message}", markup=False, highlight=False)
    hidden = len(report.rejection_messages) - REJECTIONS_SHOWN
    if hidden > 0:
        err_console.print(f"rejected: ... and {hidden} more")
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return
    summary = Table(title=title, show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for label, value in (
        ("posts", f"{report.posts:,}"),
        ("observations read", f"{report.observations:,}"),
        ("rows rejected", f"{report.rejected:,}"),
        ("checks made", f"{report.checks:,}"),
        ("snapshots stored", f"{report.snapshots_stored:,}"),
        ("rows an every-check collector stores", f"{report.naive_rows:,}"),
        ("reduction", f"{report.reduction_pct:.2f}%"),
        ("views error, largest", f"{report.views_error_max:,}"),
        ("views error, mean", f"{report.views_error_mean:.2f}"),
        ("seconds", f"{report.seconds:.1f}"),
    ):
        summary.add_row(label, value)
    console.print(summary)
    brackets = Table(title="by post age")
    for heading in ("age", "checks", "stored", "reduction", "error max", "error mean"):
        brackets.add_column(heading, justify="right")
    for name, figures in report.by_bracket.items():
        brackets.add_row(
            name,
            f"{figures['checks']:,}",
            f"{figures['snapshots_stored']:,}",
            f"{figures['reduction_pct']:.2f}%",
            f"{figures['views_error_max']:,}",
            f"{figures['views_error_mean']:.2f}",
        )
    console.print(brackets)


# --- The HTTP API and the owner reports. Imports are local so the other commands do not
# pay for FastAPI at start-up.


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    db: DbOption = None,
) -> None:
    """Serve the HTTP API; OpenAPI at /openapi.json, the docs page at /docs."""
    import uvicorn

    from smart_retention.api import create_app

    settings = load_settings()
    if db is not None:
        settings = settings.model_copy(update={"database_url": db})
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())


ExactOption = Annotated[
    bool, typer.Option("--exact", help="Count post_metrics rows and duplicates exactly.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


@app.command()
def stats(exact: ExactOption = False, as_json: JsonOption = False, db: DbOption = None) -> None:
    """Checks, snapshots saved, efficiency, stable and active posts (as the API's stats)."""
    from smart_retention import analysis
    from smart_retention.api import schemas
    from smart_retention.observation import utc_now

    with _user_errors(), _report_connection(db) as connection:
        report = schemas.CollectionStats.model_validate(
            analysis.collection_stats(connection, utc_now(), exact=exact)
        )
    if as_json:
        _print_json(report)
        return
    _print_figures(
        "smart collection",
        [
            ("total posts", f"{report.total_posts:,}"),
            ("total checks", f"{report.total_checks:,}"),
            ("snapshots saved", f"{report.total_snapshots_saved:,}"),
            ("efficiency rate (lower is better)", _or_dash(report.efficiency_rate, "{:.2f}%")),
            ("storage saved", _or_dash(report.storage_saved_mb, "{:,.2f} MB")),
            ("stable posts", f"{report.stable_posts_count:,}"),
            ("active posts", f"{report.active_posts_count:,}"),
        ],
        report.estimates,
    )


@app.command()
def storage(exact: ExactOption = False, as_json: JsonOption = False, db: DbOption = None) -> None:
    """Storage now, without smart retention, and duplicates left (as the API's analysis)."""
    from smart_retention import analysis
    from smart_retention.api import schemas
    from smart_retention.observation import utc_now

    with _user_errors(), _report_connection(db) as connection:
        report = schemas.StorageAnalysis.model_validate(
            analysis.storage_analysis(connection, utc_now(), exact=exact)
        )
    if as_json:
        _print_json(report)
        return
    _print_figures(
        "storage analysis",
        [
            ("current storage", f"{report.current_storage_mb:,.2f} MB"),
            (
                "without smart retention",
                _or_dash(report.projected_storage_without_smart_mb, "{:,.2f} MB"),
            ),
            ("savings", _or_dash(report.savings_mb, "{:,.2f} MB")),
            ("savings, share of without", _or_dash(report.savings_pct, "{:.2f}%")),
            ("post_metrics rows", f"{report.post_metrics_records:,}"),
            ("snapshots per post", _or_dash(report.avg_snapshots_per_post, "{:,.2f}")),
            ("consecutive duplicates", f"{report.duplicate_snapshots_estimate:,}"),
        ],
        report.estimates,
    )


@app.command()
def efficiency(as_json: JsonOption = False, db: DbOption = None) -> None:
    """Checks and saves per post, by post age (as the API's efficiency-by-age)."""
    from smart_retention import analysis
    from smart_retention.api import schemas
    from smart_retention.observation import utc_now

    with _user_errors(), _report_connection(db) as connection:
        now = utc_now()
        report = schemas.EfficiencyByAge.of(now, analysis.efficiency_by_age(connection, now))
    if as_json:
        _print_json(report)
        return
    table = Table(title="efficiency by post age")
    for heading in ("age", "posts", "checks per post", "saves per post", "efficiency"):
        table.add_column(heading, justify="right")
    for row in report.brackets:
        table.add_row(
            row.bracket,
            f"{row.post_count:,}",
            _or_dash(row.avg_checks, "{:,.2f}"),
            _or_dash(row.avg_saves, "{:,.2f}"),
            _or_dash(row.efficiency_pct, "{:.2f}%"),
        )
    console.print(table)


@app.command()
def trend(
    days: Annotated[int, typer.Option(help="UTC days, today included.", min=1, max=366)] = 7,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Snapshots saved per UTC day (as the API's storage-trend)."""
    from smart_retention import analysis
    from smart_retention.api import schemas
    from smart_retention.observation import utc_now

    with _user_errors(), _report_connection(db) as connection:
        now = utc_now()
        report = schemas.StorageTrend.of(now, analysis.storage_trend(connection, now, days))
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"storage trend, last {days} days")
    for heading in ("day (UTC)", "snapshots saved", "posts", "per post"):
        table.add_column(heading, justify="right")
    for day in report.days:
        table.add_row(
            day.day.isoformat(),
            f"{day.snapshots_saved:,}",
            f"{day.unique_posts:,}",
            _or_dash(day.avg_per_post, "{:,.2f}"),
        )
    console.print(table)


@contextmanager
def _report_connection(db: str | None) -> Iterator[Any]:
    # A report reads: a mistyped SQLite path is an error, not a new empty database.
    engine = _engine(db, must_exist=True)
    try:
        current = migrate.current_revision(engine)
        if current is None:
            raise UserError("the database has no schema yet; run: smart-retention db upgrade")
        head = migrate.heads()[0]
        if current != head:
            # The figures read what later migrations add (the kept totals of 0003).
            raise UserError(
                f"the database is at revision {current}, the reports need {head}; run: "
                "smart-retention db upgrade"
            )
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _print_json(report: Any) -> None:
    print(json.dumps(report.model_dump(mode="json"), indent=2))


def _print_figures(title: str, rows: list[tuple[str, str]], estimates: dict[str, Any]) -> None:
    summary = Table(title=title, show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for label, value in rows:
        summary.add_row(label, value)
    console.print(summary)
    for name, estimate in estimates.items():
        kind = "exact" if estimate.exact else "estimate"
        console.print(f"{name}: {kind}, {estimate.detail}", markup=False, highlight=False)


def _or_dash(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


# --- `run`: the embedded scheduler (issue 6) ---


@app.command()
def run(
    once: Annotated[
        bool, typer.Option("--once", help="Run every tier once (its due posts) and exit.")
    ] = False,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Source, e.g. synthetic; wins over SMART_RETENTION_SOURCE."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Collect by itself in this process: each tier at its interval, until Ctrl-C or SIGTERM.

    The embedded mode: no broker, no workers. A stop lands between batches and prints a
    summary. Production runs the same tiers on Celery workers (docs/operations.md).
    """
    # Imported here so the other commands do not load the scheduler and sources.
    from threading import Event

    from smart_retention.scheduler import EmbeddedScheduler, stop_on_signals
    from smart_retention.sources.factory import SOURCE_SETTING, build_source

    with _user_errors():
        settings = load_settings()
        built = build_source(
            source or settings.source,
            "--source" if source else SOURCE_SETTING,
            database_url=chosen_database_url(db),
        )
        engine = _engine(db)
        migrate.upgrade(engine)
        stop = Event()
        scheduler = EmbeddedScheduler(
            engine, built, batch_size=settings.batch_size, stop=stop, on_run=_print_tier_run
        )
        if not getattr(built, "has_channels", lambda: True)():
            err_console.print(
                "no tracked Telegram channels: nothing to collect; add one with "
                "'smart-retention channels add @name'",
                markup=False,
                highlight=False,
            )
        try:
            with stop_on_signals(stop):
                summary = scheduler.run(once=once)
        finally:
            # A live source holds a connection and an event loop: close them here.
            close = getattr(built, "close", None)
            if close is not None:
                close()
    for message in summary.messages:
        err_console.print(f"rejected: {message}", markup=False, highlight=False)
    ending = "stopped" if summary.stopped else "done"
    failed = f", {summary.failed_runs} cut short by the database" if summary.failed_runs else ""
    console.print(
        f"run {ending}: {summary.runs} tier runs{failed}, {summary.checks:,} checks, "
        f"{summary.saved:,} saved, {summary.rejected:,} rejected, {summary.seconds:.1f} s",
        markup=False,
        highlight=False,
    )


def _print_tier_run(run: Any) -> None:
    console.print(
        f"{run.now:%Y-%m-%d %H:%M:%S} {run.tier}: {run.status}, {run.checks:,} checks, "
        f"{run.saved:,} saved, {run.rejected:,} rejected, {run.seconds:.2f} s",
        markup=False,
        highlight=False,
    )


# --- import and cleanup --------------------------------------------------------------


@app.command("import")
def import_recording(
    file: Annotated[Path, typer.Argument(help="Recorded CSV, plain or gzipped.")],
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="Map a canonical column to the file's name: canonical=theirs."
        ),
    ] = None,
    channel_id: Annotated[
        int | None, typer.Option("--channel-id", help="Channel id for rows that have none.", min=1)
    ] = None,
    posted_at: Annotated[
        PostedAt,
        typer.Option(
            "--posted-at",
            help="Where posted_at comes from: the file's column, or each post's first "
            "observation (for files without one).",
        ),
    ] = PostedAt.COLUMN,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 at the first rejected row; store nothing.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Rows per transaction.")
    ] = IMPORT_BATCH_SIZE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    db: DbOption = None,
) -> None:
    """Store every valid row of a recording in post_metrics as it is, as an old collector
    that stored every poll did. Rows already stored are skipped, so a re-import adds nothing."""
    with _user_errors():
        mapping = parse_column_mapping(column or [])
        with _reading_status(file, quiet=as_json):
            if posted_at is PostedAt.FIRST_SEEN:
                recording = read_recording_first_seen(file, mapping, channel_id)
            else:
                recording = read_recording(file, mapping, channel_id)
        if strict and recording.rejections:
            raise StrictModeRejection(f"--strict: {recording.rejections[0]}")
        engine = _engine(db)
        migrate.upgrade(engine)
        report = _import_with_progress(engine, recording, batch_size, quiet=as_json)
    _print_rejections(report.rejection_messages)
    if report.rows_already_present and report.rows_inserted:
        # Part of the file was stored before. After an interrupted import that is the
        # point; after a cleanup it means the duplicates the cleanup removed are back.
        err_console.print(
            f"note: {report.rows_already_present:,} rows of this file were already stored "
            f"and {report.rows_inserted:,} were added; if a cleanup ran since the first "
            "import, the duplicates it removed are back: run cleanup again",
            markup=False,
            highlight=False,
        )
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return
    summary = Table(title=f"import of {file.name}", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for label, value in (
        ("posts", f"{report.posts:,}"),
        ("observations read", f"{report.observations:,}"),
        ("rows rejected", f"{report.rejected:,}"),
        ("rows inserted", f"{report.rows_inserted:,}"),
        ("rows already stored (skipped)", f"{report.rows_already_present:,}"),
        ("batches", f"{report.batches:,}"),
        ("seconds", f"{report.seconds:.1f}"),
    ):
        summary.add_row(label, value)
    console.print(summary)


@contextmanager
def _reading_status(file: Path, quiet: bool) -> Iterator[None]:
    if quiet or not err_console.is_terminal:
        yield
        return
    with err_console.status(f"reading {file.name}"):
        yield


def _import_with_progress(
    engine: Engine, recording: Any, batch_size: int, quiet: bool
) -> ImportReport:
    if quiet or not err_console.is_terminal:
        return run_import(engine, recording, batch_size)
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("import", total=len(recording.observations))
        update: Callable[[int], None] = lambda done: bar.update(task, completed=done)  # noqa: E731
        return run_import(engine, recording, batch_size, progress=update)


def _print_rejections(messages: list[str]) -> None:
    for message in messages[:REJECTIONS_SHOWN]:
        err_console.print(f"rejected: {message}", markup=False, highlight=False)
    hidden = len(messages) - REJECTIONS_SHOWN
    if hidden > 0:
        err_console.print(f"rejected: ... and {hidden} more")


@app.command()
def cleanup(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count the duplicates; delete nothing.")
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            max=CLEANUP_MAX_BATCH_SIZE,
            help="Rows per batch (one transaction each).",
        ),
    ] = CLEANUP_BATCH_SIZE,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    db: DbOption = None,
) -> None:
    """Delete snapshot rows that repeat the row before them for the same post.

    A post's first row is never deleted, nor a row a check row points at. Without --yes
    it asks first, and refuses (status 2) when there is no terminal to ask on. Status 3:
    another cleanup is running."""
    with _user_errors():
        engine = _engine(db, must_exist=True)
        if not dry_run and not yes:
            _confirm_cleanup(engine)
        try:
            report = _cleanup_with_progress(engine, dry_run, batch_size, quiet=as_json)
        except KeyboardInterrupt:
            _fail(
                "cleanup interrupted: the batches committed so far stay, the one in progress "
                "was rolled back; run the same command again to finish",
                INTERRUPTED_EXIT_STATUS,
            )
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return
    title = "cleanup dry run: nothing deleted" if report.dry_run else "cleanup of post_metrics"
    summary = Table(title=title, show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for label, value in (
        ("rows before", f"{report.total_before:,}"),
        ("duplicates found", f"{report.duplicates_found:,}"),
        ("duplicates removed", f"{report.duplicates_removed:,}"),
        ("duplicates kept (a check row points at them)", f"{report.duplicates_kept_for_checks:,}"),
        ("unique rows kept", f"{report.unique_kept:,}"),
        ("batches", f"{report.batches:,}"),
        ("longest batch, seconds", f"{report.max_batch_seconds:.3f}"),
        ("seconds", f"{report.seconds:.1f}"),
        ("table size before", _size(report.table_bytes_before)),
        ("table size after", _size(report.table_bytes_after)),
    ):
        summary.add_row(label, value)
    console.print(summary)


def _confirm_cleanup(engine: Engine) -> None:
    if not sys.stdin.isatty():
        raise CleanupNotConfirmed(
            "refusing to delete without --yes: there is no terminal to ask on; "
            "count first with --dry-run, then run with --yes"
        )
    rows = count_snapshots(engine)
    where = display_url(engine.url)
    question = f"Delete the duplicates among the {rows:,} rows of post_metrics in {where}?"
    if not typer.confirm(question, default=False, err=True):
        err_console.print("cleanup cancelled: nothing deleted")
        raise typer.Exit(1)


def _cleanup_with_progress(
    engine: Engine, dry_run: bool, batch_size: int, quiet: bool
) -> CleanupReport:
    if quiet or not err_console.is_terminal:
        return run_cleanup(engine, dry_run=dry_run, batch_size=batch_size)
    with Progress(
        TextColumn("counting" if dry_run else "cleaning"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("cleanup", total=None)

        def update(scanned: int, total: int) -> None:
            bar.update(task, completed=min(scanned, total), total=total)

        return run_cleanup(engine, dry_run=dry_run, batch_size=batch_size, progress=update)


def _size(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 2**20:,.1f} MiB ({size:,} bytes)"


# backup, deploy, rollback and db stamp register themselves on `app` and `db_app`; the
# module imports this one for them, so it comes last.
from smart_retention import cli_deploy  # noqa: E402, F401
