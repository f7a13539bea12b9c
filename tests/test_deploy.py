"""Deploy and roll back (deploy.py, storage/adoption.py, cli_deploy.py), on SQLite and on
real PostgreSQL, from a legacy database built out of the real @RecSysChannel recording.

A deploy adopts the database (it has revision 0001's tables and no migration record),
migrates it to the head, removes exactly the consecutive duplicates, and a rollback then
gives back the very tables and rows it started with (checksums compared). A deploy whose
backup fails changes nothing; a second deploy changes nothing.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from conftest import require_redis
from deploy_fixtures import (
    build_legacy_database,
    collapse_repeats,
    database_state,
    fake_pg_dump,
    path_with,
    snapshot_rows,
)
from smart_retention.cli import app
from smart_retention.deploy import (
    STEPS,
    DeployFailed,
    DeployOptions,
    reload_workers,
    run_deploy,
)
from smart_retention.storage import migrate
from smart_retention.storage.adoption import (
    SchemaNotAdoptable,
    migrate_to_head,
    revision_layouts,
)
from smart_retention.storage.engine import make_engine

CLI = Path(sys.executable).parent / "smart-retention"
# Nothing listens on port 1: the reload step reports the broker unreachable at once.
NO_BROKER = "redis://127.0.0.1:1/0"
# A Redis database no test worker listens on, for "no worker answered".
QUIET_BROKER = "redis://127.0.0.1:6379/15"
HEAD = migrate.heads()[0]
STEP_NAMES = [name for name, _ in STEPS]
runner = CliRunner()


@pytest.fixture
def legacy(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Engine, list]]:
    """(url, engine, snapshot rows) of a legacy database on each engine."""
    engine = make_engine(database_url)
    rows = build_legacy_database(engine, tmp_path)
    yield database_url, engine, rows
    engine.dispose()


def deploy_cli(url: str, backup_dir: Path, *extra: str, path: str | None = None):  # type: ignore[no-untyped-def]
    env = {"SMART_RETENTION_BROKER_URL": NO_BROKER}
    if path is not None:
        env["PATH"] = path
    return runner.invoke(
        app,
        ["deploy", "--yes", "--backup-dir", str(backup_dir), "--batch-size", "1000", *extra,
         "--db", url],
        env=env,
    )  # fmt: skip


@pytest.mark.realdata
def test_deploy_adopts_cleans_and_verifies_and_rollback_restores_every_row(
    legacy: tuple[str, Engine, list], tmp_path: Path
) -> None:
    url, engine, rows = legacy
    original = database_state(engine)
    expected_after = collapse_repeats(rows)
    assert len(expected_after) < len(rows) / 5, "the recording should be mostly repeats"

    result = deploy_cli(url, tmp_path / "backups")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[: len(STEPS)]] == STEP_NAMES
    assert "stamped 0001" in lines[1] and f"now at {HEAD} (head)" in lines[1]
    assert "skipped: no broker reachable" in lines[6]
    summary = lines[len(STEPS) :]
    assert [line.split(":")[0] for line in summary] == [
        "database size",
        "rows",
        "savings",
        "backup",
    ]
    assert summary[1] == f"rows: {len(rows):,} before, {len(expected_after):,} after (post_metrics)"
    saved = 100 * (len(rows) - len(expected_after)) / len(rows)
    assert summary[2].startswith(f"savings: {saved:.1f}% of post_metrics rows")
    (backup_file,) = (tmp_path / "backups").iterdir()
    assert summary[3] == f"backup: {backup_file}"
    # Migrated and clean, every distinct value intact: exactly the rows that start a run.
    assert migrate.current_revision(engine) == HEAD
    assert snapshot_rows(engine) == expected_after

    rolled_back = runner.invoke(
        app, ["rollback", "--backup", str(backup_file), "--yes", "--db", url]
    )

    assert rolled_back.exit_code == 0, rolled_back.output
    assert "no migration record, as before the deploy" in rolled_back.stdout
    assert database_state(engine) == original
    assert "alembic_version" not in inspect(engine).get_table_names()


@pytest.mark.realdata
def test_a_second_deploy_changes_nothing(legacy: tuple[str, Engine, list], tmp_path: Path) -> None:
    url, engine, _ = legacy
    first = deploy_cli(url, tmp_path / "backups")
    assert first.exit_code == 0, first.output
    after_first = database_state(engine)

    second = deploy_cli(url, tmp_path / "backups")

    assert second.exit_code == 0, second.output
    assert f"migrate: already at revision {HEAD} (head); nothing to do" in second.stdout
    assert "cleanup: removed 0 duplicates" in second.stdout
    assert "savings: 0.0% of post_metrics rows (0 rows)" in second.stdout
    assert database_state(engine) == after_first
    assert len(list((tmp_path / "backups").iterdir())) == 2


@pytest.mark.realdata
@pytest.mark.parametrize("behaviour", ["fails", "empty"])
def test_a_pg_dump_that_fails_or_writes_nothing_stops_the_deploy_before_any_change(
    postgres_database_url: str, tmp_path: Path, behaviour: str
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        build_legacy_database(engine, tmp_path)
        original = database_state(engine)

        result = deploy_cli(
            postgres_database_url,
            tmp_path / "backups",
            path=path_with(fake_pg_dump(tmp_path, behaviour)),
        )

        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: deploy failed at step backup: ")
        assert result.stderr.rstrip().endswith("Nothing was changed")
        assert result.stdout == ""
        assert database_state(engine) == original
        assert not list((tmp_path / "backups").iterdir())
    finally:
        engine.dispose()


def test_without_a_terminal_and_without_yes_deploy_refuses_before_the_backup(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0001")
    engine.dispose()

    result = runner.invoke(app, ["deploy", "--backup-dir", str(tmp_path / "b"), "--db", url])

    assert result.exit_code == 2, result.output
    assert "refusing to deploy without --yes" in result.stderr
    assert not (tmp_path / "b").exists()
    assert migrate.current_revision(make_engine(url)) == "0001"


@pytest.mark.realdata
def test_answering_no_stops_before_the_cleanup_and_says_how_to_roll_back(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    try:
        rows = build_legacy_database(engine, tmp_path)
        questions: list[str] = []

        def answer_no(question: str) -> bool:
            questions.append(question)
            return False

        lines: list[str] = []
        options = DeployOptions(backup_dir=tmp_path / "b", confirm=answer_no)
        with pytest.raises(DeployFailed) as stopped:
            run_deploy(engine, options, emit=lines.append)

        (backup_file,) = (tmp_path / "b").iterdir()
        assert [line.split(":")[0] for line in lines] == STEP_NAMES[:4]
        assert len(questions) == 1 and "duplicate rows of post_metrics" in questions[0]
        assert str(stopped.value) == (
            f"deploy stopped at step confirm: not confirmed; nothing deleted (the database "
            f"is migrated to revision {HEAD}). To roll back: smart-retention rollback "
            f"--backup {backup_file}"
        )
        assert len(snapshot_rows(engine)) == len(rows)
    finally:
        engine.dispose()


def test_a_database_with_only_post_metrics_is_refused_at_migrate_and_left_as_it_was(
    database_url: str, tmp_path: Path
) -> None:
    """As an old collector may have left it: the snapshot table alone. Adopting it would
    mean inventing posts and their publication times, so the deploy refuses."""
    engine = make_engine(database_url)
    moment = "timestamptz" if engine.dialect.name == "postgresql" else "VARCHAR(26)"
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE post_metrics (channel_id BIGINT NOT NULL, "
                    f"msg_id BIGINT NOT NULL, snapshot_time {moment} NOT NULL, views BIGINT, "
                    "forwards BIGINT, reactions BIGINT, replies BIGINT, "
                    "PRIMARY KEY (channel_id, msg_id, snapshot_time))"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO post_metrics VALUES "
                    "(1, 7, '2026-01-01 00:00:00+00', 10, 0, 0, 0), "
                    "(1, 7, '2026-01-01 00:10:00+00', 10, 0, 0, 0)"
                )
            )
        original = database_state(engine)

        result = deploy_cli(database_url, tmp_path / "backups")

        assert result.exit_code == 1, result.output
        message = result.stderr
        assert message.startswith("error: deploy failed at step migrate: database ")
        assert "no migration record, and they match no revision" in message
        assert "tables channels, post_metrics_checks, posts are missing" in message
        (backup_file,) = (tmp_path / "backups").iterdir()
        assert f"To roll back: smart-retention rollback --backup {backup_file}" in message
        assert database_state(engine) == original
    finally:
        engine.dispose()


def test_a_legacy_table_with_a_column_no_revision_has_is_refused_with_the_column_named(
    bare_engine: Engine,
) -> None:
    migrate.upgrade(bare_engine, "0001")
    with bare_engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("ALTER TABLE post_metrics ADD COLUMN shares BIGINT"))
    with pytest.raises(SchemaNotAdoptable, match="post_metrics has columns shares that it"):
        migrate_to_head(bare_engine)
    assert migrate.current_revision(bare_engine) is None
    assert "alembic_version" not in inspect(bare_engine).get_table_names()


def test_an_empty_database_is_migrated_without_adoption(bare_engine: Engine) -> None:
    result = migrate_to_head(bare_engine)
    assert (result.before, result.after, result.adopted) == (None, HEAD, None)
    assert result.describe() == f"upgraded from an empty database to {HEAD} (head)"


def test_a_legacy_database_is_stamped_with_the_revision_its_tables_match(
    bare_engine: Engine,
) -> None:
    """Every revision, not just the first: adoption finds the oldest one whose tables
    match (a revision that changes no table or column, as 0004, has the layout of the
    one before it) and runs the migrations after it."""
    layouts = revision_layouts()
    for revision, layout in layouts:
        oldest_alike = next(other for other, same in layouts if same == layout)
        migrate.upgrade(bare_engine, revision)
        with bare_engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        result = migrate_to_head(bare_engine)
        assert result.adopted == oldest_alike
        assert f"stamped {oldest_alike}" in result.describe()
        assert migrate.current_revision(bare_engine) == HEAD
        migrate.downgrade(bare_engine, "base")
        with bare_engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))


def test_db_stamp_records_a_revision_without_running_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "0001")
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        tables = set(inspect(engine).get_table_names())

        result = runner.invoke(app, ["db", "stamp", "0001", "--db", url])

        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "database stamped at revision 0001"
        assert migrate.current_revision(engine) == "0001"
        assert set(inspect(engine).get_table_names()) == tables | {"alembic_version"}
    finally:
        engine.dispose()


def test_db_stamp_of_an_unknown_revision_is_one_line_with_status_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CLI), "db", "stamp", "9999", "--db", _migrated_sqlite(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: migration: ")
    assert "9999" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_reload_workers_says_what_it_could_do() -> None:
    assert reload_workers(None) == "skipped: no broker configured"
    unreachable = reload_workers("redis://:s3cret@127.0.0.1:1/0")
    assert unreachable.startswith("skipped: no broker reachable at redis://:***@127.0.0.1:1/0")
    assert "s3cret" not in unreachable


def test_reload_workers_with_a_broker_and_no_worker_says_none_answered() -> None:
    require_redis(QUIET_BROKER)
    line = reload_workers(QUIET_BROKER, reply_timeout=0.5)
    assert line.startswith(f"no worker answered on {QUIET_BROKER} within 0.5 s")


# A Redis database of its own, so the broadcast reaches this test's worker only.
WORKER_BROKER = "redis://127.0.0.1:6379/13"
WORKER_START_TIMEOUT_S = 30


@pytest.fixture
def running_worker(tmp_path: Path) -> Iterator[str]:
    """A real Celery worker of smart_retention.tasks on WORKER_BROKER; yields its name."""
    import os
    import uuid

    from celery import Celery

    require_redis(WORKER_BROKER)
    name = f"deploy-test-{uuid.uuid4().hex[:8]}@localhost"
    env = {
        **os.environ,
        "SMART_RETENTION_BROKER_URL": WORKER_BROKER,
        "SMART_RETENTION_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.sqlite3'}",
    }
    worker = subprocess.Popen(
        [str(CLI.parent / "celery"), "-A", "smart_retention.tasks", "worker", "--concurrency=1",
         f"--hostname={name}", "--without-heartbeat", "--without-gossip", "--without-mingle",
         "--loglevel=WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = Celery("deploy-test", broker=WORKER_BROKER, set_as_current=False)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            with client.connection_for_write() as connection:
                if client.control.ping([name], timeout=0.5, connection=connection):
                    break
        else:
            pytest.fail(f"the worker {name} did not answer within {WORKER_START_TIMEOUT_S} s")
        yield name
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def test_reload_workers_restarts_the_pool_of_a_running_worker(running_worker: str) -> None:
    line = reload_workers(WORKER_BROKER)
    assert line == f"1 worker restarting its pool ({running_worker})"


@pytest.mark.realdata
@pytest.mark.parametrize(("answer", "status"), [("y\n", 0), ("n\n", 1)])
def test_on_a_terminal_deploy_asks_once_before_deleting(
    tmp_path: Path, answer: str, status: int
) -> None:
    import os
    import pty

    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        rows = build_legacy_database(engine, tmp_path)
    finally:
        engine.dispose()
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        result = subprocess.run(
            [str(CLI), "deploy", "--backup-dir", str(tmp_path / "b"), "--db", url],
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "SMART_RETENTION_BROKER_URL": NO_BROKER},
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == status, result.stderr
    assert result.stderr.count("Delete ") == 1
    assert f"Delete {len(rows) - len(collapse_repeats(rows)):,} duplicate rows" in result.stderr
    engine = make_engine(url)
    try:
        left = len(snapshot_rows(engine))
    finally:
        engine.dispose()
    if status == 0:
        assert "confirm: confirmed" in result.stdout
        assert left == len(collapse_repeats(rows))
    else:
        assert "deploy stopped at step confirm: not confirmed" in result.stderr
        assert left == len(rows)


# --- a fresh user's mistakes (issue 8 follow-up) --------------------------------------


def _migrated_sqlite(tmp_path: Path, revision: str = "0001") -> str:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, revision)
    finally:
        engine.dispose()
    return url


@pytest.mark.parametrize("broker", ["garbage://", "redis://127.0.0.1:notaport/0"])
def test_a_broker_url_that_cannot_be_used_skips_the_reload_and_the_deploy_finishes(
    tmp_path: Path, broker: str
) -> None:
    url = _migrated_sqlite(tmp_path)

    result = runner.invoke(
        app,
        ["deploy", "--yes", "--backup-dir", str(tmp_path / "b"), "--db", url],
        env={"SMART_RETENTION_BROKER_URL": broker},
    )

    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("reload-workers:")]
    assert line.startswith("reload-workers: skipped: broker URL ")
    assert "verify: revision" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("backup: ")
    assert "Traceback" not in result.output


def test_any_failure_of_the_reload_step_is_a_skip_not_a_failed_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smart_retention.deploy as deploy_module

    def explode(_url: str | None) -> str:
        raise RuntimeError("the broker hung up")

    monkeypatch.setattr(deploy_module, "reload_workers", explode)
    engine = make_engine(_migrated_sqlite(tmp_path))
    try:
        lines: list[str] = []
        options = DeployOptions(backup_dir=tmp_path / "b", broker_url="redis://x")
        report = run_deploy(engine, options, emit=lines.append)
    finally:
        engine.dispose()
    assert "reload-workers: skipped: the broker hung up" in lines
    assert lines[-1].startswith("verify: ")
    assert report.after is not None


def test_reload_workers_with_an_unknown_transport_says_so() -> None:
    line = reload_workers("garbage://")
    assert line == "skipped: broker URL garbage:// is not usable (No such transport: garbage)"


def _start_deploy(url: str, backup_dir: Path, *extra: str, **popen: object) -> subprocess.Popen:
    import os

    return subprocess.Popen(
        [str(CLI), "deploy", "--backup-dir", str(backup_dir), *extra, "--db", url],
        env={**os.environ, "SMART_RETENTION_BROKER_URL": NO_BROKER, "PYTHONUNBUFFERED": "1"},
        text=True,
        # A suite started in the background (nohup, `cmd &`) passes SIGINT on as ignored,
        # and Python then installs no Ctrl-C handler: give the deploy a terminal's default.
        preexec_fn=_default_sigint,
        **popen,  # type: ignore[arg-type]
    )


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read_until(stream, marker: str, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    """Lines of `stream` up to the first that holds `marker` (a thread keeps it honest)."""
    import threading

    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"{marker!r} not seen in: {''.join(seen)}"
    return "".join(seen)


@pytest.mark.realdata
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_deploy_interrupted_during_the_cleanup_says_where_and_a_second_deploy_finishes(
    tmp_path: Path, signum: str
) -> None:
    import signal

    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        rows = build_legacy_database(engine, tmp_path)
    finally:
        engine.dispose()
    backups = tmp_path / "b"
    # One row per batch: the cleanup takes long enough to be caught in the middle.
    deploy = _start_deploy(
        url, backups, "--yes", "--batch-size", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _read_until(deploy.stdout, "confirm: skipped")
        time.sleep(0.5)
        deploy.send_signal(getattr(signal, signum))
        _, stderr = deploy.communicate(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()

    (first_backup,) = backups.iterdir()
    assert deploy.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "error: deploy interrupted at step cleanup; the database is consistent (each cleanup "
        "batch commits whole); run deploy again to finish, or roll back: smart-retention "
        f"rollback --backup {first_backup}"
    )
    engine = make_engine(url)
    try:
        left = len(snapshot_rows(engine))
        assert len(collapse_repeats(rows)) < left < len(rows), "stopped midway"

        again = deploy_cli(url, backups)

        assert again.exit_code == 0, again.output
        backup_line = again.stdout.splitlines()[0]
        assert f"1 earlier backup of this database in {backups} (oldest {first_backup.name})" in (
            backup_line
        )
        assert "roll back to the backup taken before its first attempt" in backup_line
        assert snapshot_rows(engine) == collapse_repeats(rows)
    finally:
        engine.dispose()


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d"])
def test_ctrl_c_or_end_of_input_at_the_question_is_a_no(tmp_path: Path, key: str) -> None:
    import os
    import pty
    import signal

    url = _migrated_sqlite(tmp_path)
    controller, terminal = pty.openpty()
    try:
        deploy = _start_deploy(
            url, tmp_path / "b", stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            # The question is written without a newline: wait for the step before it.
            _read_until(deploy.stdout, "dry-run:")
            time.sleep(0.5)
            if key == "ctrl-c":
                deploy.send_signal(signal.SIGINT)
            else:
                os.write(controller, b"\x04")
            _, stderr = deploy.communicate(timeout=60)
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait()
    finally:
        os.close(terminal)
        os.close(controller)

    assert deploy.returncode == 1, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "error: deploy stopped at step confirm: not confirmed; nothing deleted" in stderr


def test_an_interrupt_at_the_question_is_a_no(tmp_path: Path) -> None:
    def interrupt(_question: str) -> bool:
        raise KeyboardInterrupt

    engine = make_engine(_migrated_sqlite(tmp_path))
    try:
        options = DeployOptions(backup_dir=tmp_path / "b", confirm=interrupt)
        with pytest.raises(DeployFailed, match=r"^deploy stopped at step confirm: not confirmed"):
            run_deploy(engine, options, emit=lambda _line: None)
    finally:
        engine.dispose()


def test_the_question_takes_an_abort_as_a_no(monkeypatch: pytest.MonkeyPatch) -> None:
    from smart_retention import cli_deploy

    def abort(*_args: object, **_kwargs: object) -> bool:
        raise cli_deploy.typer.Abort

    monkeypatch.setattr(cli_deploy.typer, "confirm", abort)
    assert cli_deploy._ask("Delete?") is False


# (arguments, message on stderr); {file}, {folder}, {missing} and {db} are filled in.
FRESH_USER_MISTAKES = [
    (["backup", "--out", "{file}", "--db", "{db}"],
     "error: backup folder {file} is a file, not a folder; give --out (or --backup-dir) a "
     "folder; nothing was done"),
    (["backup", "--out", "{file}/sub", "--db", "{db}"],
     "error: backup folder {file}/sub lies under {file}, a file, not a folder"),
    (["backup", "--out", "/proc/nope", "--db", "{db}"],
     "error: backup folder /proc/nope cannot be created: "),
    (["backup", "--out", "/sys", "--db", "{db}"],
     "error: cannot write a backup into the folder /sys: "),
    (["backup", "--db", "sqlite:///{folder}"],
     "error: SQLite database {folder} is a folder, not a database file"),
    (["deploy", "--yes", "--backup-dir", "{file}", "--db", "{db}"],
     "error: backup folder {file} is a file, not a folder"),
    (["db", "stamp", "", "--db", "{db}"],
     "error: db stamp needs a revision, e.g. 0001 (an empty one was given)"),
    (["deploy", "--yes", "--db", "mysql://x@localhost/db"],
     "error: database URL mysql://x@localhost/db: mysql is not supported; only sqlite and "
     "postgresql are"),
    (["db", "upgrade", "--db", "mysql://x@localhost/db"],
     "error: database URL mysql://x@localhost/db: mysql is not supported"),
    (["db", "upgrade", "--db", "postgresql+psycopg2://x@localhost/db"],
     "error: database URL postgresql+psycopg2://x@localhost/db: driver psycopg2 is not "
     "supported; PostgreSQL is reached through psycopg 3"),
    (["stats", "--db", "postgresql+asyncpg://x@localhost/db"],
     "error: database URL postgresql+asyncpg://x@localhost/db: driver asyncpg is not "
     "supported"),
    (["db", "upgrade", "--db", ""],
     "error: --db is empty; give a database URL, or leave --db out to use "
     "SMART_RETENTION_DATABASE_URL"),
    (["db", "upgrade", "--db", "postgresql://x@localhost:5432/"],
     "error: database URL postgresql+psycopg://x@localhost:5432/ names no database; end it "
     "with /DBNAME"),
    (["stats", "--db", "postgresql://x:secret@localhost:abc/db"],
     "error: database URL cannot be read (invalid literal for int() with base 10: 'abc'); "
     "check its host and port"),
    (["deploy", "--yes", "--batch-size", "99999999999999999999", "--db", "{db}"],
     "1000000"),
    (["db", "stamp", "0001", "--db", "sqlite:///{missing}"],
     "error: SQLite database {missing} does not exist (nothing was created)"),
    (["db", "current", "--db", "sqlite:///{missing}"],
     "error: SQLite database {missing} does not exist (nothing was created)"),
    (["backup", "--db", "sqlite:///{missing}"],
     "error: SQLite database {missing} does not exist (nothing was created)"),
    (["rollback", "--yes", "--backup", "{file}", "--db", "sqlite:///{missing}"],
     "error: SQLite database {missing} does not exist (nothing was created)"),
    (["db", "stamp", "0002", "--db", "{db}"],
     "error: refusing to stamp revision 0002: the database's tables are not that revision's "
     "(channels lacks columns access_hash, deferred_until; post_metrics_checks lacks columns "
     "deferred_until, miss_count, missing_since); nothing was changed"),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "message"), FRESH_USER_MISTAKES)
def test_a_fresh_users_mistake_is_one_line_with_status_2_and_changes_nothing(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    import os

    db_file = tmp_path / "live.sqlite3"
    url = _migrated_sqlite(tmp_path)
    engine = make_engine(url)
    try:
        before = database_state(engine)
    finally:
        engine.dispose()
    names = {
        "file": tmp_path / "a-file",
        "folder": tmp_path / "a-folder",
        "missing": tmp_path / "missing.sqlite3",
        "db": url,
    }
    names["file"].write_text("not a folder")
    names["folder"].mkdir()
    listing = sorted(os.listdir(tmp_path))

    result = subprocess.run(
        [str(CLI), *(argument.format(**names) for argument in arguments)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "SMART_RETENTION_BROKER_URL": NO_BROKER},
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message.format(**names) in result.stderr
    if message.startswith("error: "):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == listing, "nothing created, nothing removed"
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        assert database_state(engine) == before
    finally:
        engine.dispose()


def test_db_stamp_with_force_records_a_revision_the_tables_do_not_match(tmp_path: Path) -> None:
    url = _migrated_sqlite(tmp_path)

    result = runner.invoke(app, ["db", "stamp", "0002", "--force", "--db", url])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "database stamped at revision 0002"


def test_a_backup_dir_that_is_a_file_fails_the_backup_step_without_a_traceback_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The command line refuses it before starting; the function on its own says so at
    the backup step, as an expected failure (no traceback logged)."""
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    engine = make_engine(_migrated_sqlite(tmp_path))
    try:
        with pytest.raises(DeployFailed, match=r"at step backup: backup folder .* is a file"):
            run_deploy(engine, DeployOptions(backup_dir=file), emit=lambda _line: None)
    finally:
        engine.dispose()
    assert not [record for record in caplog.records if record.exc_info]
