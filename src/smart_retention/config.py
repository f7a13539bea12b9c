"""Settings, read once from `SMART_RETENTION_*` environment variables and a `.env` file."""

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from smart_retention.collector import DEFAULT_BATCH_SIZE
from smart_retention.errors import UserError

DEFAULT_DATABASE_URL = "sqlite:///smart-retention.sqlite3"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"

# An API token shorter than this is a guess away; `secrets.token_urlsafe(32)` gives 43.
MIN_TOKEN_LENGTH = 24
# Values copied from examples and never replaced. Compared case-insensitively.
PLACEHOLDER_TOKENS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "token", "password", "example", "test"}
)
PLACEHOLDER_MARKERS = ("changeme", "change-me", "change_me", "replace", "example", "your-", "xxx")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMART_RETENTION_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A rejected setting may be a token: never echo its value in the error.
        hide_input_in_errors=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; a SQLite file in the working folder by default.",
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE,
        ge=1,
        le=5000,
        description="Posts per collection batch, i.e. per transaction.",
    )
    log_level: str = Field(default="WARNING", description="Level of the smart_retention loggers.")
    # Scheduling (issue 6): the source to collect from, and the Celery broker.
    source: str | None = Field(
        default=None,
        description="Where observations come from: replay:FILE or synthetic (sources/factory.py).",
    )
    broker_url: str = Field(
        default=DEFAULT_BROKER_URL, description="Celery broker for the workers and beat."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; the broker URL when unset."
    )
    collect_chunk_size: int = Field(
        default=5000,
        ge=1,
        le=100_000,
        description="Posts per Celery chunk task when a tier run fans out to workers.",
    )
    owner_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens for the owner and the read endpoints; comma-separated.",
    )
    read_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens of the read endpoints only; comma-separated.",
    )
    owner_figures_max_age_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="The API reuses an owner figure this many seconds; 0 computes each time.",
    )

    # Telegram (issue 7). Kept as plain text here and checked only when a Telegram
    # command or source runs (sources/telegram/credentials.py): the demo, replay and the
    # API must work whatever these hold.
    telegram_api_id: str | None = Field(
        default=None, description="The application's api_id from my.telegram.org."
    )
    telegram_api_hash: str | None = Field(
        default=None, description="The application's api_hash from my.telegram.org."
    )
    telegram_session: str | None = Field(
        default=None,
        description="A Telethon StringSession value, or the path of a session file.",
    )
    telegram_max_misses: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Checks in a row that find a post gone before it is no longer polled.",
    )
    telegram_short_wait_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="A FloodWait up to this long is slept through; a longer one defers.",
    )
    telegram_requests_per_second: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Requests per second one collecting process sends for the account.",
    )
    telegram_backfill_days: float = Field(
        default=7.0,
        ge=0,
        le=365,
        description="How far back the first discovery of a newly added channel reads.",
    )
    telegram_connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Connecting to Telegram (with the key exchange) gives up after this long.",
    )
    telegram_request_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="A Telegram request with no answer after this long fails.",
    )

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(f"{level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
        return level.upper()

    @field_validator("owner_tokens", "read_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [token.strip() for token in value.split(",") if token.strip()]
        return value

    @field_validator("owner_tokens", "read_tokens")
    @classmethod
    def _refuse_placeholders(cls, tokens: list[str]) -> list[str]:
        # Messages give the position, never the token: settings errors end up in logs.
        for position, token in enumerate(tokens, start=1):
            lowered = token.lower()
            if lowered in PLACEHOLDER_TOKENS or any(m in lowered for m in PLACEHOLDER_MARKERS):
                raise ValueError(f"token {position} is a placeholder; generate a real one")
            if len(token) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"token {position} is {len(token)} characters long; at least "
                    f"{MIN_TOKEN_LENGTH} are needed (python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
            if len(set(token)) < 2 or any(c.isspace() for c in token):
                raise ValueError(f"token {position} is one repeated character or has spaces")
        return tokens

    @model_validator(mode="after")
    def _owner_and_read_tokens_differ(self) -> "Settings":
        if set(self.owner_tokens) & set(self.read_tokens):
            raise ValueError("a token is both an owner token and a read token; give it once")
        return self


def load_settings() -> Settings:
    return Settings()


def chosen_database_url(db: str | None) -> str:
    """The database of a command: its --db when given, else the setting.

    An empty --db is refused rather than read as "not given": it would otherwise write
    into the default database, which the user did not name.
    """
    if db is None:
        return load_settings().database_url
    if not db.strip():
        raise UserError(
            "--db is empty; give a database URL, or leave --db out to use "
            "SMART_RETENTION_DATABASE_URL"
        )
    return db
