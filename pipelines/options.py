"""Export options as the API, the scheduler and the CLI accept them, checked in one place.

The request shape is the seed's: `{"includeMetadata": bool, "includeSystemFields": bool,
"compression": "none"|"gzip"|"zstd"|bool, "dateRange": {"start": ..., "end": ...}}`. Every problem
is reported with the field it concerns, so an API can answer 400 naming each bad field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pipelines.errors import PermanentError

FORMATS = ("json", "jsonl", "csv", "xml")
COMPRESSIONS = ("none", "gzip", "zstd")
KNOWN_OPTIONS = frozenset({"includeMetadata", "includeSystemFields", "compression", "dateRange"})


class InvalidOptionsError(PermanentError):
    """The export request has bad fields; `problems` maps each field to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        listing = "; ".join(f"{name}: {why}" for name, why in self.problems.items())
        super().__init__(f"invalid export options: {listing}")


@dataclass(frozen=True)
class DateRange:
    """Files created from `start` to `end`, both inclusive, as half-open UTC bounds."""

    start: datetime | None
    end_exclusive: datetime | None

    def as_json(self) -> dict[str, str | None]:
        """Return the range as the ISO strings a manifest records."""
        return {
            "start": self.start.isoformat() if self.start else None,
            "endExclusive": self.end_exclusive.isoformat() if self.end_exclusive else None,
        }


@dataclass(frozen=True)
class ExportOptions:
    """What one export writes: format, compression and which rows and fields."""

    format: str = "json"
    compression: str = "none"
    include_metadata: bool = True
    include_system_fields: bool = False
    date_range: DateRange | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the options in the request's own vocabulary, for manifests and job rows."""
        return {
            "format": self.format,
            "compression": self.compression,
            "includeMetadata": self.include_metadata,
            "includeSystemFields": self.include_system_fields,
            "dateRange": self.date_range.as_json() if self.date_range else None,
        }


def parse_options(
    export_format: object,
    options: object,
    *,
    default_compression: str,
    compression_enabled: bool = True,
) -> ExportOptions:
    """Check a request's format and options, raising InvalidOptionsError naming every bad field."""
    problems: dict[str, str] = {}
    if export_format not in FORMATS:
        problems["format"] = f"must be one of {', '.join(FORMATS)}"
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise InvalidOptionsError(problems | {"options": "must be an object"})
    for name in sorted(set(options) - KNOWN_OPTIONS):
        problems[f"options.{name}"] = "unknown option"
    include_metadata = _flag(options, "includeMetadata", default=True, problems=problems)
    include_system = _flag(options, "includeSystemFields", default=False, problems=problems)
    compression = _compression(
        options.get("compression", False), default_compression, compression_enabled, problems
    )
    date_range = _date_range(options.get("dateRange"), problems)
    if problems:
        raise InvalidOptionsError(problems)
    return ExportOptions(
        format=str(export_format),
        compression=compression,
        include_metadata=include_metadata,
        include_system_fields=include_system,
        date_range=date_range,
    )


def _flag(
    options: Mapping[str, Any], name: str, *, default: bool, problems: dict[str, str]
) -> bool:
    value = options.get(name, default)
    if not isinstance(value, bool):
        problems[f"options.{name}"] = "must be true or false"
        return default
    return value


def _compression(value: object, default: str, enabled: bool, problems: dict[str, str]) -> str:
    if value is True:
        chosen = default
    elif value is False or value is None:
        chosen = "none"
    elif isinstance(value, str) and value in COMPRESSIONS:
        chosen = value
    else:
        problems["options.compression"] = f"must be true, false or one of {', '.join(COMPRESSIONS)}"
        return "none"
    if chosen != "none" and not enabled:
        problems["options.compression"] = "compression is disabled on this server"
    return chosen


def _date_range(value: object, problems: dict[str, str]) -> DateRange | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems["options.dateRange"] = "must be an object with start and/or end"
        return None
    unknown = sorted(set(value) - {"start", "end"})
    for name in unknown:
        problems[f"options.dateRange.{name}"] = "unknown field"
    start = _instant(value.get("start"), "options.dateRange.start", problems, end_of_day=False)
    end = _instant(value.get("end"), "options.dateRange.end", problems, end_of_day=True)
    if start and end and end <= start:
        problems["options.dateRange"] = "end is before start"
    if start is None and end is None:
        if "options.dateRange.start" not in problems and "options.dateRange.end" not in problems:
            problems["options.dateRange"] = "give start, end or both"
        return None
    return DateRange(start=start, end_exclusive=end)


def _instant(
    value: object, field: str, problems: dict[str, str], *, end_of_day: bool
) -> datetime | None:
    """Parse a date or an offset date-time; an end date covers that whole day (UTC)."""
    if value is None:
        return None
    if not isinstance(value, str):
        problems[field] = "must be an ISO 8601 date or date-time string"
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day, time.min, tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            problems[field] = "a date-time needs a UTC offset, e.g. 2024-01-31T23:59:59Z"
            return None
        # An inclusive end instant becomes an exclusive bound one microsecond later.
        return parsed + timedelta(microseconds=1) if end_of_day else parsed
    except ValueError:
        problems[field] = f"malformed date {value!r}: use YYYY-MM-DD or an ISO 8601 date-time"
    except OverflowError:
        # The exclusive bound after the last representable instant does not exist.
        problems[field] = "must be before 9999-12-31; leave the end out for no upper bound"
    return None
