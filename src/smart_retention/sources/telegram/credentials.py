"""The Telegram account settings: api id and hash, and the session.

Checked only when a Telegram command or the Telegram source runs, never when settings
load, so the demo, replay and the API work whatever these variables hold. A missing or
placeholder value is one line naming the variable.

The session is either a Telethon StringSession value (for containers: the whole login
in one environment variable) or the path of a session file that `smart-retention
telegram login` wrote. Both are secrets: whoever holds one reads as the account.
"""

import os
import re
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
    if (
        lowered in PLACEHOLDER_API_HASHES
        or any(marker in lowered for marker in PLACEHOLDER_MARKERS)
        or len(set(lowered)) < 4
    ):
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} is a placeholder; give your application's api_hash "
            "from my.telegram.org"
        )
    if not _API_HASH.fullmatch(lowered):
        raise TelegramSettingError(
            f"{API_HASH_VARIABLE} must be the 32 hexadecimal characters my.telegram.org "
            f"shows, got {len(text)} characters"
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


def open_session(value: str) -> Any:
    """The Telethon session `value` names: a StringSession, or an existing session file."""
    from telethon.sessions import SQLiteSession, StringSession

    if is_string_session(value):
        try:
            return StringSession(value.strip())
        except ValueError as error:
            raise TelegramSettingError(
                f"{SESSION_VARIABLE} looks like a StringSession but cannot be decoded ({error})"
            ) from None
    path = session_file_path(value)
    if not path.is_file():
        raise TelegramSettingError(
            f"{SESSION_VARIABLE}: session file {path} does not exist; run "
            "'smart-retention telegram login' first"
        )
    return SQLiteSession(str(path))


def create_private_file(path: Path) -> None:
    """Create `path` (if missing) readable and writable by its owner only, before
    Telethon writes the session into it: the auth key must never be world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(descriptor)
    # os.open's mode only applies to a new file; an existing one is tightened too.
    path.chmod(0o600)
