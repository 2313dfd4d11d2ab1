"""Parse five-field cron expressions (and the @-macros) into sets of allowed values.

Pure: no clock, no time zone, no I/O. The vocabulary is the classic Vixie-cron one that croniter
also reads: `*`, `a`, `a-b`, `*/n`, `a-b/n`, `a/n`, comma lists, month and weekday names, 7 as
Sunday. When both day fields are restricted, a day matching either one fires (cron's historical
rule); a day field starting with `*` (`*/2` included) is not restricted, as in Vixie cron and
cronie, so the days must then match both fields. What an expression means on a given day in a
given zone is the job of `workers.scheduling.occurrences`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

from pipelines.errors import PermanentError

MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES: Final = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
DAY_NAMES: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# Longest expression kept: five fields with generous lists fit easily; anything longer is noise.
MAX_EXPRESSION_CHARS: Final = 200


class CronError(PermanentError):
    """A cron expression that cannot be parsed or never fires."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_FIELDS: Final = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, MONTH_NAMES, 1),
    _Field("day of week", 0, 7, DAY_NAMES, 0),
)


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression: the allowed values of each field."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday
    # The field does not start with `*`: with both restricted, either one matching is enough.
    day_restricted: bool
    weekday_restricted: bool
    # The hour field starts with `*`: an interval schedule that follows real time across
    # daylight-saving changes, rather than a wall-clock schedule (see occurrences).
    hour_wildcard: bool

    def matches_day(self, day: date) -> bool:
        """Return whether the schedule fires at all on this calendar day."""
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = day.isoweekday() % 7 in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_days or in_weekdays
        # Otherwise both must match, as in cronie: a `*` field allows every day anyway, and a
        # `*/n` one allows only its steps.
        return in_days and in_weekdays


def parse_cron(expression: str) -> CronSpec:
    """Parse a cron expression, raising CronError that says which field is wrong."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CronError(f"a cron expression has at most {MAX_EXPRESSION_CHARS} characters")
    if not expression.isascii():
        # `str.isdigit` and `int` accept other scripts' digits (`٣`, and `²` only the former),
        # and cron, croniter and PostgreSQL read none of them.
        raise CronError("a cron expression is written in ASCII: digits 0-9, names, * , - /")
    text = expression.strip()
    fields = MACROS.get(text.lower(), text).split()
    if len(fields) != len(_FIELDS):
        raise CronError(
            f"expected five fields (minute hour day-of-month month day-of-week) or one of "
            f"{', '.join(MACROS)}, got {expression!r}"
        )
    values = [_parse_field(raw, spec) for raw, spec in zip(fields, _FIELDS, strict=True)]
    weekdays = frozenset(value % 7 for value in values[4])
    return CronSpec(
        expression=text,
        minutes=tuple(sorted(values[0])),
        hours=tuple(sorted(values[1])),
        days=frozenset(values[2]),
        months=frozenset(values[3]),
        weekdays=weekdays,
        day_restricted=not fields[2].startswith("*"),
        weekday_restricted=not fields[4].startswith("*"),
        hour_wildcard=fields[1].startswith("*"),
    )


def _parse_field(raw: str, field: _Field) -> set[int]:
    values: set[int] = set()
    for part in raw.lower().split(","):
        values |= _parse_part(part, field)
    return values


def _parse_part(part: str, field: _Field) -> set[int]:
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        number = _number(step_text)
        if number is None or number == 0:
            raise CronError(f"{field.name}: step in {part!r} must be a positive integer")
        step = number
    if base == "*":
        low, high = field.low, field.high
    elif "-" in base:
        start, _, end = base.partition("-")
        low, high = _value(start, field), _value(end, field)
        if low > high:
            raise CronError(f"{field.name}: range {part!r} runs backwards")
    else:
        low = _value(base, field)
        # `a/n` means from a to the end of the field, stepping n (croniter's reading).
        high = field.high if slash else low
    return set(range(low, high + 1, step))


def _value(text: str, field: _Field) -> int:
    if text in field.names:
        return field.names.index(text) + field.name_base
    value = _number(text)
    if value is None:
        raise CronError(f"{field.name}: {text!r} is not a number or name")
    if not field.low <= value <= field.high:
        raise CronError(f"{field.name}: {value} is outside {field.low}-{field.high}")
    return value


def _number(text: str) -> int | None:
    """Return the value of a run of ASCII digits 0-9, or None for anything else."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)
