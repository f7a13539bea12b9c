"""Deploy: move an existing database to smart retention in one command, step by step.

The steps, in order, each a function below that returns the one line it reports:

1. backup          a verified backup (backup.py); nothing else runs without one
2. migrate         upgrade, or adopt a legacy database and upgrade (storage/adoption.py)
3. analyse         measure: database size, post_metrics rows, the storage analysis
4. dry-run         count the duplicates with the cleanup's own query; delete nothing
5. confirm         ask on a terminal (skipped with --yes; the command line refuses to
                   start without a terminal and without --yes, before step 1)
6. cleanup         delete the consecutive duplicates (cleanup.py, in batches)
7. reload-workers  ask running Celery workers to restart their pools, when a broker
                   answers; no broker or no worker is reported and is not a failure
8. verify          head revision, every table present, the owner figures computable,
                   no consecutive duplicate left; then measure again

A step that fails stops the deploy: `DeployFailed` names the step and the reason and,
once a backup exists, the rollback command. Every step is safe to run again, so a deploy
run twice changes nothing the second time (it takes one more backup).

Sizes. "Database size" is what the schema's tables and indexes take as the database
reports it: on PostgreSQL the sum of pg_total_relation_size over the schema's tables
(freed space stays in the files, reused by new rows, so it barely drops after a cleanup;
only VACUUM FULL returns it, see docs/deploy.md), on SQLite the pages in use (page_count
less the freelist), which drops at once. Savings are therefore given in rows.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alembic.util.exc import CommandError
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from smart_retention import analysis
from smart_retention.backup import (
    DEFAULT_BACKUP_DIR,
    Backup,
    earlier_backups,
    human_size,
    take_backup,
)
from smart_retention.cleanup import DEFAULT_BATCH_SIZE, CleanupReport, run_cleanup
from smart_retention.errors import UserError
from smart_retention.observation import utc_now
from smart_retention.storage import migrate
from smart_retention.storage.adoption import MigrationResult, migrate_to_head, revision_layouts
from smart_retention.storage.engine import display_url
from smart_retention.storage.tables import post_metrics

log = logging.getLogger(__name__)

# How long the reload step waits for the broker, then for the workers' answers.
BROKER_TIMEOUT_S = 3.0
WORKER_REPLY_TIMEOUT_S = 2.0

# Asked on a terminal before the cleanup; None means --yes (no question).
Confirm = Callable[[str], bool]
# Receives each step's line as the step completes.
Emit = Callable[[str], None]


class DeployFailed(UserError):
    """A deploy step failed; the deploy stopped there."""

    exit_code = 1

    def __init__(self, step: str, reason: str, backup: Path | None, *, stopped: bool = False):
        self.step = step
        self.reason = reason
        self.backup = backup
        verb = "stopped" if stopped else "failed"
        if backup is None:
            hint = "Nothing was changed"
        else:
            hint = f"To roll back: smart-retention rollback --backup {backup}"
        super().__init__(f"deploy {verb} at step {step}: {reason.rstrip('.')}. {hint}")


class DeployInterrupted(UserError):
    """Ctrl-C (or SIGTERM, which the command line turns into the same) during a step."""

    exit_code = 130

    def __init__(self, step: str, backup: Path | None):
        self.step = step
        self.backup = backup
        if backup is None:
            after = "nothing was changed (no backup was kept); run deploy again"
        else:
            after = (
                "the database is consistent (each cleanup batch commits whole); run deploy "
                f"again to finish, or roll back: smart-retention rollback --backup {backup}"
            )
        super().__init__(f"deploy interrupted at step {step}; {after}")


class DeployNotConfirmed(UserError):
    """No --yes and no terminal to ask on: the deploy refuses to start."""


class _NotConfirmed(Exception):
    """The question before the cleanup was answered no."""


@dataclass(frozen=True, slots=True)
class Measure:
    # Bytes the schema's tables and indexes take (see the module note).
    database_bytes: int
    # Rows of post_metrics.
    rows: int


@dataclass(slots=True)
class DeployOptions:
    backup_dir: Path = DEFAULT_BACKUP_DIR
    batch_size: int = DEFAULT_BATCH_SIZE
    # Celery broker to tell workers to reload through; None or "" skips the step.
    broker_url: str | None = None
    confirm: Confirm | None = None


@dataclass(slots=True)
class DeployReport:
    backup: Backup | None = None
    migration: MigrationResult | None = None
    before: Measure | None = None
    after: Measure | None = None
    dry_run: CleanupReport | None = None
    cleanup: CleanupReport | None = None
    # (step, line) for each completed step.
    steps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def savings_pct(self) -> float | None:
        if self.before is None or self.after is None or not self.before.rows:
            return None
        return 100.0 * (self.before.rows - self.after.rows) / self.before.rows

    def summary_lines(self) -> list[str]:
        """The closing summary: size, rows, savings, backup; one line each."""
        before, after = self.before, self.after
        assert before is not None and after is not None and self.backup is not None
        savings = self.savings_pct
        return [
            f"database size: {human_size(before.database_bytes)} before, "
            f"{human_size(after.database_bytes)} after",
            f"rows: {before.rows:,} before, {after.rows:,} after (post_metrics)",
            "savings: "
            + (
                "none (post_metrics was empty)"
                if savings is None
                else f"{savings:.1f}% of post_metrics rows ({before.rows - after.rows:,} rows)"
            ),
            f"backup: {self.backup.path}",
        ]


@dataclass(slots=True)
class _Deploy:
    engine: Engine
    options: DeployOptions
    report: DeployReport


def run_deploy(engine: Engine, options: DeployOptions, emit: Emit) -> DeployReport:
    """Run every step in order; see the module docstring. Raises `DeployFailed`."""
    deploy = _Deploy(engine, options, DeployReport())
    for name, step in STEPS:
        started = time.perf_counter()
        try:
            line = step(deploy)
        except _NotConfirmed:
            raise DeployFailed(
                name, _not_confirmed(deploy.report), _backup_path(deploy), stopped=True
            ) from None
        except KeyboardInterrupt:
            log.info("deploy.interrupted step=%s", name)
            if name == "confirm":
                # Ctrl-C at the question is a no.
                raise DeployFailed(
                    name, _not_confirmed(deploy.report), _backup_path(deploy), stopped=True
                ) from None
            raise DeployInterrupted(name, _backup_path(deploy)) from None
        except Exception as error:
            reason = _reason(error)
            if isinstance(error, EXPECTED_FAILURES):
                log.info("deploy.step_failed step=%s reason=%s", name, reason)
            else:
                # A bug, not a condition of the database: keep its traceback.
                log.exception("deploy.step_failed step=%s reason=%s", name, reason)
            raise DeployFailed(name, reason, _backup_path(deploy)) from error
        log.info("deploy.step step=%s seconds=%.2f %s", name, time.perf_counter() - started, line)
        deploy.report.steps.append((name, line))
        emit(f"{name}: {line}")
    return deploy.report


def _backup_path(deploy: _Deploy) -> Path | None:
    return deploy.report.backup.path if deploy.report.backup else None


def _not_confirmed(report: DeployReport) -> str:
    revision = report.migration.after if report.migration else "unknown"
    return f"not confirmed; nothing deleted (the database is migrated to revision {revision})"


# Failures the deploy expects (bad input, the database or a migration refusing): reported
# by their message alone.
EXPECTED_FAILURES = (UserError, DBAPIError, CommandError)


def _reason(error: Exception) -> str:
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, DBAPIError):
        return f"database: {str(error.orig).strip().splitlines()[0]}"
    if isinstance(error, CommandError):
        return f"migration: {error}"
    return f"{type(error).__name__}: {error}"


# --- the steps -----------------------------------------------------------------------


def step_backup(deploy: _Deploy) -> str:
    deploy.report.backup = take_backup(deploy.engine, deploy.options.backup_dir)
    line = deploy.report.backup.describe()
    earlier = earlier_backups(deploy.report.backup.path)
    if earlier:
        # A deploy interrupted before backs up its half-cleaned state: this new backup is
        # not the database as it was before the first attempt.
        count = "1 earlier backup" if len(earlier) == 1 else f"{len(earlier)} earlier backups"
        line += (
            f"; {count} of this database in {earlier[0].parent} (oldest {earlier[0].name}): "
            "to undo an interrupted deploy, roll back to the backup taken before its first "
            "attempt, not this one"
        )
    return line


def step_migrate(deploy: _Deploy) -> str:
    deploy.report.migration = migrate_to_head(deploy.engine)
    return deploy.report.migration.describe()


def step_analyse(deploy: _Deploy) -> str:
    deploy.report.before = measure(deploy.engine)
    with deploy.engine.connect() as connection:
        figures = analysis.storage_analysis(connection, utc_now())
    before = deploy.report.before
    return (
        f"database {human_size(before.database_bytes)}, post_metrics {before.rows:,} rows; "
        f"storage analysis: {figures.current_storage_mb:,.1f} MB in the snapshot tables, "
        f"about {figures.duplicate_snapshots_estimate:,} consecutive duplicates"
    )


def step_dry_run(deploy: _Deploy) -> str:
    report = run_cleanup(deploy.engine, dry_run=True, batch_size=deploy.options.batch_size)
    deploy.report.dry_run = report
    share = 100.0 * report.duplicates_found / report.total_before if report.total_before else 0
    return (
        f"{report.duplicates_found:,} of {report.total_before:,} rows are consecutive "
        f"duplicates ({share:.1f}%), {report.duplicates_kept_for_checks:,} kept for check "
        "rows; nothing deleted"
    )


def step_confirm(deploy: _Deploy) -> str:
    confirm = deploy.options.confirm
    if confirm is None:
        return "skipped (--yes)"
    dry_run, backup = deploy.report.dry_run, deploy.report.backup
    assert dry_run is not None and backup is not None
    where = display_url(deploy.engine.url)
    question = (
        f"Delete {dry_run.duplicates_found:,} duplicate rows of post_metrics in {where}? "
        f"(backup: {backup.path})"
    )
    if not confirm(question):
        raise _NotConfirmed
    return "confirmed"


def step_cleanup(deploy: _Deploy) -> str:
    report = run_cleanup(deploy.engine, batch_size=deploy.options.batch_size)
    deploy.report.cleanup = report
    return (
        f"removed {report.duplicates_removed:,} duplicates in {report.batches:,} batches, "
        f"{report.seconds:.1f} s"
    )


def step_reload_workers(deploy: _Deploy) -> str:
    # Telling the workers is a courtesy: the database is already cleaned, so no failure
    # here (a bad URL, an unknown transport, a broker that hangs up) may fail the deploy.
    try:
        return reload_workers(deploy.options.broker_url)
    except Exception as error:
        log.debug("deploy.reload_workers_failed", exc_info=True)
        return f"skipped: {_broker_problem(error)}"


def step_verify(deploy: _Deploy) -> str:
    engine = deploy.engine
    head = migrate.heads()[0]
    current = migrate.current_revision(engine)
    if current != head:
        raise UserError(f"the database is at revision {current}, not the head {head}")
    expected = set(revision_layouts()[-1][1])
    missing = sorted(expected - set(inspect(engine).get_table_names()))
    if missing:
        raise UserError(f"tables missing at revision {head}: {', '.join(missing)}")
    with engine.connect() as connection:
        now = utc_now()
        analysis.collection_stats(connection, now)
        analysis.storage_analysis(connection, now)
    left = run_cleanup(engine, dry_run=True, batch_size=deploy.options.batch_size)
    if left.duplicates_found:
        raise UserError(f"{left.duplicates_found:,} consecutive duplicates are left")
    deploy.report.after = measure(engine)
    return (
        f"revision {head} (head), {len(expected)} tables present, owner figures computable, "
        "0 consecutive duplicates left"
    )


STEPS: tuple[tuple[str, Callable[[_Deploy], str]], ...] = (
    ("backup", step_backup),
    ("migrate", step_migrate),
    ("analyse", step_analyse),
    ("dry-run", step_dry_run),
    ("confirm", step_confirm),
    ("cleanup", step_cleanup),
    ("reload-workers", step_reload_workers),
    ("verify", step_verify),
)


# --- measuring -----------------------------------------------------------------------


def measure(engine: Engine) -> Measure:
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(post_metrics)).scalar_one()
        if connection.dialect.name == "postgresql":
            size = connection.execute(_PG_SCHEMA_BYTES).scalar_one()
        else:
            page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
            free = connection.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            size = (pages - free) * page_size
    return Measure(int(size or 0), rows)


# The tables of the current schema with their indexes and TOAST.
_PG_SCHEMA_BYTES = text(
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
    "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'm')"
)


# --- telling the workers -------------------------------------------------------------


def reload_workers(
    broker_url: str | None,
    *,
    broker_timeout: float = BROKER_TIMEOUT_S,
    reply_timeout: float = WORKER_REPLY_TIMEOUT_S,
) -> str:
    """Broadcast `pool_restart` to the Celery workers on `broker_url`; say what happened.

    Why: worker processes keep pooled database connections (and prepared statements)
    from before the migration; a pool restart gives them fresh processes. The workers
    must run with `worker_pool_restarts` on, as tasks.create_app sets it. A new release
    of the code still needs the workers restarted by their service manager.
    """
    if not broker_url:
        return "skipped: no broker configured"
    shown = _hide_password(broker_url)
    try:
        # Imported here: the embedded deployment has no need of Celery's start-up cost.
        from celery import Celery
        from kombu.exceptions import OperationalError as BrokerError
    except ImportError as error:
        return f"skipped: Celery is not installed ({error})"
    try:
        client = Celery("smart_retention_deploy", broker=broker_url, set_as_current=False)
        with client.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=broker_timeout
            )
            replies = client.control.broadcast(
                "pool_restart",
                arguments={"reload": False},
                reply=True,
                timeout=reply_timeout,
                connection=connection,
            )
    except (BrokerError, OSError) as error:
        return f"skipped: no broker reachable at {shown} ({error})"
    except Exception as error:
        # A URL kombu cannot use: an unknown transport, a port that is no number, ...
        return f"skipped: broker URL {shown} is not usable ({_broker_problem(error)})"
    if not replies:
        return (
            f"no worker answered on {shown} within {reply_timeout:g} s; "
            "restart running workers by hand"
        )
    restarted, refused = [], []
    for reply in replies:
        for worker, answer in reply.items():
            if isinstance(answer, dict) and "error" in answer:
                refused.append(f"{worker} ({answer['error']})")
            else:
                restarted.append(worker)
    line = (
        "1 worker restarting its pool"
        if len(restarted) == 1
        else f"{len(restarted)} workers restarting their pools"
    )
    if restarted:
        line += f" ({', '.join(sorted(restarted))})"
    if refused:
        line += f"; refused, restart by hand: {', '.join(sorted(refused))}"
    return line


def _broker_problem(error: Exception) -> str:
    # A KeyError's str() is its repr ('No such transport: x' in quotes): use its argument.
    detail = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"{detail}" or type(error).__name__


def _hide_password(url: str) -> str:
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
