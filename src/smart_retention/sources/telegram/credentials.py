"""The Telegram account settings: api id and hash, and the session.

Checked only when a Telegram command or the Telegram source runs, never when settings
load, so the demo, replay and the API work whatever these variables hold. A missing or
placeholder value is one line naming the variable.

The session is either a Telethon StringSession value (for containers: the whole login
in one environment variable) or the path of a session file that `smart-retention
telegram login` wrote. Both are secrets: whoever holds one reads as the account.
"""

import binascii
import os
import re
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smart_retention.config import PLACEHOLDER_MARKERS, Settings
from smart_retention.errors import UserError

API_ID_VARIABLE = "SMART_RETENTION_TELEGRAM_API_ID"
API_HASH_VARIABLE = "SMART_RETENTION_TELEGRAM_API_HASH"
SESSION_VARIABLE = "SMART_RETENTION_TELEGRAM_SESSION"
DEFAULT_SESSION_FILE = "smart-retention.session"
SESSION_SUFFIX = ".session"
# my.telegram.org gives a 32-character hexadecimal api_hash.
_API_HASH = re.compile(r"[0-9a-f]{32}")
# The ids and hashes that documentation and examples use; never a real application's.
PLACEHOLDER_API_IDS = frozenset({0, 1, 12345, 123456, 1234567, 12345678, 123456789})
PLACEHOLDER_API_HASHES = frozenset(
    {"0123456789abcdef0123456789abcdef", "abcdef0123456789abcdef0123456789"}
)
# A StringSession is "1" (its version) and URL-safe base64 of the server address and the
# 256-byte auth key: well over a hundred characters, and never a plausible path.
_STRING_SESSION = re.compile(r"1[A-Za-z0-9_\-]{100,}={0,2}")
_TRUNCATED_STRING_SESSION = re.compile(r"1[A-Za-z0-9_\-]+={0,2}")
# What is left of a StringSession cut short: "1" and base64, at least this long (shorter,
# and it is taken as a file name).
_TRUNCATED_STRING_SESSION_LENGTH = 24
SETUP_HINT = "see README.md, 'Collect from Telegram'"


class TelegramSettingError(UserError):
    """A Telegram setting is missing or still a placeholder."""


class TelegramNotAuthorized(UserError):
    """The session holds no logged-in account."""


@dataclass(frozen=True, slots=True)
class TelegramCredentials:
    api_id: int
    api_hash: str
    # A StringSession value or a session file path; None before the first login.
    session: str | None

    def __repr__(self) -> str:
        # Never print the hash or the session: both end up in logs and tracebacks.
        return f"TelegramCredentials(api_id={self.api_id}, api_hash=..., session=...)"


def telegram_credentials(settings: Settings, *, need_session: bool = True) -> TelegramCredentials:
    """The account settings, checked; `need_session=False` for the login itself."""
    api_id = _api_id(settings.telegram_api_id)
    api_hash = _api_hash(settings.telegram_api_hash)
    session = (settings.telegram_session or "").strip() or None
    if need_session and session is None:
        raise TelegramSettingError(
            f"{SESSION_VARIABLE} is not set; run 'smart-retention telegram login' and set it "
            "to the session file it writes (or to a StringSession value)"
        )
    return TelegramCredentials(api_id, api_hash, session)


def _api_id(raw: str | None) -> int:
    text = (raw or "").strip()
    if not text:
        raise TelegramSettingError(
            f"{API_ID_VARIABLE} is not set; create an application at "
            f"https://my.telegram.org/apps and give its api_id ({SETUP_HINT})"
        )
    if not text.isascii() or not text.isdigit():
        raise TelegramSettingError(
            f"{API_ID_VARIABLE} must be the numeric api_id from my.telegram.org, got a "
            f"{len(text)}-character value that is not a number"
        )
    value = int(text)
    if value in PLACEHOLDER_API_IDS:
        raise TelegramSettingError(
            f"{API_ID_VARIABLE}={value} is a placeholder; give your application's api_id "
            "from my.telegram.org"
        )
    return value


def _api_hash(raw: str | None) -> str:
    # The value is a secret: messages say what is wrong with it, never what it is.
    text = (raw or "").strip()
    if not text:
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} is not set; give your application's api_hash from "
            f"https://my.telegram.org/apps ({SETUP_HINT})"
        )
    lowered = text.lower()
    if lowered in PLACEHOLDER_API_HASHES or any(m in lowered for m in PLACEHOLDER_MARKERS):
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} is a placeholder; give your application's api_hash "
            "from my.telegram.org"
        )
    if not _API_HASH.fullmatch(lowered):
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} must be 32 hexadecimal characters (the api_hash "
            f"my.telegram.org shows), got {len(text)} characters"
            + ("" if len(text) != 32 else " that are not all hexadecimal")
        )
    if len(set(lowered)) < 4:
        # 32 hex digits, but "aaaa..." or "0000...": nobody's real hash.
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} is a placeholder; give your application's api_hash "
            "from my.telegram.org"
        )
    return lowered


def is_string_session(value: str) -> bool:
    return _STRING_SESSION.fullmatch(value.strip()) is not None


def session_file_path(value: str) -> Path:
    """The file a session path names. Telethon adds `.session` when it is missing."""
    path = Path(value.strip()).expanduser()
    if path.name.endswith(SESSION_SUFFIX):
        return path
    return path.with_name(path.name + SESSION_SUFFIX)


def check_session(value: str) -> None:
    """Refuse a session setting Telethon could not use, in one line naming the variable,
    without changing anything: `open_session` without opening."""
    if _looks_like_string_session(value):
        _string_session(value)
    else:
        _session_file(value)


def open_session(value: str) -> Any:
    """The Telethon session `value` names: a StringSession, or an existing session file."""
    from telethon.sessions import SQLiteSession

    if _looks_like_string_session(value):
        return _string_session(value)
    path = _session_file(value)
    try:
        return SQLiteSession(str(path))
    except sqlite3.DatabaseError as error:
        raise _unusable_file(path, error) from None


def _looks_like_string_session(value: str) -> bool:
    """A StringSession, or what is left of one cut short (no path separator, no dot,
    long and base64 only): such a value is never meant as a file name."""
    text = value.strip()
    return is_string_session(text) or (
        len(text) >= _TRUNCATED_STRING_SESSION_LENGTH
        and _TRUNCATED_STRING_SESSION.fullmatch(text) is not None
        and not session_file_path(text).exists()
    )


def _string_session(value: str) -> Any:
    from telethon.sessions import StringSession

    try:
        return StringSession(value.strip())
    except (ValueError, struct.error, binascii.Error) as error:
        raise TelegramSettingError(
            f"{SESSION_VARIABLE} looks like a StringSession but cannot be decoded ({error}); "
            "it is probably cut short: copy the whole value 'telegram login --string' printed"
        ) from None


def _session_file(value: str) -> Path:
    """The session file `value` names, checked to be an existing, readable Telethon
    session (SQLite with Telethon's tables), opened read-only: nothing is written."""
    path = session_file_path(value)
    if path.is_dir() or Path(value.strip()).expanduser().is_dir():
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: {path if path.is_dir() else value.strip()} is a directory, "
            "not a session file; give the file 'smart-retention telegram login' wrote"
        )
    given = Path(value.strip()).expanduser()
    if not path.is_file() and given.is_file():
        # Telethon reads NAME.session for a NAME without that suffix: the file the user
        # named exists, but it is not the one a session would be read from.
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: {given} is not a session file (session files end in "
            f".session, and Telethon would read {path}); give the file "
            "'smart-retention telegram login' wrote"
        )
    if not path.is_file():
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: session file {path} does not exist; run "
            "'smart-retention telegram login' first"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: session file {path} cannot be read and written by this "
            "user; check its owner and mode (600)"
        )
    if path.stat().st_size == 0:
        return path  # created by login before Telethon wrote to it: not logged in yet
    try:
        connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {name for (name,) in connection.execute("select name from sqlite_master")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise _unusable_file(path, error) from None
    if not {"version", "sessions"} <= tables:
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: {path} is an SQLite database but not a Telethon session; "
            "give the file 'smart-retention telegram login' wrote"
        )
    return path


def _unusable_file(path: Path, error: sqlite3.DatabaseError) -> TelegramSettingError:
    if isinstance(error, sqlite3.OperationalError):
        return TelegramSettingError(
            f"{SESSION_VARIABLE}: session file {path} cannot be opened ({error})"
        )
    return TelegramSettingError(
        f"{SESSION_VARIABLE}: {path} is not a session file ({error}); give the file "
        "'smart-retention telegram login' wrote"
    )


def create_private_file(path: Path) -> None:
    """Create `path` (if missing) readable and writable by its owner only, before
    Telethon writes the session into it: the auth key must never be world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(descriptor)
    # os.open's mode only applies to a new file; an existing one is tightened too.
    path.chmod(0o600)
