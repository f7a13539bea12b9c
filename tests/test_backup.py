"""Backups (backup.py): verified before they count, never replacing a good one, and
restored exactly, on SQLite and on real PostgreSQL with the real pg_dump.

Failing, empty and mismatched pg_dumps are real executables put first on PATH: the test
is of how a backup handles what the tool does, not a mock of the database.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from conftest import postgres_schema_url
from deploy_fixtures import (
    build_legacy_database,
    database_state,
    fake_pg_dump,
    path_with,
)
from smart_retention.backup import (
    MIN_DUMP_BYTES,
    BackupFailed,
    BackupKind,
    RestoreFailed,
    backup_kind_of_file,
    libpq_conninfo,
    parse_toc,
    restore_backup,
    take_backup,
)
from smart_retention.cli import app
from smart_retention.storage import migrate
from smart_retention.storage.adoption import migrate_to_head
from smart_retention.storage.engine import make_engine

CLI = Path(sys.executable).parent / "smart-retention"
runner = CliRunner()


def _change_everything(engine: Engine) -> None:
    """What a deploy (and more) does after a backup: migrate, delete rows, add a table."""
    migrate_to_head(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM post_metrics WHERE msg_id % 2 = 0"))
        connection.execute(text("CREATE TABLE added_later (id integer primary key)"))


@pytest.mark.realdata
def test_a_backup_restores_schema_and_rows_exactly(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    try:
        build_legacy_database(engine, tmp_path)
        original = database_state(engine)

        backup = take_backup(engine, tmp_path / "backups")

        assert backup.path.parent == tmp_path / "backups"
        assert [p.name for p in backup.path.parent.iterdir()] == [backup.path.name]
        assert set(backup.tables) == set(original.layout)
        assert backup_kind_of_file(backup.path) is BackupKind(engine.dialect.name)
        _change_everything(engine)
        assert database_state(engine) != original

        restore_backup(engine, backup.path)

        assert database_state(engine) == original
        assert migrate.current_revision(engine) is None
    finally:
        engine.dispose()


def test_a_postgres_backup_holds_only_the_urls_schema_and_restores_only_there(
    postgres_database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        backup = take_backup(engine, tmp_path)
        listing = subprocess.run(
            ["pg_restore", "--list", str(backup.path)], capture_output=True, text=True, check=True
        ).stdout
        toc = parse_toc(listing)
        assert toc.schemas == (schema,)
        assert {table_schema for table_schema, _ in toc.tables} == {schema}
        assert backup.bytes >= MIN_DUMP_BYTES

        with postgres_schema_url() as other_url:
            other = make_engine(other_url)
            try:
                with pytest.raises(RestoreFailed, match=f"holds schema {schema}, but"):
                    restore_backup(other, backup.path)
            finally:
                other.dispose()
    finally:
        engine.dispose()


@pytest.mark.parametrize("behaviour", ["fails", "empty"])
def test_a_failed_or_empty_dump_is_status_1_and_keeps_the_earlier_backup(
    postgres_database_url: str, tmp_path: Path, behaviour: str
) -> None:
    engine = make_engine(postgres_database_url)
    migrate.upgrade(engine)
    engine.dispose()
    out = tmp_path / "backups"
    good = runner.invoke(app, ["backup", "--out", str(out), "--db", postgres_database_url])
    assert good.exit_code == 0, good.output
    (earlier,) = out.iterdir()
    earlier_bytes = earlier.read_bytes()

    bad = runner.invoke(
        app,
        ["backup", "--out", str(out), "--db", postgres_database_url],
        env={"PATH": path_with(fake_pg_dump(tmp_path, behaviour))},
    )

    assert bad.exit_code == 1, bad.output
    expected = "pg_dump exited with status 1" if behaviour == "fails" else "wrote 0 bytes"
    assert expected in bad.stderr
    assert list(out.iterdir()) == [earlier], "a bad dump must leave no file behind"
    assert earlier.read_bytes() == earlier_bytes


def test_a_pg_dump_older_than_the_server_stops_with_both_versions(
    postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        with engine.connect() as connection:
            server = connection.execute(text("SHOW server_version")).scalar_one().split()[0]
        monkeypatch.setenv("PATH", path_with(fake_pg_dump(tmp_path, "old")))
        with pytest.raises(BackupFailed) as failure:
            take_backup(engine, tmp_path / "backups")
    finally:
        engine.dispose()
    message = str(failure.value)
    assert "version mismatch" in message
    assert "9.6.24" in message and f"PostgreSQL {server}" in message
    assert not list((tmp_path / "backups").iterdir())


def test_a_pg_dump_newer_than_the_server_is_fine(
    postgres_database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_database_url)
    migrate.upgrade(engine)
    engine.dispose()
    result = runner.invoke(
        app,
        ["backup", "--out", str(tmp_path / "b"), "--db", postgres_database_url],
        env={"PATH": path_with(fake_pg_dump(tmp_path, "newer"))},
    )
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout


def test_the_password_goes_to_pg_dump_in_its_environment_never_its_arguments(
    postgres_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test server trusts local connections, so any password connects; what matters
    is where pg_dump receives it."""
    from sqlalchemy.engine import make_url

    password = "not-on-the-command-line-7"
    url = make_url(postgres_database_url).set(password=password)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        migrate.upgrade(engine)
        bin_dir = fake_pg_dump(tmp_path, "records")
        monkeypatch.setenv("PATH", path_with(bin_dir))
        take_backup(engine, tmp_path / "backups")
    finally:
        engine.dispose()
    assert password not in (bin_dir / "argv").read_text()
    assert "--schema=" in (bin_dir / "argv").read_text()
    assert (bin_dir / "pgpassword").read_text() == password
    assert password not in libpq_conninfo(url)


def test_a_truncated_archive_is_not_restored_and_changes_nothing(
    postgres_database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        backup = take_backup(engine, tmp_path)
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE added_later (id integer primary key)"))
        before = database_state(engine)
        cut = tmp_path / "cut.dump"
        cut.write_bytes(backup.path.read_bytes()[: backup.bytes // 3])
        with pytest.raises(RestoreFailed):
            restore_backup(engine, cut)
        assert database_state(engine) == before
    finally:
        engine.dispose()


def test_a_sqlite_backup_is_one_self_contained_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        backup = take_backup(engine, tmp_path / "backups")
    finally:
        engine.dispose()
    assert backup.kind is BackupKind.SQLITE
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [backup.path.name]
    assert backup.path.suffix == ".sqlite3"
    assert "alembic_version" in backup.tables


def test_a_backup_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    try:
        migrate.upgrade(engine)
        not_a_backup = tmp_path / "notes.txt"
        not_a_backup.write_text("hello")
        with pytest.raises(RestoreFailed, match="neither a pg_dump archive nor a SQLite file"):
            restore_backup(engine, not_a_backup)
    finally:
        engine.dispose()


def test_rollback_without_a_terminal_and_without_yes_refuses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        backup = take_backup(engine, tmp_path / "backups")
    finally:
        engine.dispose()
    result = runner.invoke(app, ["rollback", "--backup", str(backup.path), "--db", url])
    assert result.exit_code == 2
    assert "refusing to roll back without --yes" in result.stderr


def test_a_missing_sqlite_file_is_not_backed_up(tmp_path: Path) -> None:
    """The command line says so in one line with status 2, and creates no database."""
    missing = tmp_path / "missing.sqlite3"
    result = subprocess.run(
        [str(CLI), "backup", "--out", str(tmp_path / "b"), "--db", f"sqlite:///{missing}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: SQLite database {missing} does not exist (nothing was created); "
        "check --db or SMART_RETENTION_DATABASE_URL"
    )
    assert not missing.exists()


_SCHEMA_OBJECTS = text(
    "SELECT 'relation ' || c.relkind::text || ' ' || c.relname FROM pg_class c "
    "WHERE c.relnamespace = current_schema()::regnamespace "
    "UNION ALL SELECT 'type ' || t.typtype::text || ' ' || t.typname FROM pg_type t "
    "WHERE t.typnamespace = current_schema()::regnamespace "
    "UNION ALL SELECT 'routine ' || p.proname FROM pg_proc p "
    "WHERE p.pronamespace = current_schema()::regnamespace ORDER BY 1"
)


def test_a_postgres_rollback_removes_every_kind_of_object_made_since_and_keeps_the_rest(
    postgres_database_url: str, tmp_path: Path
) -> None:
    """Views, sequences, types, domains and functions, made before the backup (restored)
    and after it (dropped)."""
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text("CREATE VIEW kept_view AS SELECT count(*) FROM posts"))
            connection.execute(text("CREATE TYPE kept_mood AS ENUM ('calm', 'busy')"))
            connection.execute(text("CREATE SEQUENCE kept_sequence"))
        with engine.connect() as connection:
            objects_before = connection.execute(_SCHEMA_OBJECTS).scalars().all()
        state_before = database_state(engine)
        backup = take_backup(engine, tmp_path)
        with engine.begin() as connection:
            connection.execute(text("DROP VIEW kept_view"))
            connection.execute(text("CREATE TYPE new_mood AS ENUM ('x')"))
            connection.execute(text("CREATE DOMAIN new_count AS bigint CHECK (VALUE >= 0)"))
            connection.execute(text("CREATE TABLE new_table (mood new_mood, n new_count)"))
            connection.execute(text("CREATE VIEW new_view AS SELECT * FROM new_table"))
            connection.execute(text("CREATE SEQUENCE new_sequence"))
            connection.execute(
                text("CREATE FUNCTION new_function() RETURNS int LANGUAGE sql AS 'SELECT 1'")
            )

        restore_backup(engine, backup.path)

        with engine.connect() as connection:
            assert connection.execute(_SCHEMA_OBJECTS).scalars().all() == objects_before
        assert database_state(engine) == state_before
    finally:
        engine.dispose()


def test_two_backups_in_the_same_second_both_keep_their_files(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'live.sqlite3'}")
    try:
        migrate.upgrade(engine)
        first = take_backup(engine, tmp_path / "b")
        first_bytes = first.path.read_bytes()
        second = take_backup(engine, tmp_path / "b")
    finally:
        engine.dispose()
    assert first.path != second.path
    assert first.path.read_bytes() == first_bytes
    assert sorted((tmp_path / "b").iterdir()) == sorted([first.path, second.path])


# --- what a rollback refuses, before anything changes ---------------------------------


def _sqlite_with(path: Path, *statements: str) -> Path:
    import sqlite3

    connection = sqlite3.connect(path)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("only foo", "backup file {} is not a smart-retention backup: no post_metrics table "
                     "(it holds only foo)"),
        ("no table", "backup file {} is not a smart-retention backup: no post_metrics table "
                     "(it holds no table)"),
        ("empty file", "backup file {} is empty, not a backup"),
        ("folder", "{} is a folder, not a backup file"),
    ],
)  # fmt: skip
def test_rollback_refuses_a_file_that_is_no_smart_retention_backup(
    tmp_path: Path, kind: str, message: str
) -> None:
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        before = database_state(engine)
        other = tmp_path / "other.sqlite3"
        if kind == "only foo":
            _sqlite_with(other, "CREATE TABLE foo (id integer)", "INSERT INTO foo VALUES (1)")
        elif kind == "no table":
            _sqlite_with(other, "PRAGMA user_version = 1")
        elif kind == "empty file":
            other.touch()
        else:
            other.mkdir()

        result = runner.invoke(app, ["rollback", "--backup", str(other), "--yes", "--db", url])

        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {message.format(other)}; nothing was restored\n"
        assert result.stdout == ""
        assert database_state(engine) == before
    finally:
        engine.dispose()


def test_a_postgres_dump_without_post_metrics_is_refused(
    postgres_database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE foo (id integer primary key)"))
        other = take_backup(engine, tmp_path / "other").path
        migrate.upgrade(engine)
        before = database_state(engine)

        result = runner.invoke(
            app, ["rollback", "--backup", str(other), "--yes", "--db", postgres_database_url]
        )

        assert result.exit_code == 2, result.output
        assert result.stderr == (
            f"error: backup file {other} is not a smart-retention backup: no post_metrics "
            "table (it holds only foo); nothing was restored\n"
        )
        assert database_state(engine) == before
    finally:
        engine.dispose()


def test_the_dump_header_names_the_database_it_came_from() -> None:
    listing = ";\n; Archive created at 2026-12-03 17:19:41 UTC\n;     dbname: prod\n;\n"
    assert parse_toc(listing).dbname == "prod"
    assert parse_toc("").dbname is None


def test_a_postgres_dump_of_another_database_warns_and_restores(
    postgres_database_url: str, tmp_path: Path
) -> None:
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    target = make_url(postgres_database_url)
    schema = target.query["options"].split("=", 1)[1]
    other_name = f"sr_other_{uuid.uuid4().hex[:8]}"
    admin = create_engine(target.set(query={}), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{other_name}"'))
    try:
        other_url = target.set(database=other_name).render_as_string(hide_password=False)
        other = make_engine(other_url)
        try:
            with other.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            migrate.upgrade(other)
            dump = take_backup(other, tmp_path / "b").path
        finally:
            other.dispose()

        result = runner.invoke(
            app, ["rollback", "--backup", str(dump), "--yes", "--db", postgres_database_url]
        )

        assert result.exit_code == 0, result.output
        assert result.stderr == (
            f"warning: backup file {dump} was dumped from database {other_name}, not from "
            f"{target.database}, the database it is restored into\n"
        )
        engine = make_engine(postgres_database_url)
        try:
            assert migrate.current_revision(engine) == migrate.heads()[0]
        finally:
            engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)'))
        admin.dispose()


def test_urls_are_shown_without_the_password_and_without_the_timezone_option() -> None:
    from smart_retention.storage.engine import display_url

    engine = make_engine("postgresql://app:s3cret@db.example/prod?options=-csearch_path%3Dx")
    try:
        assert "TimeZone" in str(engine.url.query["options"])
        shown = display_url(engine.url)
    finally:
        engine.dispose()
    assert shown == "postgresql+psycopg://app:***@db.example/prod?options=-csearch_path%3Dx"
    assert display_url("postgresql://app@db/prod") == "postgresql://app@db/prod"
    plain = make_engine("postgresql://app@db/prod")
    try:
        assert display_url(plain.url) == "postgresql+psycopg://app@db/prod"
    finally:
        plain.dispose()


def test_a_postgres_rollback_names_the_database_as_the_user_gave_it(
    postgres_database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_database_url)
    try:
        migrate.upgrade(engine)
        backup = take_backup(engine, tmp_path)
    finally:
        engine.dispose()

    result = runner.invoke(
        app, ["rollback", "--backup", str(backup.path), "--yes", "--db", postgres_database_url]
    )

    assert result.exit_code == 0, result.output
    assert "TimeZone" not in result.stdout
    assert "search_path" in result.stdout


def test_one_table_is_one_table() -> None:
    from smart_retention.backup import Backup

    one = Backup(Path("b.sqlite3"), BackupKind.SQLITE, 4096, ("foo",), None, 0.1)
    assert one.describe() == "b.sqlite3 (4.0 KiB, 1 table, verified)"


def test_a_sqlite_rollback_waits_for_a_writer_then_gives_up_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import smart_retention.backup as backup_module

    monkeypatch.setattr(backup_module, "SQLITE_RESTORE_WAIT_S", 1.0)
    monkeypatch.setattr(backup_module, "SQLITE_BUSY_STEP_S", 0.2)
    url = f"sqlite:///{tmp_path / 'live.sqlite3'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine, "0001")
        backup = take_backup(engine, tmp_path / "b")
        migrate.upgrade(engine)
        before = database_state(engine)
        writer = subprocess.Popen(
            [sys.executable, "-c",
             "import sqlite3, sys, time\n"
             f"c = sqlite3.connect({str(tmp_path / 'live.sqlite3')!r}, isolation_level=None)\n"
             "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(30)"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "held\n"
            started = time.monotonic()
            with pytest.raises(RestoreFailed, match="stayed locked by another writer for 1 s"):
                restore_backup(engine, backup.path)
            assert time.monotonic() - started < 10
        finally:
            writer.kill()
            writer.communicate()
        assert database_state(engine) == before
    finally:
        engine.dispose()
