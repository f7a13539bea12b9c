"""Recorded observations: a CSV file (plain or gzipped), and the source that replays it.

A recording is an old collector's poll log: one row per (post, moment) with the
counters seen then. `read_recording` validates every row; a bad row becomes a
`Rejection` naming its line, post and field, and reading goes on. `RecordedSource`
answers a poll at any moment with the latest recorded values at or before it.
"""

import csv
import gzip
import io
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from smart_retention.errors import InputFileError
from smart_retention.observation import (
    COUNTER_FIELDS,
    EARLIEST_TIMESTAMP,
    Counters,
    Observation,
    ObservationError,
    PostInfo,
    PostKey,
    Rejection,
    build_observation,
    parse_id,
    parse_timestamp,
)
from smart_retention.sources import FetchResult

CANONICAL_COLUMNS = ("channel_id", "msg_id", "posted_at", "observed_at", *COUNTER_FIELDS)
REQUIRED_COLUMNS = ("channel_id", "msg_id", "posted_at", "observed_at")
GZIP_MAGIC = b"\x1f\x8b"
# The header is line 1, so the first data row is line 2 (as an editor shows it).
FIRST_DATA_LINE = 2
# The earliest timestamp an observation may carry, as a placeholder posted_at.
EARLIEST_MOMENT = EARLIEST_TIMESTAMP


@dataclass(slots=True)
class Recording:
    """Valid observations in time order, and the rows that were rejected."""

    observations: list[Observation] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def post_count(self) -> int:
        return len({o.key for o in self.observations})

    @property
    def channel_ids(self) -> set[int]:
        return {o.key.channel_id for o in self.observations}


def parse_column_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`canonical=theirs` pairs from the command line, checked against known names."""
    mapping = {}
    for pair in pairs:
        canonical, sep, theirs = pair.partition("=")
        canonical, theirs = canonical.strip(), theirs.strip()
        if not sep or not canonical or not theirs:
            raise InputFileError(
                f"--column {pair!r}: expected canonical=theirs, e.g. msg_id=post_id"
            )
        if canonical not in CANONICAL_COLUMNS:
            raise InputFileError(
                f"--column {pair!r}: unknown column {canonical!r}; "
                f"known columns: {', '.join(CANONICAL_COLUMNS)}"
            )
        mapping[canonical] = theirs
    return mapping


def read_recording(
    path: Path | str,
    column_map: Mapping[str, str] | None = None,
    channel_id: int | None = None,
) -> Recording:
    """Read and validate a recorded CSV file; see the module docstring."""
    path = Path(path)
    with _open_text(path) as text:
        return build_recording(_read_rows(path, text, dict(column_map or {}), channel_id))


def read_recording_first_seen(
    path: Path | str,
    column_map: Mapping[str, str] | None = None,
    channel_id: int | None = None,
) -> Recording:
    """Read a recording that has no posted_at column: each post's posted_at is the moment
    it was first observed (its earliest observed_at in the file).

    The file is read twice, once for the first moments and once to build the recording;
    only one moment per post is kept in between. Everything else is as `read_recording`.
    """
    path = Path(path)
    column_map = dict(column_map or {})
    if "posted_at" in column_map:
        raise InputFileError(
            f"--column posted_at={column_map['posted_at']} conflicts with posted_at taken "
            "from each post's first observation"
        )
    # The row reader requires a posted_at column: point it at observed_at, then replace it.
    column_map["posted_at"] = column_map.get("observed_at", "observed_at")
    first_seen = _FirstSeen()
    with _open_text(path) as text:
        for _, fields in _read_rows(path, text, column_map, channel_id):
            first_seen.add(fields)
    with _open_text(path) as text:
        rows = _read_rows(path, text, column_map, channel_id)
        return build_recording((line, first_seen.fill_in(fields)) for line, fields in rows)


class _FirstSeen:
    """The earliest valid observed_at of each post. Ids and timestamps repeat on nearly
    every row, so each distinct raw value is parsed once."""

    def __init__(self) -> None:
        self.moments: dict[PostKey, datetime] = {}
        self._keys: dict[tuple[object, object], PostKey | None] = {}
        self._times: dict[object, datetime | None] = {}

    def add(self, fields: "RowOrError") -> None:
        if isinstance(fields, ObservationError):
            return
        key, moment = self._key(fields), self._moment(fields.get("observed_at"))
        if key is not None and moment is not None:
            known = self.moments.get(key)
            if known is None or moment < known:
                self.moments[key] = moment

    def fill_in(self, fields: "RowOrError") -> "RowOrError":
        if isinstance(fields, ObservationError):
            return fields
        key = self._key(fields)
        if key is None:
            return fields  # rejected for its id, which build_observation checks first
        # A post missing here has no valid observed_at at all, so this row is rejected for
        # its observed_at; the earliest moment keeps posted_at from being named instead.
        return {**fields, "posted_at": self.moments.get(key, EARLIEST_MOMENT)}

    def _key(self, fields: Mapping[str, object]) -> PostKey | None:
        raw = (fields.get("channel_id"), fields.get("msg_id"))
        if raw not in self._keys:
            try:
                channel, msg = parse_id("channel_id", raw[0]), parse_id("msg_id", raw[1])
                self._keys[raw] = PostKey(channel, msg)
            except ObservationError:
                self._keys[raw] = None
        return self._keys[raw]

    def _moment(self, raw: object) -> datetime | None:
        if raw not in self._times:
            try:
                self._times[raw] = parse_timestamp("observed_at", raw)
            except ObservationError:
                self._times[raw] = None
        return self._times[raw]


RowOrError = Mapping[str, object] | ObservationError


def build_recording(rows: Iterable[tuple[int | None, RowOrError]]) -> Recording:
    """A recording from (line, canonical fields) pairs; shared by the CSV reader and the demo."""
    recording = Recording()
    posted_at_seen: dict[PostKey, tuple[datetime, int | None]] = {}
    moments_seen: set[tuple[PostKey, datetime]] = set()
    # Interning the repeated keys and timestamps keeps a large recording small in memory.
    keys: dict[PostKey, PostKey] = {}
    moments: dict[datetime, datetime] = {}
    for line, fields in rows:
        try:
            if isinstance(fields, ObservationError):
                raise fields
            observation = build_observation(fields)
        except ObservationError as error:
            recording.rejections.append(Rejection.from_error(error, line))
            continue
        key = keys.setdefault(observation.key, observation.key)
        first_posted_at, first_line = posted_at_seen.setdefault(key, (observation.posted_at, line))
        if observation.posted_at != first_posted_at:
            recording.rejections.append(
                _reject(
                    line,
                    key,
                    "posted_at",
                    observation.posted_at,
                    f"differs from {first_posted_at.isoformat()} given at line {first_line}",
                )
            )
            continue
        if (key, observation.observed_at) in moments_seen:
            recording.rejections.append(
                _reject(
                    line,
                    key,
                    "observed_at",
                    observation.observed_at,
                    "repeats an earlier observation of this post at the same moment",
                )
            )
            continue
        moments_seen.add((key, observation.observed_at))
        observed_at = moments.setdefault(observation.observed_at, observation.observed_at)
        recording.observations.append(
            Observation(key, first_posted_at, observed_at, observation.counters)
        )
    recording.observations.sort(key=lambda o: (o.observed_at, o.key))
    return recording


def _reject(
    line: int | None, key: PostKey, field_name: str, value: datetime, why: str
) -> Rejection:
    error = ObservationError(field_name, value.isoformat(), why, key)
    return Rejection.from_error(error, line)


def _open_text(path: Path) -> TextIO:
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == GZIP_MAGIC
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a folder, not a recording file") from None
    except PermissionError:
        raise InputFileError(f"{path}: permission denied") from None
    # Undecodable bytes become U+FFFD, so such a row is rejected by field, not fatal.
    if compressed:
        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace", newline=""
        )
    return path.open(encoding="utf-8-sig", errors="replace", newline="")


def _read_rows(
    path: Path, text: TextIO, column_map: dict[str, str], channel_id: int | None
) -> Iterator[tuple[int | None, RowOrError]]:
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(f"{path}: the file is empty; expected a CSV header") from None
    except (OSError, EOFError, csv.Error) as error:
        raise InputFileError(f"{path}: cannot read the header: {error}") from None
    positions = _column_positions(path, header, column_map, channel_id)
    line = FIRST_DATA_LINE - 1
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield line, ObservationError("row", "", f"is not valid CSV: {error}")
            continue
        except (OSError, EOFError) as error:
            raise InputFileError(f"{path}: the file is damaged near line {line}: {error}") from None
        if not row:
            continue
        if len(row) != len(header):
            # A cut-off or misquoted row: its values may sit under the wrong columns, and a
            # missing counter would read as unknown rather than as the error it is.
            why = f"has {len(row)} fields where the header has {len(header)}"
            yield line, ObservationError("row", ",".join(row)[:80], why)
            continue
        fields: dict[str, object] = {
            name: row[index] if index < len(row) else None for name, index in positions.items()
        }
        if channel_id is not None and not fields.get("channel_id"):
            fields["channel_id"] = channel_id
        yield line, fields


def _column_positions(
    path: Path, header: Sequence[str], column_map: dict[str, str], channel_id: int | None
) -> dict[str, int]:
    index_of: dict[str, int] = {}
    for i, name in enumerate(header):
        if name.strip() in index_of:
            raise InputFileError(f"{path}: the header names column {name.strip()!r} twice")
        index_of[name.strip()] = i
    positions = {}
    for canonical in CANONICAL_COLUMNS:
        theirs = column_map.get(canonical, canonical)
        if theirs in index_of:
            positions[canonical] = index_of[theirs]
        elif canonical in column_map or (
            canonical in REQUIRED_COLUMNS and not (canonical == "channel_id" and channel_id)
        ):
            hint = " or give --channel-id N" if canonical == "channel_id" else ""
            raise InputFileError(
                f"{path}: required column {theirs!r} not found (columns: {', '.join(header)}); "
                f"map it with --column {canonical}=NAME{hint}"
            )
    if not any(name in positions for name in COUNTER_FIELDS):
        raise InputFileError(
            f"{path}: no counter column found (expected one of {', '.join(COUNTER_FIELDS)}); "
            "map one with e.g. --column views=NAME"
        )
    return positions


class RecordedSource:
    """Answers polls from a recording: each poll sees the latest values at or before it."""

    def __init__(self, observations: Sequence[Observation]) -> None:
        self._times: dict[PostKey, list[datetime]] = {}
        self._values: dict[PostKey, list[Counters]] = {}
        self._posted_at: dict[PostKey, datetime] = {}
        for observation in observations:  # in time order
            key = observation.key
            values = self._values.setdefault(key, [])
            # A row equal to the one before it cannot change any answer; skip it.
            if values and values[-1] == observation.counters:
                continue
            values.append(observation.counters)
            self._times.setdefault(key, []).append(observation.observed_at)
            self._posted_at.setdefault(key, observation.posted_at)
        self._announce_order = sorted(self._times, key=lambda k: (self._times[k][0], k))
        self._announced = 0

    def discover(self, now: datetime) -> list[PostInfo]:
        found = []
        while self._announced < len(self._announce_order):
            key = self._announce_order[self._announced]
            if self._times[key][0] > now:
                break
            found.append(PostInfo(key, self._posted_at[key]))
            self._announced += 1
        return found

    def next_discovery_at(self) -> datetime | None:
        """When the next post not yet announced first appears in the recording."""
        if self._announced < len(self._announce_order):
            return self._times[self._announce_order[self._announced]][0]
        return None

    def fetch(self, keys: Sequence[PostKey], now: datetime) -> FetchResult:
        result = FetchResult()
        for key in keys:
            times = self._times.get(key)
            index = bisect_right(times, now) - 1 if times else -1
            if index < 0:
                continue
            result.observations.append(
                Observation(key, self._posted_at[key], now, self._values[key][index])
            )
        return result
