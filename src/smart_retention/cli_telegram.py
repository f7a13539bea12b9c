"""`smart-retention telegram ...` and `smart-retention channels ...`: the account and the
channels the Telegram source collects from.

Only `telegram login` and `channels add` talk to Telegram; `channels list` and
`channels remove` read and write the database alone. Telethon is imported inside the
commands that need it, so the rest of the command line starts without it.
"""

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from smart_retention.channels import ChannelRef, parse_channel_ref, peer_channel_id
from smart_retention.config import chosen_database_url, load_settings
from smart_retention.errors import UserError
from smart_retention.observation import utc_now
from smart_retention.sources.telegram.client import (
    CONNECTION_ERRORS,
    ResolvedChannel,
    TelethonClient,
    account_errors,
    ignore_lost_connection_futures,
    session_revoked,
    unreachable,
    with_timeout,
)
from smart_retention.sources.telegram.credentials import (
    DEFAULT_SESSION_FILE,
    SESSION_VARIABLE,
    TelegramCredentials,
    TelegramSettingError,
    check_session,
    create_private_file,
    is_string_session,
    session_file_path,
    telegram_credentials,
)
from smart_retention.storage import migrate
from smart_retention.storage.channels import (
    find_channel,
    list_channels,
    save_channel,
    untrack_channel,
)
from smart_retention.storage.engine import check_sqlite_file, make_engine, sqlite_file

telegram_app = typer.Typer(help="The Telegram account the source reads as.", no_args_is_help=True)
channels_app = typer.Typer(
    help="The Telegram channels collected from (tracked channels).", no_args_is_help=True
)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL; wins over SMART_RETENTION_DATABASE_URL."),
]
ChannelArgument = Annotated[
    str,
    typer.Argument(
        help="@username, t.me/username link, bare channel id, or -100 prefixed peer id.",
        show_default=False,
    ),
]


class TelegramRequestFailed(UserError):
    """Telegram refused a request of a command (a FloodWait, a bad code, no network)."""


class ChannelNotTracked(UserError):
    """`channels remove` names a channel that is not tracked."""


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as error:
        err_console.print(f"error: {error}", markup=False, highlight=False)
        raise typer.Exit(error.exit_code) from None


def _engine(db: str | None, *, must_exist: bool = False) -> Engine:
    """The migrated engine of --db or the setting. With `must_exist`, a SQLite path
    naming no file is refused: listing or removing channels there would create an empty
    database (adding the first channel may)."""
    url = chosen_database_url(db)
    check_sqlite_file(url, must_exist=must_exist)
    engine = make_engine(url)
    migrate.upgrade(engine)
    return engine


# --- telegram login ------------------------------------------------------------------


@telegram_app.command("login")
def login(
    session: Annotated[
        Path | None,
        typer.Option(
            "--session",
            help=f"Session file to write (default: {SESSION_VARIABLE}, else "
            f"./{DEFAULT_SESSION_FILE}).",
        ),
    ] = None,
    string: Annotated[
        bool,
        typer.Option("--string", help="Print a StringSession instead of writing a file."),
    ] = False,
    phone: Annotated[
        str | None, typer.Option("--phone", help="Phone number; asked for when not given.")
    ] = None,
) -> None:
    """Log in to Telegram (phone, code, two-step password) and save the session.

    The session file is created readable by its owner only. Whoever holds it, or the
    printed StringSession, reads Telegram as this account: keep it secret.
    """
    with _user_errors():
        settings = load_settings()
        credentials = telegram_credentials(settings, need_session=False)
        target = None if string else _session_target(session, credentials)
        who, string_session = _login(
            credentials, target, phone, settings.telegram_connect_timeout_s
        )
    err_console.print(f"logged in as {who}", markup=False, highlight=False)
    if target is not None:
        err_console.print(
            f"session saved to {target} (mode 600); set {SESSION_VARIABLE}={target}",
            markup=False,
            highlight=False,
        )
    else:
        err_console.print(
            f"the StringSession follows on standard output; set {SESSION_VARIABLE} to it "
            "and keep it secret",
            markup=False,
            highlight=False,
        )
        print(string_session)


def _session_target(given: Path | None, credentials: TelegramCredentials) -> Path:
    """The session file to write, absolute: the path printed must work from anywhere."""
    if given is not None:
        # An empty --session reaches here as "." (a Path of "" is the current folder).
        text = str(given).strip()
        if text in ("", ".") or given.is_dir():
            raise TelegramSettingError(
                f"--session {text!r} is a directory, not a file; give a file path such as "
                f"{Path(text or '.') / DEFAULT_SESSION_FILE}"
            )
        return session_file_path(text).absolute()
    if credentials.session is not None and is_string_session(credentials.session):
        raise TelegramSettingError(
            f"{SESSION_VARIABLE} holds a StringSession; log in to a file with --session PATH "
            "or print a new StringSession with --string"
        )
    return session_file_path(credentials.session or DEFAULT_SESSION_FILE).absolute()


def _login(
    credentials: TelegramCredentials,
    target: Path | None,
    phone: str | None,
    connect_timeout_s: float,
) -> tuple[str, str | None]:
    """Log in interactively; the account's name and, without a file, the StringSession.

    A session file this created is removed again when the login does not succeed: a
    file that holds no logged-in account would only mislead the next command.
    """
    from telethon.errors import RPCError
    from telethon.sessions import StringSession

    session: Any = StringSession() if target is None else str(target)
    created = target is not None and not target.exists()
    succeeded = False
    # Whatever else Telethon writes beside the session (a SQLite journal) stays private.
    previous_umask = os.umask(0o077)
    try:
        if target is not None:
            try:
                create_private_file(target)
            except OSError as error:
                raise TelegramSettingError(
                    f"cannot create the session file {target}: {error.strerror or error}"
                ) from None
        try:
            result = asyncio.run(_interactive_login(credentials, session, phone, connect_timeout_s))
        except account_errors() as error:
            raise session_revoked(error) from None
        except RPCError as error:
            raise TelegramRequestFailed(f"login failed: {error}") from None
        except sqlite3.DatabaseError as error:
            raise TelegramSettingError(
                f"session file {target} cannot be used ({error}); give another --session"
            ) from None
        except CONNECTION_ERRORS as error:
            raise unreachable(error, connect_timeout_s) from None
        succeeded = True
        return result
    finally:
        os.umask(previous_umask)
        if target is not None:
            if created and not succeeded:
                for leftover in (target, target.with_name(target.name + "-journal")):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            elif target.exists():
                target.chmod(0o600)


async def _interactive_login(
    credentials: TelegramCredentials, session: Any, phone: str | None, connect_timeout_s: float
) -> tuple[str, str | None]:
    from telethon import TelegramClient
    from telethon.sessions import StringSession

    ignore_lost_connection_futures(asyncio.get_running_loop())
    client = TelegramClient(
        session,
        credentials.api_id,
        credentials.api_hash,
        receive_updates=False,
        timeout=max(1, int(connect_timeout_s / 3)),
    )
    try:
        # Connecting and the first request have a time limit; the prompts do not.
        await with_timeout(client.connect(), connect_timeout_s)
        await with_timeout(client.is_user_authorized(), connect_timeout_s)
        await client.start(
            phone=phone or (lambda: typer.prompt("Phone number (international, e.g. +4412345)")),
            code_callback=lambda: typer.prompt("Login code Telegram sent you"),
            password=lambda: typer.prompt("Two-step verification password", hide_input=True),
        )
        me = await client.get_me()
        name = f"@{me.username}" if getattr(me, "username", None) else f"user {me.id}"
        string = StringSession.save(client.session) if isinstance(session, StringSession) else None
        return name, string
    finally:
        # Already failing or done: a failed disconnect adds nothing worth showing.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)


# --- channels ------------------------------------------------------------------------


# A -100 peer id looks like an option to the parser; let it through as the argument.
NEGATIVE_IDS = {"ignore_unknown_options": True}


@channels_app.command("add", context_settings=NEGATIVE_IDS)
def add_channel(channel: ChannelArgument, db: DbOption = None) -> None:
    """Track a channel: resolve it once and store its id, username, title and access hash,
    so collection never looks its name up again."""
    with _user_errors():
        ref = parse_channel_ref(channel)
        credentials = telegram_credentials(load_settings())
        # The account before the database: a bad setting creates and migrates nothing.
        check_session(credentials.session or "")
        engine = _engine(db)
        resolved = resolve_channel(credentials, ref)
        with engine.begin() as connection:
            save_channel(
                connection,
                resolved.channel_id,
                access_hash=resolved.access_hash,
                username=resolved.username,
                title=resolved.title,
                now=utc_now(),
            )
    console.print(
        f"tracking channel {resolved.channel_id} (peer id {peer_channel_id(resolved.channel_id)})"
        f"{_named(resolved.username, resolved.title)}",
        markup=False,
        highlight=False,
    )


def resolve_channel(credentials: TelegramCredentials, ref: ChannelRef) -> ResolvedChannel:
    """Resolve `ref` with one short connection to Telegram."""
    from telethon.errors import FloodError, RPCError

    settings = load_settings()
    client = TelethonClient(
        credentials,
        connect_timeout_s=settings.telegram_connect_timeout_s,
        request_timeout_s=settings.telegram_request_timeout_s,
        auto_reconnect=False,
    )

    async def resolve() -> ResolvedChannel:
        try:
            return await client.resolve_channel(ref)
        finally:
            await client.disconnect()

    try:
        return asyncio.run(resolve())
    except account_errors() as error:
        raise session_revoked(error) from None
    except FloodError as error:
        seconds = getattr(error, "seconds", None)
        raise TelegramRequestFailed(
            f"channel {ref}: Telegram asks to wait {seconds} s before the next lookup "
            "(FloodWait); username lookups are limited, try again later"
        ) from None
    except RPCError as error:
        raise TelegramRequestFailed(f"channel {ref}: Telegram refused: {error}") from None
    except CONNECTION_ERRORS as error:
        raise unreachable(error, settings.telegram_connect_timeout_s) from None


@channels_app.command("list")
def list_tracked(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    db: DbOption = None,
) -> None:
    """The tracked channels, with their posts and any rate-limit deferral."""
    with _user_errors():
        url = chosen_database_url(db)
        missing = sqlite_file(url)
        if missing is not None and not missing.exists():
            # Nothing is tracked in a database that is not there; listing creates none.
            if as_json:
                print("[]")
            else:
                console.print(
                    f"no tracked channels (no database at {missing} yet); add one with "
                    "'smart-retention channels add @name'",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            return
        engine = _engine(url)
        with engine.connect() as connection:
            listings = list_channels(connection)
    rows = [
        {
            "channel_id": item.channel.channel_id,
            "peer_id": peer_channel_id(item.channel.channel_id),
            "username": item.channel.username,
            "title": item.channel.title,
            "posts": item.posts,
            "last_msg_id": item.channel.last_msg_id,
            "deferred_until": _iso(item.channel.deferred_until),
            "added_at": _iso(item.added_at),
        }
        for item in listings
    ]
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        console.print("no tracked channels; add one with 'smart-retention channels add @name'")
        return
    columns = (
        "channel_id",
        "peer_id",
        "username",
        "title",
        "posts",
        "last_msg_id",
        "deferred_until",
    )
    cells = [["" if row[name] is None else str(row[name]) for name in columns] for row in rows]
    table = Table(title="tracked channels")
    for name in columns:
        table.add_column(
            name,
            justify="right" if name in ("posts", "last_msg_id") else "left",
            # Ids are copied from here: never wrapped; the other columns give way.
            no_wrap=name in WHOLE_COLUMNS,
        )
    for values in cells:
        table.add_row(*values)
    with console.capture() as captured:
        console.print(table)
    rendered = captured.get()
    whole = [
        value
        for values in cells
        for name, value in zip(columns, values, strict=True)
        if name in WHOLE_COLUMNS and value
    ]
    if all(value in rendered for value in whole):
        console.print(table)
        return
    # Too narrow for the table without cutting an id: one "name: value" line each.
    for number, values in enumerate(cells):
        if number:
            console.print("", markup=False)
        for name, value in zip(columns, values, strict=True):
            console.print(f"{name}: {value}", markup=False, highlight=False, soft_wrap=True)


# The columns whose values are printed whole or the table is not used.
WHOLE_COLUMNS = ("channel_id", "peer_id", "username", "last_msg_id")


@channels_app.command("remove", context_settings=NEGATIVE_IDS)
def remove_channel(
    channel: ChannelArgument,
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also delete its posts, snapshots and check rows."),
    ] = False,
    db: DbOption = None,
) -> None:
    """Stop collecting from a channel. What was collected stays unless --purge; its posts
    are no longer polled (their deleted_at is set), and adding it again resumes them."""
    with _user_errors():
        ref = parse_channel_ref(channel)
        engine = _engine(db, must_exist=True)
        with engine.begin() as connection:
            found = find_channel(connection, ref)
            if found is None:
                raise ChannelNotTracked(
                    f"no tracked channel matches {ref}; see 'smart-retention channels list'"
                )
            untrack_channel(connection, found.channel_id, utc_now(), purge=purge)
    what = "removed with everything collected" if purge else "no longer tracked (data kept)"
    console.print(
        f"channel {found.channel_id}{_named(found.username, found.title)}: {what}",
        markup=False,
        highlight=False,
    )


def _named(username: str | None, title: str | None) -> str:
    parts = ([f"@{username}"] if username else []) + ([repr(title)] if title else [])
    return f" {' '.join(parts)}" if parts else ""


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()
