"""Settings, read once from `SMART_RETENTION_*` environment variables and a `.env` file."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///smart-retention.sqlite3"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SMART_RETENTION_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; a SQLite file in the working folder by default.",
    )
    batch_size: int = Field(
        default=500,
        ge=1,
        le=5000,
        description="Posts per collection batch, i.e. per transaction.",
    )
    log_level: str = Field(default="WARNING", description="Level of the smart_retention loggers.")


def load_settings() -> Settings:
    return Settings()
