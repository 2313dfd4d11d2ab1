"""When a cron schedule fires, as UTC instants, in an IANA time zone across daylight saving.

Pure functions of (schedule, zone, instant): the caller supplies "now", so tests drive them with
any clock. The rules on change days:

- A wall-clock schedule (hour field not `*`, e.g. `30 2 * * *`) fires once per matching local
  time. In the repeated hour of a fall-back day it fires at the first pass only; a time the
  spring-forward jump skips fires at the instant the clock jumps (03:00 in Berlin).
- An interval schedule (hour field `*` or `*/n`, e.g. `*/15 * * * *`) follows real time: it
  fires in both passes of a repeated hour and not at wall times that do not exist.
"""

from __future__ import annotations

import calendar
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from workers.scheduling.cron import CronError, CronSpec

# How far to look for the next or previous run: `0 0 29 2 *` fires once in four years, and a
# leap day on a given weekday needs up to 28; an expression silent for 8 years is refused.
SEARCH_DAYS: Final = 8 * 366
# Local days whose instants are kept in memory: a year of daily schedules for hundreds of them.
DAY_CACHE_ENTRIES: Final = 16_384
# Wall times more than this before "now" cannot map to an instant after it (DST shifts are at
# most two hours anywhere), so a search skips them on the first day.
MAX_SHIFT: Final = timedelta(hours=3)
# Occurrences counted one by one for the catch-up report; beyond this it says "at least".
MAX_COUNTED_MISSES: Final = 10_000
# The Gregorian calendar repeats every 400 years, which is exactly 20,871 weeks: which days an
# expression fires on (month, day of month, weekday) repeats with this period.
GREGORIAN_CYCLE_YEARS: Final = 400
GREGORIAN_CYCLE_DAYS: Final = 146_097
# Longest gap between two firing days that the searches above always bridge: a search starts
# the day before its instant and looks SEARCH_DAYS days, so from a run on day D it sees up to
# day D + SEARCH_DAYS - 2.
MAX_GAP_DAYS: Final = SEARCH_DAYS - 2
# Names the zoneinfo folder holds that are no IANA zone: the host's own zone (differs from host
# to host), the "-00" placeholder, the POSIX default rules, and the `posix/` and `right/` copies
# of the database (`right/` counts leap seconds, so its instants differ from PostgreSQL's).
NOT_ZONE_NAMES: Final = frozenset({"localtime", "Factory", "posixrules"})
NOT_ZONE_TREES: Final = ("posix/", "right/")


class ZoneError(CronError):
    """An IANA time zone name this system does not know."""


@dataclass(frozen=True)
class Due:
    """What a due schedule should do now: fire `occurrence`, then wait for `next_run_at`."""

    occurrence: datetime
    missed: int  # earlier occurrences folded into this one (catch-up after downtime)
    next_run_at: datetime


@functools.cache
def iana_zone_names() -> frozenset[str]:
    """Return the IANA zone names this host knows (read once: the scan takes ~0.1 s)."""
    return frozenset(
        name
        for name in available_timezones()
        if name not in NOT_ZONE_NAMES and not name.startswith(NOT_ZONE_TREES)
    )


def checked_zone(name: str) -> ZoneInfo:
    """Return the zone for a name a client sent, or raise ZoneError unless it is an IANA name.

    `ZoneInfo` opens any file under the zoneinfo folder (`localtime`, `right/Europe/Berlin`,
    ...); a new schedule gets only real IANA names, which PostgreSQL reads the same way.
    """
    if name not in iana_zone_names():
        raise ZoneError(f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin")
    return zone_for(name)


def zone_for(name: str) -> ZoneInfo:
    """Return the zone of a stored schedule called `name`, or raise ZoneError.

    Lenient on purpose: it loads whatever a row already holds; new names go through
    `checked_zone`.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ZoneError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from exc


def next_after(spec: CronSpec, zone: ZoneInfo, after: datetime) -> datetime:
    """Return the first run strictly after `after` (an aware datetime), in UTC."""
    after = after.astimezone(UTC)
    start = after.astimezone(zone).date() - timedelta(days=1)
    for day in _days(start, step=1):
        for instant in instants_on(spec, zone, day):
            if instant > after:
                return instant
    raise CronError(f"{spec.expression!r} does not fire within {SEARCH_DAYS} days")


def last_at_or_before(spec: CronSpec, zone: ZoneInfo, at: datetime) -> datetime:
    """Return the latest run at or before `at`, in UTC."""
    at = at.astimezone(UTC)
    start = at.astimezone(zone).date() + timedelta(days=1)
    for day in _days(start, step=-1):
        earlier = [instant for instant in instants_on(spec, zone, day) if instant <= at]
        if earlier:
            return earlier[-1]
    raise CronError(f"{spec.expression!r} did not fire within {SEARCH_DAYS} days")


def check_recurrence(spec: CronSpec) -> None:
    """Raise CronError unless the expression fires again within MAX_GAP_DAYS of every run.

    The scheduler looks for the next run within SEARCH_DAYS of the one it fires, so an
    expression with a longer gap (`0 0 */28 2 1`: a Monday that is February 1 or 29) would stop
    after a run. Checked on the calendar alone, over one full 400-year cycle.
    """
    gap = _longest_gap_days(spec)
    if gap is None:
        raise CronError(f"{spec.expression!r} never fires")
    if gap > MAX_GAP_DAYS:
        raise CronError(
            f"{spec.expression!r} fires too rarely: some runs are {gap} days apart, and a"
            f" schedule must fire at least once every {MAX_GAP_DAYS} days"
        )


@functools.lru_cache(maxsize=256)
def _longest_gap_days(spec: CronSpec) -> int | None:
    """Return the most days between consecutive firing days, or None if it never fires.

    Only gaps from one year's last firing day to the next firing year's first are measured:
    a gap inside a year is shorter than a year, far below MAX_GAP_DAYS, so the answer is exact
    whenever it matters. Each year is scanned from both ends up to its first hit, so a daily
    expression costs a few hundred days checked, not the cycle's 146,097.
    """
    first = last = None
    longest = 0
    base = 2000  # any year divisible by 400 starts a cycle
    for year in range(base, base + GREGORIAN_CYCLE_YEARS):
        earliest = next(_firing_days(spec, year, backwards=False), None)
        if earliest is None:
            continue
        latest = next(_firing_days(spec, year, backwards=True))
        if last is None:
            first = earliest.toordinal()
        else:
            longest = max(longest, earliest.toordinal() - last)
        last = latest.toordinal()
    if first is None or last is None:
        return None
    return max(longest, first + GREGORIAN_CYCLE_DAYS - last)


def _firing_days(spec: CronSpec, year: int, *, backwards: bool) -> Iterator[date]:
    """Yield the days of `year` the expression fires on, from either end of the year."""
    # Unless either day field is enough, only the day-of-month field's days can fire.
    either = spec.day_restricted and spec.weekday_restricted
    candidates = range(1, 32) if either else sorted(spec.days)
    for month in sorted(spec.months, reverse=backwards):
        month_days = calendar.monthrange(year, month)[1]
        days = [day_of_month for day_of_month in candidates if day_of_month <= month_days]
        for day_of_month in reversed(days) if backwards else days:
            day = date(year, month, day_of_month)
            if spec.matches_day(day):
                yield day


def due_occurrence(
    spec: CronSpec, zone: ZoneInfo, next_run_at: datetime, now: datetime
) -> Due | None:
    """Return the one run to fire at `now`, or None before `next_run_at`.

    Catch-up policy: however many runs were missed while no scheduler ran, the schedule fires
    once, for the latest missed occurrence, and the next run is the first one after `now`.
    """
    if next_run_at > now:
        return None
    # When `next_run_at` is no occurrence of the expression (set by hand), it fires as it is.
    occurrence = max(last_at_or_before(spec, zone, now), next_run_at)
    return Due(
        occurrence=occurrence,
        missed=_count_between(spec, zone, next_run_at, occurrence),
        next_run_at=next_after(spec, zone, max(occurrence, now)),
    )


def _count_between(spec: CronSpec, zone: ZoneInfo, first: datetime, last: datetime) -> int:
    """Count runs from `first` (inclusive) to `last` (exclusive), up to MAX_COUNTED_MISSES."""
    count = 0
    current = first
    while current < last and count < MAX_COUNTED_MISSES:
        count += 1
        current = next_after(spec, zone, current)
    return count


def _days(start: date, *, step: int) -> Iterator[date]:
    for offset in range(SEARCH_DAYS):
        yield start + timedelta(days=offset * step)


@functools.lru_cache(maxsize=DAY_CACHE_ENTRIES)
def instants_on(spec: CronSpec, zone: ZoneInfo, day: date) -> tuple[datetime, ...]:
    """Return every run on one local calendar day, as sorted distinct UTC instants."""
    if not spec.matches_day(day):
        return ()
    instants: set[datetime] = set()
    for hour in spec.hours:
        for minute in spec.minutes:
            wall = datetime(day.year, day.month, day.day, hour, minute)
            instants.update(_instants_of(wall, zone, interval=spec.hour_wildcard))
    return tuple(sorted(instants))


def _instants_of(wall: datetime, zone: ZoneInfo, *, interval: bool) -> tuple[datetime, ...]:
    """Map one local wall time to the instants it fires at (none, one, or both passes)."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    offset_first, offset_second = first.utcoffset(), second.utcoffset()
    if offset_first == offset_second:
        return (first.astimezone(UTC),)
    assert offset_first is not None
    assert offset_second is not None
    if offset_first > offset_second:  # repeated (fall-back) hour: the wall time happens twice
        if interval:
            return (first.astimezone(UTC), second.astimezone(UTC))
        return (first.astimezone(UTC),)
    # Skipped (spring-forward) hour: the wall time never happens.
    if interval:
        return ()
    return (_transition(second.astimezone(UTC), first.astimezone(UTC), zone),)


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """Return the instant in (before, after] where the zone's offset changes, to the second."""
    offset_before = before.astimezone(zone).utcoffset()
    while after - before > timedelta(seconds=1):
        middle = before + (after - before) / 2
        if middle.astimezone(zone).utcoffset() == offset_before:
            before = middle
        else:
            after = middle
    return after.replace(microsecond=0)
