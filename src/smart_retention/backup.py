"""Backups taken before a deploy, checked before they count, and restored by a rollback.

Design note. A backup exists to undo a deploy on production data, so a backup that does
not restore is worse than none: it makes the deploy look safe. Hence:

- A new backup is written under a temporary name (`.smart-retention-<random>.partial`)
  in the backup folder and given its final, timestamped name only once verified. A failed, empty
  or unreadable dump is deleted and reported (`BackupFailed`, exit status 1); an earlier
  good backup is never replaced, renamed or deleted.
- PostgreSQL: `pg_dump -Fc` of the one schema the URL points at (its search_path's first
  schema, as the server resolves it: `current_schema()`, usually `public`). Before
  dumping, pg_dump's major version is compared with the server's: a pg_dump older than
  the server cannot dump it faithfully and stops the backup with both versions named; a
  newer one is fine (PostgreSQL's own rule). Verified when `pg_restore --list` reads the
  archive, the file is not trivially small, and every table the schema held is in it.
- SQLite: the online backup API (`sqlite3.Connection.backup`), a consistent copy even
  while a collector writes. Verified by `PRAGMA integrity_check` and by every table of
  the database being in the copy. The copy is switched to the rollback journal, so it is
  one self-contained file.
- Connection details go to the PostgreSQL tools as a libpq connection string without the
  password; the password goes in PGPASSWORD, never on a command line others can read.

Restore. PostgreSQL: in ONE transaction (`psql --single-transaction`), every table, view,
sequence, type and routine of the schema is dropped (objects of extensions excepted, as
pg_dump leaves those out) and the archive is replayed; the schema object itself stays.
Any error rolls the whole restore back and leaves the database as it was. SQLite: the
backup API in the other direction, which replaces the database's pages in one
transaction. Either way the schema and its rows end exactly as they were when the backup
was taken, including tables created since (dropped) and Alembic's version table.
"""

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from psycopg.conninfo import make_conninfo
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL

from smart_retention.errors import UserError
from smart_retention.storage.engine import display_url

log = logging.getLogger(__name__)

DEFAULT_BACKUP_DIR = Path("smart-retention-backups")
FILE_PREFIX = "smart-retention"
# A custom-format archive's header and table of contents alone take more than this: a
# smaller file is a dump that was cut off or never written.
MIN_DUMP_BYTES = 512
PG_DUMP_MAGIC = b"PGDMP"
SQLITE_MAGIC = b"SQLite format 3\x00"
# PostgreSQL 10 and later number versions major * 10000 + minor.
VERSION_NUM_MAJOR = 10_000
# How long a PostgreSQL tool may run before the step is called failed (a day: a dump of a
# very large schema is slow, but a hung tool must not hang a deploy for ever).
TOOL_TIMEOUT_S = 24 * 3600
# Backups of one database within one second get -2, -3, ... up to this.
PUBLISH_ATTEMPTS = 100
# How long the restore waits for a table a collector or the API is using before it gives
# up (and rolls back): stop the workers first, see docs/deploy.md.
RESTORE_LOCK_TIMEOUT = "30s"
# How long a SQLite restore waits for another writer to let go of the database, and how
# long each try waits before the next (SQLite's busy timeout of the restoring connection).
SQLITE_RESTORE_WAIT_S = 30.0
SQLITE_BUSY_STEP_S = 1.0
# URL query keys that are SQLAlchemy's or psycopg's own, not libpq connection keywords.
NOT_LIBPQ_KEYS = frozenset({"client_encoding", "prepare_threshold", "autocommit"})


class BackupFailed(UserError):
    """A backup could not be taken or did not pass verification; no file was kept."""

    exit_code = 1


class RestoreFailed(UserError):
    """A backup could not be restored; the database is as it was before the attempt."""

    exit_code = 1


class NotABackup(RestoreFailed):
    """The file given to restore is not a smart-retention backup for this database; a
    bad argument, refused before anything is touched."""

    exit_code = 2


class BackupFolderUnusable(UserError):
    """The folder given for backups is a file, or cannot be created or written to."""


class BackupKind(StrEnum):
    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"


@dataclass(frozen=True, slots=True)
class Backup:
    """A verified backup file."""

    path: Path
    kind: BackupKind
    bytes: int
    # Tables it holds (on PostgreSQL, of the schema it was taken from).
    tables: tuple[str, ...]
    # The PostgreSQL schema it holds; None for SQLite.
    schema: str | None
    seconds: float

    def describe(self) -> str:
        where = f", schema {self.schema}" if self.schema else ""
        tables = "1 table" if len(self.tables) == 1 else f"{len(self.tables)} tables"
        return f"{self.path} ({human_size(self.bytes)}, {tables}{where}, verified)"


def check_backup_folder(out_dir: Path) -> None:
    """Refuse, before anything runs, a backup folder that is a file or lies under one."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == out_dir else f"lies under {folder}, a file"
                raise BackupFolderUnusable(
                    f"backup folder {out_dir} {what}, not a folder; give --out (or "
                    "--backup-dir) a folder; nothing was done"
                )
            return


def _prepare_folder(out_dir: Path, partial: Path) -> None:
    """Create `out_dir` and the (empty) partial file in it, or say which folder fails."""
    check_backup_folder(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BackupFolderUnusable(
            f"backup folder {out_dir} cannot be created: {error.strerror or error}; "
            "nothing was done"
        ) from None
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise BackupFolderUnusable(
            f"cannot write a backup into the folder {out_dir}: {error.strerror or error}; "
            "nothing was done"
        ) from None


def take_backup(engine: Engine, out_dir: Path = DEFAULT_BACKUP_DIR) -> Backup:
    """Write a verified backup of `engine`'s database into `out_dir`; see the module note."""
    started = time.perf_counter()
    kind = _kind_of_engine(engine)
    partial = out_dir / f".{FILE_PREFIX}-{uuid.uuid4().hex}.partial"
    _prepare_folder(out_dir, partial)
    try:
        if kind is BackupKind.POSTGRESQL:
            tables, schema = _dump_postgres(engine, partial)
        else:
            tables, schema = _copy_sqlite(engine, partial), None
        size = partial.stat().st_size
        final = _publish(partial, engine, out_dir, kind, schema)
    finally:
        partial.unlink(missing_ok=True)
    backup = Backup(final, kind, size, tables, schema, time.perf_counter() - started)
    log.info(
        "backup.done path=%s kind=%s bytes=%d tables=%d seconds=%.2f",
        final,
        kind,
        size,
        len(tables),
        backup.seconds,
    )
    return backup


def _publish(
    partial: Path, engine: Engine, out_dir: Path, kind: BackupKind, schema: str | None
) -> Path:
    """Give the verified file its backup name: `smart-retention-<database>[-<schema>]-<UTC
    time>.<ext>`. A hard link never replaces an existing file (a backup taken the same
    second by another run keeps its name; this one takes the next free one)."""
    if kind is BackupKind.POSTGRESQL:
        label, suffix = engine.url.database or "postgres", ".dump"
        if schema and schema != "public":
            label = f"{label}-{schema}"
    else:
        label, suffix = Path(engine.url.database or "sqlite").stem, ".sqlite3"
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        extra = "" if attempt == 1 else f"-{attempt}"
        final = out_dir / f"{FILE_PREFIX}-{label}-{stamp}{extra}{suffix}"
        try:
            os.link(partial, final)
        except FileExistsError:
            continue
        return final
    raise BackupFailed(f"{PUBLISH_ATTEMPTS} backups named {final.name} and before exist already")


# The table every smart-retention database has had since its first revision: a file
# without it is not a backup of one, whatever else it holds.
SNAPSHOT_TABLE = "post_metrics"


def check_backup(engine: Engine, path: Path) -> list[str]:
    """Refuse (`NotABackup`, status 2) a file that is no backup of smart-retention for
    this database: missing, a folder, empty, of the other kind, or without the snapshot
    table. Returns warnings worth a line (a dump of another database's name)."""
    if path.is_dir():
        raise NotABackup(f"{path} is a folder, not a backup file; nothing was restored")
    if not path.is_file():
        raise NotABackup(f"backup file {path} does not exist; nothing was restored")
    if path.stat().st_size == 0:
        raise NotABackup(f"backup file {path} is empty, not a backup; nothing was restored")
    kind = _kind_of_engine(engine)
    found = backup_kind_of_file(path)
    if found is not kind:
        what = f"a {found} backup" if found else "neither a pg_dump archive nor a SQLite file"
        raise NotABackup(
            f"backup file {path} is {what}, but the database {_where(engine)} is {kind}; "
            "nothing was restored"
        )
    if kind is BackupKind.SQLITE:
        try:
            backup = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = _sqlite_tables(backup)
            finally:
                backup.close()
        except sqlite3.Error as failure:
            raise NotABackup(
                f"backup file {path} cannot be read as SQLite ({failure}); nothing was restored"
            ) from None
        _require_snapshot_table(path, SNAPSHOT_TABLE in tables, tables)
        return []
    listing = _run(
        [pg_tool("pg_restore"), "--list", str(path)],
        env=None,
        what=f"pg_restore --list {path}",
        error=NotABackup,
    ).stdout
    toc = parse_toc(listing)
    tables = tuple(sorted(name for _, name in toc.tables))
    _require_snapshot_table(path, SNAPSHOT_TABLE in tables, tables)
    warnings = []
    source, target = toc.dbname, engine.url.database
    if source is not None and target is not None and source != target:
        warnings.append(
            f"backup file {path} was dumped from database {source}, not from {target}, "
            "the database it is restored into"
        )
    return warnings


def _require_snapshot_table(path: Path, present: bool, tables: tuple[str, ...]) -> None:
    if present:
        return
    held = f"it holds only {', '.join(tables)}" if tables else "it holds no table"
    raise NotABackup(
        f"backup file {path} is not a smart-retention backup: no {SNAPSHOT_TABLE} table "
        f"({held}); nothing was restored"
    )


# A published backup's name: smart-retention-<label>-<UTC time>[-<n>].<ext>.
_BACKUP_NAME = re.compile(
    r"^(?P<head>.+-)(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?(?P<ext>\.[a-z0-9]+)$"
)


def earlier_backups(backup: Path) -> list[Path]:
    """The other backups of the same database (same label) in `backup`'s folder, oldest
    first: after an interrupted deploy, the oldest of a series is the one that holds the
    database as it was before the first attempt."""
    match = _BACKUP_NAME.match(backup.name)
    if match is None or not backup.parent.is_dir():
        return []
    found = []
    for other in backup.parent.iterdir():
        twin = _BACKUP_NAME.match(other.name)
        if (
            twin is not None
            and other != backup
            and twin.group("head") == match.group("head")
            and twin.group("ext") == match.group("ext")
        ):
            found.append((twin.group("stamp"), int(twin.group("n") or 1), other))
    return [path for _, _, path in sorted(found)]


def restore_backup(engine: Engine, path: Path) -> None:
    """Put the database back exactly as `path` holds it, in one transaction."""
    for warning in check_backup(engine, path):
        log.info("backup.restore_warning %s", warning)
    kind = _kind_of_engine(engine)
    started = time.perf_counter()
    if kind is BackupKind.POSTGRESQL:
        _restore_postgres(engine, path)
    else:
        _restore_sqlite(engine, path)
    log.info(
        "backup.restored path=%s kind=%s seconds=%.2f", path, kind, time.perf_counter() - started
    )


def backup_kind_of_file(path: Path) -> BackupKind | None:
    """What a file holds, from its first bytes: a pg_dump archive or a SQLite database."""
    with path.open("rb") as file:
        head = file.read(len(SQLITE_MAGIC))
    if head.startswith(PG_DUMP_MAGIC):
        return BackupKind.POSTGRESQL
    if head == SQLITE_MAGIC:
        return BackupKind.SQLITE
    return None


def _kind_of_engine(engine: Engine) -> BackupKind:
    try:
        return BackupKind(engine.dialect.name)
    except ValueError:
        raise BackupFailed(f"database {engine.dialect.name!r} is not supported") from None


def _where(engine: Engine) -> str:
    return display_url(engine.url)


def human_size(size: int) -> str:
    """Bytes for a person: KiB below a MiB, so a small backup does not read as 0.0 MiB."""
    if size < 2**20:
        return f"{size / 2**10:,.1f} KiB"
    return f"{size / 2**20:,.1f} MiB"


# --- PostgreSQL ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgTarget:
    """What the PostgreSQL tools need to reach the schema a URL points at."""

    conninfo: str
    env: dict[str, str]
    schema: str


def postgres_target(engine: Engine) -> PgTarget:
    """The URL as a libpq connection string (no password) and environment, and its schema."""
    env = dict(os.environ)
    password = engine.url.password or engine.url.query.get("password")
    if password is not None:
        env["PGPASSWORD"] = password if isinstance(password, str) else password[-1]
    with engine.connect() as connection:
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
    if schema is None:
        raise BackupFailed(
            f"database {_where(engine)}: no schema of its search_path exists; "
            "create it or fix the URL's search_path"
        )
    return PgTarget(libpq_conninfo(engine.url), env, schema)


def libpq_conninfo(url: URL) -> str:
    """The URL's connection keywords in libpq's `key=value` form, the password left out."""
    params: dict[str, str] = {}
    for key, value in url.query.items():
        # A password in the query goes to PGPASSWORD (postgres_target), never here.
        if key in NOT_LIBPQ_KEYS or key == "password":
            continue
        params[key] = value if isinstance(value, str) else value[-1]
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("dbname", url.database),
    ):
        if value is not None:
            params[key] = str(value)
    return make_conninfo("", **params)


def pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupFailed(
            f"{name} is not on PATH; install the PostgreSQL client tools of the server's "
            "major version (e.g. the postgresql-client package) or put them first on PATH"
        )
    return found


def tool_version(executable: str) -> tuple[int, str]:
    """(major, full version) as `executable --version` prints it, e.g. (15, '15.20')."""
    result = _run([executable, "--version"], env=None, what=f"{executable} --version")
    match = re.search(r"\d+(?:\.\d+)*", result.stdout)
    if match is None:
        raise BackupFailed(f"{executable} --version printed no version: {result.stdout!r}")
    return int(match.group(0).split(".")[0]), match.group(0)


def server_version(engine: Engine) -> tuple[int, str]:
    with engine.connect() as connection:
        number = int(connection.execute(text("SHOW server_version_num")).scalar_one())
        shown = connection.execute(text("SHOW server_version")).scalar_one()
    return number // VERSION_NUM_MAJOR, str(shown).split()[0]


def check_pg_dump_version(engine: Engine, pg_dump: str) -> None:
    """Stop when pg_dump is older than the server: it may miss what the server has."""
    dump_major, dump_version = tool_version(pg_dump)
    server_major, shown = server_version(engine)
    if dump_major < server_major:
        raise BackupFailed(
            f"pg_dump version mismatch: {pg_dump} is version {dump_version}, the server is "
            f"PostgreSQL {shown}; pg_dump must be of version {server_major} or newer "
            "(install that version's client tools or put them first on PATH)"
        )


def _schema_tables(engine: Engine, schema: str) -> tuple[str, ...]:
    return tuple(sorted(inspect(engine).get_table_names(schema=schema)))


def _dump_postgres(engine: Engine, partial: Path) -> tuple[tuple[str, ...], str]:
    pg_dump = pg_tool("pg_dump")
    pg_restore = pg_tool("pg_restore")
    check_pg_dump_version(engine, pg_dump)
    target = postgres_target(engine)
    tables = _schema_tables(engine, target.schema)
    _run(
        [
            pg_dump,
            "--format=custom",
            f"--schema={target.schema}",
            f"--file={partial}",
            "--no-password",
            f"--dbname={target.conninfo}",
        ],
        env=target.env,
        what="pg_dump",
        error=BackupFailed,
    )
    verify_postgres_dump(partial, pg_restore, tables, target.schema)
    return tables, target.schema


def verify_postgres_dump(path: Path, pg_restore: str, tables: tuple[str, ...], schema: str) -> None:
    """The archive reads, is not trivially small, and holds every table of the schema."""
    if not path.exists():
        raise BackupFailed(f"pg_dump wrote no file at {path}; no backup was kept")
    size = path.stat().st_size
    if size < MIN_DUMP_BYTES:
        raise BackupFailed(
            f"pg_dump wrote {size} bytes to {path}, less than the {MIN_DUMP_BYTES} bytes of "
            "any real archive; no backup was kept"
        )
    listing = _run(
        [pg_restore, "--list", str(path)], env=None, what="pg_restore --list", error=BackupFailed
    ).stdout
    toc = parse_toc(listing)
    missing = [name for name in tables if (schema, name) not in toc.tables]
    if missing:
        raise BackupFailed(
            f"the dump {path} lacks tables of schema {schema}: {', '.join(missing)}; "
            "no backup was kept"
        )


@dataclass(frozen=True, slots=True)
class Toc:
    """What `pg_restore --list` says an archive holds."""

    schemas: tuple[str, ...]
    tables: frozenset[tuple[str, str]]
    lines: tuple[str, ...]
    # The database the archive was dumped from (the header's "dbname:"), if it says.
    dbname: str | None = None


# An entry: "<id>; <catalog oid> <object oid> <TYPE WORDS> <schema or -> <name> <owner>".
_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")


_TOC_DBNAME = re.compile(r"^;\s+dbname:\s*(?P<name>.*?)\s*$")


def parse_toc(listing: str) -> Toc:
    schemas, tables = [], set()
    dbname = None
    lines = tuple(listing.splitlines())
    for line in lines:
        header = _TOC_DBNAME.match(line)
        if header is not None and dbname is None:
            dbname = header.group("name")
            continue
        entry = _TOC_ENTRY.match(line)
        if entry is None:
            continue
        rest = entry.group("rest")
        if rest.startswith("SCHEMA - "):
            schemas.append(rest.split()[2])
        elif rest.startswith("TABLE ") and not rest.startswith("TABLE DATA "):
            words = rest.split()
            tables.add((words[1], words[2]))
    return Toc(tuple(schemas), frozenset(tables), lines, dbname)


# The schema object's own entries: its creation, owner, comment and grants.
_SCHEMA_ENTRY = re.compile(r"^\d+; \d+ \d+ (SCHEMA - |COMMENT - SCHEMA |ACL - SCHEMA )")


def _restore_postgres(engine: Engine, path: Path) -> None:
    pg_restore = pg_tool("pg_restore")
    psql = pg_tool("psql")
    target = postgres_target(engine)
    listing = _run(
        [pg_restore, "--list", str(path)], env=None, what="pg_restore --list", error=RestoreFailed
    ).stdout
    toc = parse_toc(listing)
    if toc.schemas != (target.schema,):
        found = ", ".join(toc.schemas) or "none"
        raise RestoreFailed(
            f"backup {path} holds schema {found}, but the database URL points at schema "
            f"{target.schema}; restore it with a URL whose search_path is that schema. "
            "Nothing was restored"
        )
    with tempfile.TemporaryDirectory(prefix="smart-retention-restore-") as work:
        folder = Path(work)
        # The schema itself stays (it may hold grants, and `public` may not be ours to
        # drop); everything in it is dropped and replayed from the archive.
        entries = folder / "entries.list"
        entries.write_text(
            "\n".join(line for line in toc.lines if not _SCHEMA_ENTRY.match(line)) + "\n"
        )
        script = folder / "restore.sql"
        _run(
            [pg_restore, f"--use-list={entries}", f"--file={script}", str(path)],
            env=None,
            what="pg_restore",
            error=RestoreFailed,
        )
        emptying = folder / "empty-schema.sql"
        emptying.write_text(empty_schema_sql(target.schema))
        _run(
            [
                psql,
                "--no-psqlrc",
                "--quiet",
                "--no-password",
                "--single-transaction",
                "--set=ON_ERROR_STOP=1",
                f"--file={emptying}",
                f"--file={script}",
                f"--dbname={target.conninfo}",
            ],
            env=target.env,
            what="psql (restore, rolled back)",
            error=RestoreFailed,
        )


def empty_schema_sql(schema: str) -> str:
    """SQL that drops everything in `schema` a schema-only pg_dump would have dumped.

    Objects that belong to an extension are left alone: pg_dump does not dump them, and
    dropping them would break the extension. Kinds are dropped in dependency order
    (tables take their indexes, owned sequences and dependent views with them), each
    statement listing what is left of that kind at that moment.
    """
    literal = "'" + schema.replace("'", "''") + "'"
    not_extension = (
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"
    )
    relations = (
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = {literal} AND c.relkind IN ({{kinds}}) AND "
        + not_extension.format(oid="c.oid")
    )
    types = (
        "SELECT string_agg(format('%I.%I', n.nspname, t.typname), ', ') FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace "
        f"WHERE n.nspname = {literal} AND t.typtype IN ({{kinds}}) AND t.typelem = 0 "
        "AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid)"
        " = 'c') AND " + not_extension.format(oid="t.oid")
    )
    routines = (
        "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE n.nspname = {literal} AND p.prokind IN ('f', 'p') AND "
        + not_extension.format(oid="p.oid")
    )
    steps = [
        ("MATERIALIZED VIEW", relations.format(kinds="'m'")),
        ("VIEW", relations.format(kinds="'v'")),
        ("FOREIGN TABLE", relations.format(kinds="'f'")),
        ("TABLE", relations.format(kinds="'r', 'p'")),
        ("SEQUENCE", relations.format(kinds="'S'")),
        ("DOMAIN", types.format(kinds="'d'")),
        # Ranges take their multiranges with them; arrays go with their element type.
        ("TYPE", types.format(kinds="'e', 'c', 'r'")),
        ("ROUTINE", routines),
    ]
    body = "\n".join(
        f"  SELECT ({query}) INTO names;\n"
        f"  IF names IS NOT NULL THEN EXECUTE 'DROP {kind} IF EXISTS ' || names || ' CASCADE';"
        " END IF;"
        for kind, query in steps
    )
    return (
        "-- smart-retention rollback: empty the schema, then the archive replays it.\n"
        # Waiting for a busy table's lock would queue every other query behind the restore.
        f"SET lock_timeout = '{RESTORE_LOCK_TIMEOUT}';\n"
        "DO $empty$\nDECLARE names text;\nBEGIN\n" + body + "\nEND\n$empty$;\n"
    )


def _run(
    command: list[str],
    *,
    env: dict[str, str] | None,
    what: str,
    error: type[UserError] = BackupFailed,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool; a failure becomes `error` with the tool's first error line."""
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
        )
    except OSError as failure:
        raise error(f"{what} could not be started: {failure}") from None
    except subprocess.TimeoutExpired:
        raise error(f"{what} did not finish within {TOOL_TIMEOUT_S} s") from None
    if result.returncode != 0:
        raise error(f"{what} exited with status {result.returncode}: {_first_error(result)}")
    return result


def _first_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or "").splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "fatal" in line.lower():
            return line
    return lines[0] if lines else "no message"


# --- SQLite --------------------------------------------------------------------------


def sqlite_path(engine: Engine) -> Path:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupFailed(
            f"database {_where(engine)} is not a SQLite file; only a file can be backed up"
        )
    return Path(database)


def _sqlite_tables(connection: sqlite3.Connection) -> tuple[str, ...]:
    rows = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return tuple(sorted(row[0] for row in rows))


def _copy_sqlite(engine: Engine, partial: Path) -> tuple[str, ...]:
    source_path = sqlite_path(engine)
    if not source_path.exists():
        raise BackupFailed(f"SQLite database {source_path} does not exist")
    source = sqlite3.connect(source_path)
    try:
        copy = sqlite3.connect(partial)
        try:
            source.backup(copy)
            # One self-contained file: no -wal beside it when it is opened later.
            copy.execute("PRAGMA journal_mode=DELETE")
            tables = _sqlite_tables(source)
        finally:
            copy.close()
    except sqlite3.Error as failure:
        raise BackupFailed(f"SQLite backup of {source_path} failed: {failure}") from None
    finally:
        source.close()
    verify_sqlite_copy(partial, tables)
    return tables


def verify_sqlite_copy(path: Path, tables: tuple[str, ...]) -> None:
    try:
        copy = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = copy.execute("PRAGMA integrity_check").fetchall()
            present = set(_sqlite_tables(copy))
        finally:
            copy.close()
    except sqlite3.Error as failure:
        raise BackupFailed(f"the SQLite backup {path} cannot be read: {failure}") from None
    if verdict != [("ok",)]:
        raise BackupFailed(f"the SQLite backup {path} fails its integrity check: {verdict[0][0]}")
    missing = [name for name in tables if name not in present]
    if missing:
        raise BackupFailed(f"the SQLite backup {path} lacks tables: {', '.join(missing)}")


class _WaitedTooLong(Exception):
    """The SQLite restore waited SQLITE_RESTORE_WAIT_S for another writer's lock."""


def _restore_sqlite(engine: Engine, path: Path) -> None:
    target_path = sqlite_path(engine)
    # Python's backup loop retries a busy database for ever: a writer that never lets go
    # (a cleanup, a stuck collector) would hang the rollback. Give up after the wait.
    deadline = time.monotonic() + SQLITE_RESTORE_WAIT_S

    def give_up_when_late(status: int, _remaining: int, _total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and (time.monotonic() > deadline):
            raise _WaitedTooLong

    try:
        backup = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            verdict = backup.execute("PRAGMA integrity_check").fetchall()
            if verdict != [("ok",)]:
                raise RestoreFailed(
                    f"backup {path} fails its integrity check ({verdict[0][0]}); "
                    "nothing was restored"
                )
            target = sqlite3.connect(target_path, timeout=SQLITE_BUSY_STEP_S)
            try:
                # Replaces every page of the target in one write transaction.
                backup.backup(target, progress=give_up_when_late)
            finally:
                target.close()
        finally:
            backup.close()
    except _WaitedTooLong:
        raise RestoreFailed(
            f"{target_path} stayed locked by another writer for {SQLITE_RESTORE_WAIT_S:g} s; "
            "stop the collectors and the API (docs/deploy.md, Rollback) and try again; "
            "nothing was restored"
        ) from None
    except sqlite3.Error as failure:
        raise RestoreFailed(f"restoring {path} into {target_path} failed: {failure}") from None
    # Connections pooled before the restore hold a stale view of the schema.
    engine.dispose()
