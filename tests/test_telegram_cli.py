"""`telegram login`, `channels add/list/remove`, the Telegram settings and the source
setting: no network (resolving and logging in are replaced where Telegram would answer)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from smart_retention import cli, cli_telegram
from smart_retention.channels import ChannelRef
from smart_retention.sources.factory import SourceSettingError, build_source
from smart_retention.sources.telegram.client import ResolvedChannel
from smart_retention.sources.telegram.credentials import TelegramSettingError

API_ID = "25123456"
API_HASH = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
BARE = 1234567890
TELEGRAM_VARIABLES = (
    "SMART_RETENTION_TELEGRAM_API_ID",
    "SMART_RETENTION_TELEGRAM_API_HASH",
    "SMART_RETENTION_TELEGRAM_SESSION",
)


def string_session() -> str:
    """A well-formed StringSession (a made-up key): enough to build a client offline."""
    from telethon.crypto import AuthKey
    from telethon.sessions import StringSession

    session = StringSession()
    session.set_dc(2, "149.154.167.51", 443)
    session.auth_key = AuthKey(bytes(range(256)))
    return session.save()


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Valid account settings, in a folder of its own (no stray .env)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_ID", API_ID)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_HASH", API_HASH)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session())
    monkeypatch.setenv("SMART_RETENTION_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    return tmp_path


@pytest.fixture
def no_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in TELEGRAM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMART_RETENTION_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    return tmp_path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def error_lines(result: Any) -> list[str]:
    return result.stderr.strip().splitlines()


# --- settings: missing and placeholder values -----------------------------------------


def test_a_telegram_command_without_credentials_is_one_line_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMART_RETENTION_TELEGRAM")}
    command = Path(sys.executable).parent / "smart-retention"
    result = subprocess.run(
        [str(command), "channels", "add", "@recsyschannel"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: SMART_RETENTION_TELEGRAM_API_ID is not set; create an application at "
        "https://my.telegram.org/apps and give its api_id (see README.md, 'Collect from "
        "Telegram')"
    ]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SMART_RETENTION_TELEGRAM_API_ID",
            "12345",
            "error: SMART_RETENTION_TELEGRAM_API_ID=12345 is a placeholder; give your "
            "application's api_id from my.telegram.org",
        ),
        (
            "SMART_RETENTION_TELEGRAM_API_ID",
            "your-api-id",
            "error: SMART_RETENTION_TELEGRAM_API_ID must be the numeric api_id from "
            "my.telegram.org, got a 11-character value that is not a number",
        ),
        (
            "SMART_RETENTION_TELEGRAM_API_HASH",
            "your-api-hash",
            "error: SMART_RETENTION_TELEGRAM_API_HASH is a placeholder; give your "
            "application's api_hash from my.telegram.org",
        ),
        (
            "SMART_RETENTION_TELEGRAM_API_HASH",
            "0f1e2d3c4b5a6978",
            "error: SMART_RETENTION_TELEGRAM_API_HASH must be 32 hexadecimal characters (the "
            "api_hash my.telegram.org shows), got 16 characters",
        ),
        (
            # Garbage of the wrong length is not called a placeholder.
            "SMART_RETENTION_TELEGRAM_API_HASH",
            "q" * 40,
            "error: SMART_RETENTION_TELEGRAM_API_HASH must be 32 hexadecimal characters (the "
            "api_hash my.telegram.org shows), got 40 characters",
        ),
        (
            "SMART_RETENTION_TELEGRAM_API_HASH",
            "0f1e2d3c4b5a69788796a5b4c3d2e1fz",
            "error: SMART_RETENTION_TELEGRAM_API_HASH must be 32 hexadecimal characters (the "
            "api_hash my.telegram.org shows), got 32 characters that are not all hexadecimal",
        ),
        (
            "SMART_RETENTION_TELEGRAM_API_HASH",
            "a" * 32,
            "error: SMART_RETENTION_TELEGRAM_API_HASH is a placeholder; give your "
            "application's api_hash from my.telegram.org",
        ),
        (
            "SMART_RETENTION_TELEGRAM_SESSION",
            "",
            "error: SMART_RETENTION_TELEGRAM_SESSION is not set; run 'smart-retention telegram "
            "login' and set it to the session file it writes (or to a StringSession value)",
        ),
    ],
)
def test_placeholder_or_missing_settings_are_one_line_naming_the_variable(
    account: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = invoke("channels", "add", "@recsyschannel")
    assert result.exit_code == 2
    assert error_lines(result) == [message]


def test_the_demo_and_replay_do_not_need_telegram_settings(
    no_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even a placeholder is only looked at by Telegram commands.
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_ID", "your-api-id")
    result = invoke("demo", "--posts", "3", "--days", "1", "--json", "--db", "sqlite://")
    assert result.exit_code == 0, result.stderr


def test_the_source_setting_builds_the_telegram_source_only_with_an_account(
    no_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SourceSettingError) as raised:
        build_source("telegram")
    assert str(raised.value).startswith(
        "SMART_RETENTION_SOURCE='telegram': SMART_RETENTION_TELEGRAM_API_ID is not set"
    )
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_ID", API_ID)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_API_HASH", API_HASH)
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", "missing")
    with pytest.raises(SourceSettingError, match=r"session file .*missing\.session does not"):
        build_source("telegram")
    with pytest.raises(SourceSettingError, match="unknown option"):
        build_source("telegram?colour=red")
    monkeypatch.setenv("SMART_RETENTION_TELEGRAM_SESSION", string_session())
    source = build_source("telegram")
    try:
        from smart_retention.sources.telegram.source import TelegramSource

        assert isinstance(source, TelegramSource)
        assert source.max_misses == 3 and source.short_wait_s == 30.0
        assert source.pacer.interval == 1.0
    finally:
        source.close()  # type: ignore[attr-defined]


def test_the_telegram_source_reads_its_channels_where_the_command_collects(
    account: Path,
) -> None:
    """`run --db URL` passes its URL; `telegram?db=` still names another database."""
    collected_into = f"sqlite:///{account / 'collected.sqlite3'}"
    elsewhere = f"sqlite:///{account / 'elsewhere.sqlite3'}"
    cases = [
        ("telegram", None, os.environ["SMART_RETENTION_DATABASE_URL"]),
        ("telegram", collected_into, collected_into),
        (f"telegram?db={elsewhere}", collected_into, elsewhere),
    ]
    for spec, database_url, expected in cases:
        source = build_source(spec, database_url=database_url)
        try:
            assert str(source.catalog.engine.url) == expected, spec  # type: ignore[attr-defined]
        finally:
            source.close()  # type: ignore[attr-defined]


# --- telegram login ------------------------------------------------------------------


def test_login_creates_the_session_file_readable_by_its_owner_only(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMART_RETENTION_TELEGRAM_SESSION")
    seen: list[Any] = []

    async def fake_login(
        credentials: Any, session: Any, phone: Any, timeout: float
    ) -> tuple[str, None]:
        # Telethon would write the SQLite session here; the file must already be private.
        seen.append((session, phone, stat.S_IMODE(os.stat(session).st_mode)))
        return "@someone", None

    monkeypatch.setattr(cli_telegram, "_interactive_login", fake_login)
    result = invoke("telegram", "login", "--phone", "+441234567890")
    assert result.exit_code == 0, result.stderr
    path = account / "smart-retention.session"
    assert seen == [(str(path), "+441234567890", 0o600)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert error_lines(result) == [
        "logged in as @someone",
        f"session saved to {path} (mode 600); set SMART_RETENTION_TELEGRAM_SESSION={path}",
    ]


def test_login_tightens_an_existing_session_file(
    account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = account / "old.session"
    path.write_bytes(b"")
    path.chmod(0o644)

    async def fake_login(*_args: Any) -> tuple[str, None]:
        return "user 42", None

    monkeypatch.setattr(cli_telegram, "_interactive_login", fake_login)
    result = invoke("telegram", "login", "--session", str(account / "old"))
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_login_refuses_to_overwrite_a_string_session_setting(account: Path) -> None:
    result = invoke("telegram", "login")
    assert result.exit_code == 2
    assert error_lines(result) == [
        "error: SMART_RETENTION_TELEGRAM_SESSION holds a StringSession; log in to a file with "
        "--session PATH or print a new StringSession with --string"
    ]


# --- channels add / list / remove ----------------------------------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> list[ChannelRef]:
    """Telegram's answer to a lookup, without Telegram: every ref is @recsyschannel."""
    asked: list[ChannelRef] = []

    def resolve(_credentials: Any, ref: ChannelRef) -> ResolvedChannel:
        asked.append(ref)
        return ResolvedChannel(BARE, -4511234567890123456, "RecSysChannel", "RecSys")

    monkeypatch.setattr(cli_telegram, "resolve_channel", resolve)
    return asked


def test_channels_add_accepts_every_form_and_stores_one_bare_id(
    account: Path, resolver: list[ChannelRef]
) -> None:
    for text in ("@RecSysChannel", "https://t.me/recsyschannel", f"{BARE}", f"-100{BARE}"):
        result = invoke("channels", "add", text)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == (
            f"tracking channel {BARE} (peer id -100{BARE}) @RecSysChannel 'RecSys'"
        )
    assert resolver == [
        ChannelRef(username="recsyschannel"),
        ChannelRef(username="recsyschannel"),
        ChannelRef(channel_id=BARE),
        ChannelRef(channel_id=BARE),
    ]
    listed = json.loads(invoke("channels", "list", "--json").stdout)
    assert [(c["channel_id"], c["peer_id"], c["username"], c["posts"]) for c in listed] == [
        (BARE, -1000000000000 - BARE, "RecSysChannel", 0)
    ]


def test_channels_add_refuses_an_ambiguous_id_without_asking_telegram(
    account: Path, resolver: list[ChannelRef]
) -> None:
    result = invoke("channels", "add", f"100{BARE}")
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: channel id 100{BARE} is ambiguous: it starts with 100 like a -100 peer id "
        f"without its minus sign; write -100{BARE} if it is a peer id (bare id {BARE})"
    ]
    assert resolver == []


def test_channels_remove_stops_tracking_and_keeps_the_data_unless_purged(
    account: Path, resolver: list[ChannelRef]
) -> None:
    invoke("channels", "add", "@recsyschannel")
    result = invoke("channels", "remove", f"-100{BARE}")
    assert result.exit_code == 0, result.stderr
    assert "no longer tracked (data kept)" in result.stdout
    assert json.loads(invoke("channels", "list", "--json").stdout) == []
    again = invoke("channels", "remove", "@recsyschannel")
    assert again.exit_code == 2
    assert error_lines(again) == [
        "error: no tracked channel matches @recsyschannel; see 'smart-retention channels list'"
    ]


def test_channels_list_never_cuts_an_id_on_a_narrow_terminal(
    account: Path, resolver: list[ChannelRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    invoke("channels", "add", "@recsyschannel")
    for width in (40, 60, 80, 120):
        monkeypatch.setattr(cli_telegram, "console", Console(width=width))
        result = invoke("channels", "list")
        assert result.exit_code == 0, result.stderr
        for whole in (str(BARE), f"-100{BARE}", "RecSysChannel"):
            assert whole in result.stdout, (width, result.stdout)


def test_channels_list_needs_no_telegram_settings(no_account: Path) -> None:
    result = invoke("channels", "list")
    assert result.exit_code == 0, result.stderr
    assert "no tracked channels" in result.stdout


def test_channels_list_and_remove_create_no_database_where_there_is_none(
    no_account: Path,
) -> None:
    database = no_account / "db.sqlite3"
    listed = invoke("channels", "list")
    assert listed.exit_code == 0, listed.stderr
    assert f"no tracked channels (no database at {database} yet)" in listed.stdout
    as_json = invoke("channels", "list", "--json")
    assert (as_json.exit_code, json.loads(as_json.stdout)) == (0, [])
    removed = invoke("channels", "remove", "@RecSysChannel")
    assert removed.exit_code == 2
    assert f"SQLite database {database} does not exist (nothing was created)" in removed.stderr
    assert not database.exists()


def test_credentials_never_show_the_hash_or_session() -> None:
    from smart_retention.config import Settings
    from smart_retention.sources.telegram.credentials import telegram_credentials

    settings = Settings(
        telegram_api_id=API_ID, telegram_api_hash=API_HASH, telegram_session="secret-path"
    )
    credentials = telegram_credentials(settings)
    assert API_HASH not in repr(credentials) and "secret-path" not in repr(credentials)
    with pytest.raises(TelegramSettingError):
        telegram_credentials(Settings(telegram_api_id=API_ID, telegram_api_hash="x" * 32))
