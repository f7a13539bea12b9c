"""The `smart-retention` command line.

Expected failures (`UserError`) print one line and exit with their code; anything else
is a bug and keeps its traceback.
"""

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from smart_retention.config import load_settings
from smart_retention.demo import ChannelModel, synthetic_recording
from smart_retention.errors import StrictModeRejection, UserError
from smart_retention.replay import ReplayOptions, ReplayReport, run_replay
from smart_retention.sources.recording import parse_column_mapping, read_recording
from smart_retention.storage import migrate
from smart_retention.storage.engine import make_engine

app = typer.Typer(
    help="Keep post metrics without drowning in them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
# soft_wrap: an error or rejection stays on one line however narrow the terminal or pipe.
err_console = Console(stderr=True, soft_wrap=True)

DEMO_DATABASE_FILE = "smart-retention-demo.sqlite3"
DEMO_MODEL = ChannelModel()
# How many rejection messages a report prints; the count is always complete.
REJECTIONS_SHOWN = 20

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL; wins over SMART_RETENTION_DATABASE_URL."),
]


def main() -> None:
    app()


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


def _engine(db: str | None) -> Engine:
    return make_engine(db or load_settings().database_url)


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as error:
        err_console.print(f"error: {error}", markup=False, highlight=False)
        raise typer.Exit(error.exit_code) from None


@db_app.command("upgrade")
def db_upgrade(revision: str = "head", db: DbOption = None) -> None:
    """Migrate the schema up to REVISION (default: the newest)."""
    engine = _engine(db)
    migrate.upgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target, e.g. base or -1.")], db: DbOption = None
) -> None:
    """Migrate the schema down to REVISION ('base' removes every table)."""
    engine = _engine(db)
    migrate.downgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine) or 'base'}")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the schema revision of the database."""
    console.print(migrate.current_revision(_engine(db)) or "base (no schema)")


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
            "--max-age-days", help="Poll posts up to this age (extends the last tier).", min=0
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
    posts: Annotated[int, typer.Option(help="Posts in the channel.", min=1)] = DEMO_MODEL.posts,
    days: Annotated[int, typer.Option(help="Days of history.", min=1)] = DEMO_MODEL.days,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help=f"Database URL (default: ./{DEMO_DATABASE_FILE}, recreated)."),
    ] = None,
) -> None:
    """Generate a synthetic channel, replay its poll log, and report. Needs nothing."""
    with _user_errors():
        if db is None:
            Path(DEMO_DATABASE_FILE).unlink(missing_ok=True)
            db = f"sqlite:///{DEMO_DATABASE_FILE}"
        recording = synthetic_recording(ChannelModel(seed=seed, posts=posts, days=days))
        report = _replay_with_progress(
            _engine(db), recording, ReplayOptions(replace=True), quiet=as_json
        )
    _print_report(
        report, as_json, title=f"demo: {posts} posts over {days} days, polled every 10 min"
    )
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
