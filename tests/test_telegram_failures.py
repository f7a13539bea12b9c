"""What fails, and how much it stops: connections, sessions and Telegram's refusals.

No network: real local sockets (a server that accepts and never answers, one that hangs
up at once), fakes that raise real Telethon errors, and Telethon itself pointed at them.
"""

import asyncio
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient as Telethon
from telethon import errors
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession, StringSession
from telethon.tl import functions
from typer.testing import CliRunner

from smart_retention import cli, cli_telegram
from smart_retention.channels import TrackedChannel
from smart_retention.observation import PostKey
from smart_retention.sources.telegram.client import (
    TelegramSessionRevoked,
    TelegramUnreachable,
    TelethonClient,
)
from smart_retention.sources.telegram.credentials import (
    TelegramCredentials,
    TelegramSettingError,
    check_session,
    open_session,
)
from smart_retention.sources.telegram.source import DEFAULT_CHANNEL_ERROR_DEFER
from smart_retention.storage import migrate
from smart_retention.storage.channels import save_channel
from smart_retention.storage.engine import make_engine
from telegram_fakes import Clock, FakeTelegram, MemoryCatalog, make_source, post

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
POSTED = NOW - timedelta(hours=2)
A, B = 1234567890, 2234567890
API_ID = "25123456"
API_HASH = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
COMMAND = str(Path(sys.executable).parent / "smart-retention")


# --- local servers and sessions pointing at them --------------------------------------


class LocalServer:
    """A TCP server on 127.0.0.1 that accepts every connection and then either holds it
    without a word (`silent`) or closes it at once."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = self.socket.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent_server() -> Iterator[LocalServer]:
    server = LocalServer(silent=True)
    yield server
    server.close()


@pytest.fixture
def hanging_up_server() -> Iterator[LocalServer]:
    server = LocalServer(silent=False)
    yield server
    server.close()


def string_session(port: int, key: bool = True) -> str:
    session = StringSession()
    session.set_dc(2, "127.0.0.1", port)
    if key:
        session.auth_key = AuthKey(bytes(range(256)))
    return session.save()


def session_file(path: Path, port: int) -> Path:
    """A session file with no auth key, pointing at the local server: what a first login
    would use (its key exchange is what the server never answers)."""
    session = SQLiteSession(str(path))
    session.set_dc(2, "127.0.0.1", port)
    session.save()
    session.close()
    return Path(str(path) if str(path).endswith(".session") else f"{path}.session")


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_ID", API_ID)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_HASH", API_HASH)
    monkeypatch.setenv("SMART_RETENTION_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_REQUEST_TIMEOUT_S", "0.5")
    return tmp_path


def run_command(*args: str, env: dict[str, str], timeout: float = 60) -> Any:
    """The installed command in a process of its own: what a user's terminal shows."""
    return subprocess.run(
        [COMMAND, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def track(database: Path, channel_id: int = A) -> None:
    engine = make_engine(f"sqlite:///{database}")
    migrate.upgrade(engine)
    with engine.begin() as connection:
        save_channel(connection, channel_id, access_hash=5, username="c", title="C", now=NOW)
    engine.dispose()


# --- item 3: nothing waits forever ----------------------------------------------------


def test_a_server_that_never_answers_times_out_connecting(silent_server: LocalServer) -> None:
    adapter = TelethonClient(
        TelegramCredentials(int(API_ID), API_HASH, string_session(silent_server.port)),
        connect_timeout_s=0.5,
    )
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TelegramUnreachable) as raised:
            loop.run_until_complete(asyncio.wait_for(adapter.connected(), 10))
    finally:
        loop.close()
    assert str(raised.value) == (
        "cannot reach Telegram: no answer within 0.5 s (set "
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S to wait longer)"
    )


def test_channels_add_against_a_silent_server_is_one_line_and_no_traceback(
    account: Path, silent_server: LocalServer
) -> None:
    env = {**os.environ, "SMART_RETENTION_TELEGRAM_SESSION": string_session(silent_server.port)}
    result = run_command("channels", "add", "@recsyschannel", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach Telegram: no answer within 0.5 s (set "
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S to wait longer)"
    ]


def test_login_against_a_silent_server_times_out_and_leaves_no_session_file(
    account: Path, silent_server: LocalServer
) -> None:
    # The key exchange of a first login is what never gets an answer.
    existing = session_file(account / "old.session", silent_server.port)
    env = {k: v for k, v in os.environ.items() if k != "SMART_RETENTION_TELEGRAM_SESSION"}
    result = run_command("telegram", "login", "--session", str(existing), "--phone", "+1", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach Telegram: no answer within 0.5 s (set "
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S to wait longer)"
    ]
    assert existing.exists()  # not created by this login: left as it was


def test_run_once_against_a_silent_server_fails_in_one_line(
    account: Path, silent_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    track(account / "db.sqlite3")
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session(silent_server.port))
    result = invoke("run", "--once", "--source", "telegram")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: cannot reach Telegram: no answer within 0.5 s (set "
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S to wait longer)"
    ]


def test_a_request_with_no_answer_times_out_naming_its_setting() -> None:
    class Silent:
        def is_connected(self) -> bool:
            return True

        async def get_messages(self, *_args: Any, **_kwargs: Any) -> list[Any]:
            await asyncio.sleep(30)
            return []

    adapter = TelethonClient.__new__(TelethonClient)
    adapter.connect_timeout_s, adapter.request_timeout_s = 5.0, 0.2
    adapter._client = Silent()
    with pytest.raises(TelegramUnreachable, match=r"no answer within 0\.2 s .*REQUEST_TIMEOUT_S"):
        asyncio.run(adapter.get_messages(None, [1]))


# --- item 2: connection failures are one line -----------------------------------------


def test_channels_add_when_the_server_hangs_up_is_one_line_without_telethon_warnings(
    account: Path, hanging_up_server: LocalServer
) -> None:
    env = {
        **os.environ,
        "SMART_RETENTION_TELEGRAM_SESSION": string_session(hanging_up_server.port),
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S": "3",
    }
    result = run_command("channels", "add", "@recsyschannel", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach Telegram: ")
    assert "Aborted" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (asyncio.IncompleteReadError(b"", 8), "the connection was closed before Telegram answered"),
        (ConnectionError("Connection to Telegram failed 5 time(s)"), "failed 5 time(s)"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
        (OSError(101, "Network is unreachable"), "Network is unreachable"),
        (TimeoutError(), "no answer"),
    ],
)
def test_every_kind_of_connection_failure_is_one_line_in_every_command(
    account: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, why: str
) -> None:
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session(1))

    class Failing(Telethon):  # type: ignore[misc]
        async def connect(self) -> None:
            raise error

    monkeypatch.setattr(
        TelethonClient, "_new_client", lambda self: Failing(StringSession(), 1, "x")
    )
    add = invoke("channels", "add", "@recsyschannel")
    assert add.exit_code == 2
    assert add.stderr.strip().startswith("error: cannot reach Telegram: ")
    assert why in add.stderr and len(add.stderr.strip().splitlines()) == 1

    track(account / "db.sqlite3")
    run = invoke("run", "--once", "--source", "telegram")
    assert run.exit_code == 2
    assert run.stderr.strip().splitlines() == [add.stderr.strip()]

    async def failing_login(*_args: Any) -> Any:
        raise error

    monkeypatch.setattr(cli_telegram, "_interactive_login", failing_login)
    login = invoke("telegram", "login", "--session", str(account / "new"), "--phone", "+1")
    assert login.exit_code == 2
    assert login.stderr.strip().splitlines() == [add.stderr.strip()]
    assert "Aborted" not in login.stderr
    # The session file the failed login created is gone again.
    assert not (account / "new.session").exists()


# --- item 1: a username nobody has ----------------------------------------------------


class ResolvingTelethon(Telethon):  # type: ignore[misc]
    """Real Telethon, offline: connected, authorized, and Telegram says the username is
    free (Telethon turns that into ValueError)."""

    async def connect(self) -> None:
        return None

    def is_connected(self) -> bool:
        return True

    async def is_user_authorized(self) -> bool:
        return True

    async def disconnect(self) -> None:
        return None

    async def __call__(
        self, request: Any, ordered: bool = False, flood_sleep_threshold: Any = None
    ) -> Any:
        if isinstance(request, functions.contacts.ResolveUsernameRequest):
            raise errors.UsernameNotOccupiedError(request=request)
        raise AssertionError(request)


def test_channels_add_of_a_username_nobody_has_is_one_line(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session(1))
    monkeypatch.setattr(
        TelethonClient, "_new_client", lambda self: ResolvingTelethon(StringSession(), 1, "x")
    )
    result = invoke("channels", "add", "@typo_name")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: no channel or user named @typo_name"]


# --- item 4: sessions Telethon cannot use ---------------------------------------------


def test_session_settings_telethon_cannot_use_are_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    not_sqlite = tmp_path / "garbage.session"
    not_sqlite.write_bytes(b"this is not a database at all, not even close" * 10)
    other_db = tmp_path / "other.session"
    connection = sqlite3.connect(other_db)
    connection.execute("create table t (x)")
    connection.commit()
    connection.close()
    folder = tmp_path / "folder.session"
    folder.mkdir()
    whole = string_session(1)
    notes = tmp_path / "notes.txt"
    notes.write_text("api id and hash, not a session\n")
    cases = {
        str(notes): "notes.txt is not a session file (session files end in .session",
        str(not_sqlite): "is not a session file (file is not a database)",
        str(other_db): "is an SQLite database but not a Telethon session",
        str(folder): "is a directory, not a session file",
        str(tmp_path / "folder"): "is a directory, not a session file",
        whole[:200]: "looks like a StringSession but cannot be decoded",
        whole[:-5]: "looks like a StringSession but cannot be decoded",
        whole[:40]: "looks like a StringSession but cannot be decoded",
    }
    for value, fragment in cases.items():
        for check in (check_session, open_session):
            with pytest.raises(TelegramSettingError) as raised:
                check(value)
            message = str(raised.value)
            assert message.startswith("SMART_RETENTION_TELEGRAM_SESSION"), message
            assert fragment in message, message
            assert "\n" not in message


def test_an_unreadable_session_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.session"
    session_file(path, 443)
    monkeypatch.setattr(os, "access", lambda *_args, **_kwargs: False)
    with pytest.raises(TelegramSettingError, match="cannot be read and written by this user"):
        open_session(str(path))


def test_an_empty_session_setting_is_not_set(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", "   ")
    result = invoke("channels", "add", "@recsyschannel")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: SMART_RETENTION_TELEGRAM_SESSION is not set")


def test_channels_add_checks_the_session_before_creating_the_database(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", str(account / "missing"))
    result = invoke("channels", "add", "@recsyschannel")
    assert result.exit_code == 2
    assert "session file" in result.stderr and "does not exist" in result.stderr
    assert not (account / "db.sqlite3").exists()


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("", "is a directory, not a file"),
        (".", "is a directory, not a file"),
        ("{tmp}", "is a directory, not a file"),
        ("{tmp}/afile/sub/x.session", "cannot create the session file"),
    ],
)
def test_login_with_an_unusable_session_path_is_one_line(
    account: Path, monkeypatch: pytest.MonkeyPatch, given: str, fragment: str
) -> None:
    (account / "afile").write_text("a file, not a folder")
    monkeypatch.delenv("SMART_RETENTION_TELEGRAM_SESSION", raising=False)

    async def never(*_args: Any) -> Any:
        raise AssertionError("no login without a usable session file")

    monkeypatch.setattr(cli_telegram, "_interactive_login", never)
    result = invoke("telegram", "login", "--session", given.format(tmp=account))
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_a_failed_login_removes_the_session_file_it_created(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMART_RETENTION_TELEGRAM_SESSION", raising=False)

    async def refused(_credentials: Any, session: Any, *_args: Any) -> Any:
        Path(session).write_bytes(b"half a session")
        Path(session + "-journal").write_bytes(b"")
        raise errors.PhoneNumberInvalidError(request=None)

    monkeypatch.setattr(cli_telegram, "_interactive_login", refused)
    result = invoke("telegram", "login", "--phone", "+1")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: login failed: ")
    assert sorted(p.name for p in account.iterdir()) == []


# --- item 5: a dropped connection is made again ---------------------------------------


class Droppable:
    """Stands in for a Telethon client whose connection Telethon gave up on."""

    def __init__(self, connects_fail: int = 0) -> None:
        self.connected = False
        self.connects = 0
        self.connects_fail = connects_fail

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        self.connects += 1
        if self.connects <= self.connects_fail:
            raise ConnectionError("Connection to Telegram failed 5 time(s)")
        self.connected = True

    async def get_messages(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        if not self.connected:
            raise ConnectionError("Cannot send requests while disconnected")
        return [post(A, 1, POSTED)]

    async def disconnect(self) -> None:
        self.connected = False


def adapter_with(client: Droppable) -> TelethonClient:
    adapter = TelethonClient.__new__(TelethonClient)
    adapter.connect_timeout_s, adapter.request_timeout_s = 1.0, 1.0
    adapter._client = client
    return adapter


def test_a_client_telethon_disconnected_is_connected_again_before_the_next_request() -> None:
    client = Droppable()
    source = make_source(adapter_with(client), MemoryCatalog([TrackedChannel(A, 5)]), Clock(NOW))  # type: ignore[arg-type]
    try:
        first = source.fetch([PostKey(A, 1)], NOW)
        assert [o.key for o in first.observations] == [PostKey(A, 1)]
        client.connected = False  # Telethon gave up reconnecting after a network outage
        second = source.fetch([PostKey(A, 1)], NOW + timedelta(minutes=10))
        assert [o.key for o in second.observations] == [PostKey(A, 1)]
        assert client.connects == 2
    finally:
        source.close()


def test_reconnecting_is_bounded_and_then_one_line() -> None:
    client = Droppable(connects_fail=100)
    source = make_source(adapter_with(client), MemoryCatalog([TrackedChannel(A, 5)]), Clock(NOW))  # type: ignore[arg-type]
    try:
        with pytest.raises(TelegramUnreachable, match="failed 5 time"):
            source.fetch([PostKey(A, 1)], NOW)
        assert client.connects == 2
        # The next run tries again: the source is not broken for good.
        client.connects_fail = 0
        assert source.fetch([PostKey(A, 1)], NOW).observations
    finally:
        source.close()


# --- item 6: one channel's failure is that channel's ----------------------------------


CHANNEL_ERRORS = [
    errors.ChannelInvalidError(request=None),
    errors.ChannelPrivateError(request=None),
    errors.ChannelBannedError(request=None),
    errors.SlowModeWaitError(request=None, capture=30),
    errors.FloodError(request=None, message="FLOOD_SOMETHING_NEW"),
    errors.MsgIdInvalidError(request=None),
    errors.RPCError(request=None, message="INTERNAL", code=500),
]


def two_channels() -> tuple[FakeTelegram, MemoryCatalog, Clock, Any]:
    telegram = FakeTelegram()
    telegram.add(*(post(channel, i, POSTED) for channel in (A, B) for i in (1, 2)))
    catalog = MemoryCatalog([TrackedChannel(A, 5), TrackedChannel(B, 6)])
    clock = Clock(NOW)
    return telegram, catalog, clock, make_source(telegram, catalog, clock)


@pytest.mark.parametrize("error", CHANNEL_ERRORS, ids=lambda e: type(e).__name__)
def test_a_channel_telegram_refuses_is_deferred_and_the_fetch_goes_on(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    telegram, _, _, source = two_channels()
    telegram.errors[1] = error
    with caplog.at_level(logging.WARNING, "smart_retention"):
        result = source.fetch([PostKey(c, i) for c in (A, B) for i in (1, 2)], NOW)
    assert result.deferred == {A: NOW + DEFAULT_CHANNEL_ERROR_DEFER}
    assert result.missing == [] and result.rejections == []
    assert [o.key for o in result.observations] == [PostKey(B, 1), PostKey(B, 2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"channel={A}" in w and type(error).__name__ in w for w in warnings), warnings


@pytest.mark.parametrize("error", CHANNEL_ERRORS, ids=lambda e: type(e).__name__)
def test_a_channel_telegram_refuses_during_discovery_is_deferred_and_the_rest_found(
    error: Exception,
) -> None:
    telegram, catalog, _, source = two_channels()
    catalog.channels = [TrackedChannel(A, 5, last_msg_id=0), TrackedChannel(B, 6, last_msg_id=0)]
    telegram.errors[1] = error
    found = list(source.discover(NOW))
    assert [info.key for info in found] == [PostKey(B, 1), PostKey(B, 2)]
    assert catalog.deferrals == [{A: NOW + DEFAULT_CHANNEL_ERROR_DEFER}]
    # A channel error is not a FloodWait: another channel failing never defers the account.
    assert source._account_until is None


@pytest.mark.parametrize(
    "error",
    [
        errors.AuthKeyUnregisteredError(request=None),
        errors.SessionRevokedError(request=None),
        errors.UserDeactivatedError(request=None),
        errors.UserDeactivatedBanError(request=None),
        errors.AuthKeyDuplicatedError(request=None),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_session_telegram_no_longer_accepts_stops_the_run_saying_to_log_in(
    error: Exception,
) -> None:
    for step in ("fetch", "discover"):
        telegram, catalog, _, source = two_channels()
        catalog.channels = [TrackedChannel(A, 5, last_msg_id=0)]
        telegram.errors[1] = error
        with pytest.raises(TelegramSessionRevoked) as raised:
            if step == "fetch":
                source.fetch([PostKey(A, 1)], NOW)
            else:
                list(source.discover(NOW))
        message = str(raised.value)
        assert type(error).__name__ in message and "smart-retention telegram login" in message
        assert "\n" not in message


@pytest.mark.parametrize(
    "error",
    [
        asyncio.IncompleteReadError(b"", 8),
        ConnectionError("Cannot send requests while disconnected"),
        OSError(101, "Network is unreachable"),
        TimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_lost_connection_fails_the_fetch_in_one_line(error: Exception) -> None:
    telegram, _, _, source = two_channels()
    telegram.errors[1] = error
    with pytest.raises(TelegramUnreachable, match=r"^cannot reach Telegram: "):
        source.fetch([PostKey(A, 1), PostKey(B, 1)], NOW)


# --- item 8: threads share a source by taking turns -----------------------------------


def test_threads_sharing_a_source_take_turns_on_its_event_loop() -> None:
    telegram, _, _, source = two_channels()
    original = telegram.get_messages

    async def slow(channel: Any, ids: Any) -> Any:
        await asyncio.sleep(0.02)
        return await original(channel, ids)

    telegram.get_messages = slow  # type: ignore[method-assign]
    results: list[Any] = []
    failures: list[BaseException] = []

    def fetch() -> None:
        try:
            for _ in range(5):
                results.append(source.fetch([PostKey(A, 1), PostKey(B, 2)], NOW))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    source.close()
    assert failures == []
    assert len(results) == 20 and all(len(r.observations) == 2 for r in results)


def test_run_once_when_the_server_keeps_hanging_up_is_one_line(
    account: Path, hanging_up_server: LocalServer
) -> None:
    """Telethon reconnects again and again, leaving a task behind each time; closing
    the source cancels them, so asyncio reports none destroyed while pending."""
    track(account / "db.sqlite3")
    env = {
        **os.environ,
        "SMART_RETENTION_TELEGRAM_SESSION": string_session(hanging_up_server.port),
        "SMART_RETENTION_TELEGRAM_CONNECT_TIMEOUT_S": "2",
    }
    result = run_command("run", "--once", "--source", "telegram", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach Telegram: "), lines[:5]


# --- item 8 and 12: `run` closes the source, and says when there is nothing to do -----


def test_run_with_no_tracked_channels_says_how_to_add_one_and_closes_the_source(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smart_retention.sources.telegram.source import TelegramSource

    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session(1))
    closed: list[bool] = []
    original = TelegramSource.close

    def close(self: TelegramSource) -> None:
        closed.append(True)
        original(self)

    monkeypatch.setattr(TelegramSource, "close", close)
    result = invoke("run", "--once", "--source", "telegram")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "no tracked Telegram channels: nothing to collect; add one with "
        "'smart-retention channels add @name'"
    ]
    assert closed == [True]

    # Closed on a failure too.
    track(account / "db.sqlite3")

    class Failing(Telethon):  # type: ignore[misc]
        async def connect(self) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(
        TelethonClient, "_new_client", lambda self: Failing(StringSession(), 1, "x")
    )
    failed = invoke("run", "--once", "--source", "telegram")
    assert failed.exit_code == 2
    assert closed == [True, True]


def test_a_celery_worker_closes_its_source_when_it_shuts_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from smart_retention import tasks

    class Closable:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    built = Closable()
    monkeypatch.setattr(tasks, "build_source", lambda _spec: built)
    tasks._source.cache_clear()
    try:
        tasks.close_source()  # nothing built yet: nothing to close
        assert tasks._source() is built
        tasks.close_source()
        assert built.closed == 1
    finally:
        tasks._source.cache_clear()
