"""Column types shared by the tables and the migrations."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

# BIGINT on PostgreSQL; on SQLite an INTEGER column, which is the rowid-compatible 64-bit type.
Counter = BigInteger().with_variant(Integer(), "sqlite")

# Fixed-width UTC text, so SQLite's text comparison is time order: 2026-01-05 09:30:00.000000
SQLITE_TEXT_LENGTH = len("2026-01-05 09:30:00.000000")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    PostgreSQL keeps `timestamptz`. SQLite has no time zones, so values are stored as
    fixed-width UTC text and given back as aware UTC datetimes (parsed by the C
    `fromisoformat`, many times faster than a regular expression per value). A naive
    datetime is refused at the boundary rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(SQLITE_TEXT_LENGTH))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given; timestamps must be UTC-aware"
            )
        moment = value if value.tzinfo is UTC else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return moment.isoformat(sep=" ", timespec="microseconds")[:SQLITE_TEXT_LENGTH]
        return moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
