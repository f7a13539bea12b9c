"""The `backup`, `deploy`, `rollback` and `db stamp` commands (docs/deploy.md).

They are registered on cli.py's app by importing this module at the end of cli.py; the
helpers they share with the other commands (console, engine, error handling) are cli.py's.
"""

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from sqlalchemy import Engine

from smart_retention.backup import (
    DEFAULT_BACKUP_DIR,
    check_backup,
    check_backup_folder,
    restore_backup,
    take_backup,
)
from smart_retention.cleanup import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE
from smart_retention.cli import DbOption, _engine, _user_errors, app, console, db_app, err_console
from smart_retention.config import load_settings
from smart_retention.deploy import DeployNotConfirmed, DeployOptions, run_deploy
from smart_retention.errors import UserError
from smart_retention.storage import migrate
from smart_retention.storage.adoption import check_stamp
from smart_retention.storage.engine import display_url

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]


class RollbackNotConfirmed(UserError):
    """A rollback was asked for without --yes and there is no terminal to ask on."""


@contextmanager
def _database(db: str | None, *, must_exist: bool = False) -> Iterator[Engine]:
    """The command's engine, closed at the end (the commands also run inside tests).
    `must_exist`: a SQLite file that is not there is an error, not a new empty database."""
    engine = _engine(db, must_exist=must_exist)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, so a stopped deploy says where it was."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ask(question: str) -> bool:
    """A yes/no question on the terminal; Ctrl-C or end of input is a no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except (typer.Abort, EOFError, KeyboardInterrupt):
        err_console.print()
        return False


def _say(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def backup(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the backup file (created if missing).")
    ] = DEFAULT_BACKUP_DIR,
    db: DbOption = None,
) -> None:
    """Take a verified backup: pg_dump -Fc of the URL's schema, or a SQLite online copy.

    A dump that fails or does not verify is deleted and reported with status 1; earlier
    backups are never replaced or deleted."""
    with _user_errors():
        check_backup_folder(out)
        with _database(db, must_exist=True) as engine:
            taken = take_backup(engine, out)
    _say(f"backup: {taken.describe()}")


@app.command()
def deploy(
    yes: YesOption = False,
    backup_dir: Annotated[
        Path, typer.Option("--backup-dir", help="Folder for the backup taken first.")
    ] = DEFAULT_BACKUP_DIR,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            max=MAX_BATCH_SIZE,
            help="Cleanup rows per batch (transaction).",
        ),
    ] = DEFAULT_BATCH_SIZE,
    db: DbOption = None,
) -> None:
    """Back up, migrate, measure, clean and verify, one line per step, then a summary.

    Steps: backup, migrate, analyse, dry-run, confirm, cleanup, reload-workers, verify.
    A failing step stops the deploy with status 1 and says how to roll back. Without
    --yes it asks before deleting, and refuses (status 2) when there is no terminal."""
    with _user_errors():
        if yes:
            confirm = None
        elif not sys.stdin.isatty():
            raise DeployNotConfirmed(
                "refusing to deploy without --yes: there is no terminal to ask on before "
                "the cleanup deletes rows; run with --yes (nothing was changed)"
            )
        else:
            confirm = _ask
        check_backup_folder(backup_dir)
        options = DeployOptions(
            backup_dir=backup_dir,
            batch_size=batch_size,
            broker_url=load_settings().broker_url,
            confirm=confirm,
        )
        with _sigterm_as_interrupt(), _database(db) as engine:
            report = run_deploy(engine, options, emit=_say)
    for line in report.summary_lines():
        _say(line)


@app.command()
def rollback(
    backup_file: Annotated[
        Path, typer.Option("--backup", help="The backup file a deploy or `backup` wrote.")
    ],
    yes: YesOption = False,
    db: DbOption = None,
) -> None:
    """Restore a backup into the database, in one transaction, exactly as it was taken.

    Every table of the schema (PostgreSQL) or the whole file (SQLite) ends as the backup
    holds it.
    Changes made since the backup, by anyone, are lost. Without --yes it asks first, and
    refuses (status 2) when there is no terminal."""
    with _user_errors(), _database(db, must_exist=True) as engine:
        for warning in check_backup(engine, backup_file):
            err_console.print(f"warning: {warning}", markup=False, highlight=False)
        where = display_url(engine.url)
        if not yes:
            if not sys.stdin.isatty():
                raise RollbackNotConfirmed(
                    "refusing to roll back without --yes: there is no terminal to ask on "
                    "(nothing was changed)"
                )
            question = (
                f"Replace every table of {where} with the backup {backup_file}? Changes made "
                "since it was taken are lost."
            )
            if not _ask(question):
                err_console.print("rollback cancelled: nothing changed")
                raise typer.Exit(1)
        restore_backup(engine, backup_file)
        revision = migrate.current_revision(engine)
    _say(
        f"rollback: restored {backup_file} into {where}; schema revision now "
        f"{revision or 'none (no migration record, as before the deploy)'}"
    )


@db_app.command("stamp")
def db_stamp(
    revision: Annotated[str, typer.Argument(help="The revision the tables already are.")],
    force: Annotated[
        bool,
        typer.Option("--force", help="Stamp even when the tables are not that revision's."),
    ] = False,
    db: DbOption = None,
) -> None:
    """Record REVISION as the schema's revision without running any migration.

    For a manual repair only (docs/deploy.md): the tables must already be exactly that
    revision's, or later migrations will fail or do the wrong thing. It refuses when they
    are not, naming what differs, unless --force."""
    with _user_errors():
        if not revision.strip():
            raise UserError("db stamp needs a revision, e.g. 0001 (an empty one was given)")
        with _database(db, must_exist=True) as engine:
            if not force:
                check_stamp(engine, revision)
            migrate.stamp(engine, revision)
            _say(f"database stamped at revision {migrate.current_revision(engine) or 'base'}")
