"""The configured source, built from one setting: `SMART_RETENTION_SOURCE`.

The setting reads `KIND[:ARGUMENT][?NAME=VALUE&...]`:

- `replay:PATH?channel_id=1&msg_id=post_id`: a recorded CSV file (plain or gzipped);
  options name the channel for rows without one and map canonical columns to the file's
  names, as `smart-retention replay --channel-id/--column` do.
- `synthetic?channels=2&posts=500&days=30&seed=7&start=2026-12-01T00:00:00Z`: the
  synthetic live channels of `sources.synthetic`. Without `start`, publication starts
  half of `days` before the current UTC day began, so about half of the posts are out
  and the rest appear while collection runs; every process started on the same UTC day
  agrees on it. Give `start` when workers may start on different days.
  `registered_until=ISO` takes the posts published by then as registered already (a
  process joining a database another one filled), so discovery skips them.

- `telegram` or `telegram?db=URL`: live channels over MTProto (`sources/telegram`): the
  channels `smart-retention channels add` tracked in the database (default
  SMART_RETENTION_DATABASE_URL), read as the account of the SMART_RETENTION_TELEGRAM_*
  settings.

Each kind is one builder in `SOURCE_KINDS`, taking the argument and the options.
A missing or malformed setting is a `SourceSettingError`: one line naming the setting.
"""

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from smart_retention.config import Settings
from smart_retention.errors import UserError
from smart_retention.sources import Source

SOURCE_SETTING = "SMART_RETENTION_SOURCE"
SYNTHETIC_DEFAULTS = {"channels": 1, "posts": 200, "days": 30.0, "seed": 7}

SourceBuilder = Callable[[str, Mapping[str, str]], Source]


class SourceSettingError(UserError):
    """The source setting is missing, names an unknown kind, or has a bad option."""


def build_source(
    spec: str | None, setting: str = SOURCE_SETTING, *, database_url: str | None = None
) -> Source:
    """The source `spec` describes; `setting` names where it came from, for errors.

    `database_url` is the database the caller collects into (a command's `--db`): the
    telegram kind reads its tracked channels there unless the spec names another.
    """
    if spec is None or not spec.strip():
        raise SourceSettingError(
            f"{setting} is not set; set it to telegram (live channels, see README.md "
            "'Collect from Telegram'), replay:FILE or synthetic (see docs/operations.md)"
        )
    head, _, query = spec.strip().partition("?")
    kind, _, argument = head.partition(":")
    builder = SOURCE_KINDS.get(kind)
    if builder is None:
        raise SourceSettingError(
            f"{setting}={spec!r}: unknown source kind {kind!r}; "
            f"known kinds: {', '.join(sorted(SOURCE_KINDS))}"
        )
    options = _parse_options(query)
    if options is None:
        raise SourceSettingError(f"{setting}={spec!r}: options must read ?name=value&name=value")
    if kind == "telegram" and database_url and "db" not in options:
        options["db"] = database_url
    try:
        return builder(argument, options)
    except SourceSettingError:
        raise
    except (UserError, ValueError) as error:
        raise SourceSettingError(f"{setting}={spec!r}: {error}") from None


def _parse_options(query: str) -> dict[str, str] | None:
    """`a=1&b=2` as a dict; None when malformed. Taken literally: no URL decoding, so a
    `+` in a timestamp stays a `+`."""
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or name.strip() in options:
            return None
        options[name.strip()] = value.strip()
    return options


def _build_replay(argument: str, options: Mapping[str, str]) -> Source:
    # Imported here: reading recordings pulls in nothing the other kinds need.
    from smart_retention.sources.recording import (
        CANONICAL_COLUMNS,
        RecordedSource,
        read_recording,
    )

    if not argument:
        raise ValueError("replay needs a file: replay:PATH")
    unknown = set(options) - {"channel_id", *CANONICAL_COLUMNS}
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))}; replay takes channel_id "
            f"and column names ({', '.join(CANONICAL_COLUMNS)})"
        )
    columns = {name: theirs for name, theirs in options.items() if name != "channel_id"}
    channel_id = _int_option(options, "channel_id") if "channel_id" in options else None
    return RecordedSource(read_recording(argument, columns, channel_id).observations)


def _build_synthetic(argument: str, options: Mapping[str, str]) -> Source:
    from smart_retention.sources.synthetic import SyntheticSource, check_size

    if argument:
        raise ValueError(f"synthetic takes options, not an argument ({argument!r})")
    known = {*SYNTHETIC_DEFAULTS, "start", "changed_fraction", "registered_until"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))}; synthetic takes "
            f"{', '.join(sorted(known))}"
        )
    days = _float_option(options, "days", SYNTHETIC_DEFAULTS["days"])
    channels = _int_option(options, "channels", SYNTHETIC_DEFAULTS["channels"])
    posts = _int_option(options, "posts", SYNTHETIC_DEFAULTS["posts"])
    # Before the default start is computed from days (a huge one overflows the date).
    check_size(channels, posts, days)
    start = (
        _datetime_option(options, "start") if "start" in options else default_synthetic_start(days)
    )
    source = SyntheticSource(
        channels,
        posts,
        days,
        seed=_int_option(options, "seed", SYNTHETIC_DEFAULTS["seed"]),
        start=start,
        changed_fraction=_float_option(options, "changed_fraction", 0.0),
    )
    if "registered_until" in options:
        source.skip_announced(_datetime_option(options, "registered_until"))
    return source


def _build_telegram(argument: str, options: Mapping[str, str]) -> Source:
    # Imported here: only this kind needs Telethon, the account settings and storage.
    from smart_retention.config import load_settings
    from smart_retention.storage.engine import make_engine

    if argument:
        raise ValueError(f"telegram takes options, not an argument ({argument!r})")
    unknown = set(options) - {"db"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; telegram takes db")
    settings = load_settings()
    return telegram_source(settings, make_engine(options.get("db") or settings.database_url))


def telegram_source(settings: Settings, engine: Engine) -> Source:
    """The Telegram source reading the channels tracked in `engine`'s database, as the
    account of the SMART_RETENTION_TELEGRAM_* settings (checked here: one line naming
    the variable when one is missing or a placeholder)."""
    from smart_retention.sources.telegram.client import TelethonClient
    from smart_retention.sources.telegram.credentials import telegram_credentials
    from smart_retention.sources.telegram.limits import RequestPacer
    from smart_retention.sources.telegram.source import TelegramSource
    from smart_retention.storage.channels import StoredChannels

    return TelegramSource(
        TelethonClient(
            telegram_credentials(settings),
            connect_timeout_s=settings.telegram_connect_timeout_s,
            request_timeout_s=settings.telegram_request_timeout_s,
        ),
        StoredChannels(engine),
        max_misses=settings.telegram_max_misses,
        short_wait_s=settings.telegram_short_wait_s,
        pacer=RequestPacer(settings.telegram_requests_per_second),
        backfill=timedelta(days=settings.telegram_backfill_days),
    )


def default_synthetic_start(days: float, now: datetime | None = None) -> datetime:
    """Half of `days` before the current UTC day began: the same in every process that day."""
    now = now or datetime.now(UTC)
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days / 2)


def _int_option(options: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = options.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw or "")
    except ValueError:
        raise ValueError(f"option {name}={raw!r} is not a whole number") from None


def _float_option(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"option {name}={raw!r} is not a number") from None


def _datetime_option(options: Mapping[str, str], name: str) -> datetime:
    raw = options[name]
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"option {name}={raw!r} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        raise ValueError(f"option {name}={raw!r} has no time zone")
    return moment.astimezone(UTC)


# The extension point: one builder per kind.
SOURCE_KINDS: dict[str, SourceBuilder] = {
    "replay": _build_replay,
    "synthetic": _build_synthetic,
    "telegram": _build_telegram,
}
