"""Due-time logic with a controllable clock: cron fields, IANA zones, DST change days, catch-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workers.scheduling import (
    CronError,
    ZoneError,
    due_occurrence,
    last_at_or_before,
    next_after,
    parse_cron,
    zone_for,
)
from workers.scheduling.occurrences import checked_zone

BERLIN = zone_for("Europe/Berlin")
NEW_YORK = zone_for("America/New_York")


def runs(expression: str, zone_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Every run in [start, end), found by stepping the clock run to run."""
    spec, zone = parse_cron(expression), zone_for(zone_name)
    found: list[datetime] = []
    moment = next_after(spec, zone, start - timedelta(microseconds=1))
    while moment < end:
        found.append(moment)
        moment = next_after(spec, zone, moment)
    return found


def local(moments: list[datetime], zone_name: str) -> list[str]:
    zone = zone_for(zone_name)
    return [moment.astimezone(zone).strftime("%m-%d %H:%M%z") for moment in moments]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_daily_run_in_skipped_hour_fires_once_at_the_jump_in_berlin() -> None:
    found = runs("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27), utc(2026, 3, 31))
    assert local(found, "Europe/Berlin") == [
        "03-27 02:30+0100",
        "03-28 02:30+0100",
        "03-29 03:00+0200",
        "03-30 02:30+0200",
    ]


def test_daily_run_in_repeated_hour_fires_once_in_berlin() -> None:
    found = runs("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24), utc(2026, 10, 27))
    assert local(found, "Europe/Berlin") == [
        "10-24 02:30+0200",
        "10-25 02:30+0200",
        "10-26 02:30+0100",
    ]


def test_interval_schedule_keeps_real_time_cadence_across_fall_back() -> None:
    found = runs("*/30 * * * *", "Europe/Berlin", utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
    assert [moment.strftime("%H:%M") for moment in found] == [
        "23:00", "23:30", "00:00", "00:30", "01:00", "01:30", "02:00", "02:30",
    ]  # fmt: skip


def test_interval_schedule_has_no_run_at_nonexistent_times_on_spring_forward() -> None:
    found = runs("*/30 * * * *", "Europe/Berlin", utc(2026, 3, 29, 0), utc(2026, 3, 29, 2))
    assert local(found, "Europe/Berlin") == [
        "03-29 01:00+0100",
        "03-29 01:30+0100",
        "03-29 03:00+0200",
        "03-29 03:30+0200",
    ]


@pytest.mark.parametrize(
    ("start", "end"),
    [(utc(2026, 3, 7), utc(2026, 3, 10)), (utc(2026, 10, 31), utc(2026, 11, 3))],
)
def test_new_york_daily_job_runs_exactly_once_per_local_day_around_changes(
    start: datetime, end: datetime
) -> None:
    found = runs("15 2 * * *", "America/New_York", start, end)
    days = [moment.astimezone(NEW_YORK).date() for moment in found]
    assert len(days) == len(set(days)) == 3


def test_every_day_of_a_year_gets_one_run_in_berlin() -> None:
    found = runs("30 2 * * *", "Europe/Berlin", utc(2026, 1, 1), utc(2027, 1, 1))
    days = {moment.astimezone(BERLIN).date() for moment in found}
    assert len(found) == len(days) == 365


def test_day_of_month_and_weekday_both_restricted_match_either() -> None:
    found = runs("0 9 1 * mon", "UTC", utc(2026, 6, 1), utc(2026, 6, 16))
    assert [moment.day for moment in found] == [1, 8, 15]


def test_macros_names_ranges_and_steps_parse() -> None:
    assert parse_cron("@hourly").minutes == (0,)
    assert parse_cron("0 0 * jan-mar sun").months == frozenset({1, 2, 3})
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)
    assert parse_cron("0 0 * * 7").weekdays == frozenset({0})


@pytest.mark.parametrize(
    "expression",
    ["* * * *", "61 * * * *", "* * * * * *", "*/0 * * * *", "5-1 * * * *", "x * * * *"],
)
def test_malformed_expressions_are_refused(expression: str) -> None:
    with pytest.raises(CronError):
        parse_cron(expression)


def test_expression_that_never_fires_is_refused() -> None:
    with pytest.raises(CronError, match="does not fire"):
        next_after(parse_cron("0 0 31 2 *"), BERLIN, utc(2026, 1, 1))


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ZoneError):
        zone_for("Mars/Olympus_Mons")


def test_not_yet_due_schedule_does_nothing() -> None:
    spec = parse_cron("0 * * * *")
    assert due_occurrence(spec, BERLIN, utc(2026, 5, 1, 10), utc(2026, 5, 1, 9, 59)) is None


def test_on_time_schedule_fires_its_occurrence_and_moves_to_the_next() -> None:
    spec = parse_cron("0 * * * *")
    due = due_occurrence(
        spec, BERLIN, utc(2026, 5, 1, 10), utc(2026, 5, 1, 10, 0) + timedelta(seconds=3)
    )
    assert due is not None
    assert (due.occurrence, due.missed, due.next_run_at) == (
        utc(2026, 5, 1, 10),
        0,
        utc(2026, 5, 1, 11),
    )


def test_missed_window_fires_once_for_the_latest_occurrence() -> None:
    spec = parse_cron("*/10 * * * *")
    now = utc(2026, 5, 1, 13, 7)  # the scheduler was down from 10:00 to 13:07
    due = due_occurrence(spec, BERLIN, utc(2026, 5, 1, 10), now)
    assert due is not None
    assert due.occurrence == utc(2026, 5, 1, 13, 0)
    assert due.missed == 18  # 10:00 ... 12:50 folded into the one run
    assert due.next_run_at == utc(2026, 5, 1, 13, 10)


def test_missed_window_across_spring_forward_still_fires_once() -> None:
    spec = parse_cron("30 2 * * *")
    due = due_occurrence(spec, BERLIN, utc(2026, 3, 27, 1, 30), utc(2026, 3, 29, 12))
    assert due is not None
    assert due.occurrence.astimezone(BERLIN).strftime("%d %H:%M%z") == "29 03:00+0200"
    assert due.missed == 2
    assert due.next_run_at > utc(2026, 3, 29, 12)


def test_last_at_or_before_includes_the_instant_itself() -> None:
    spec = parse_cron("0 12 * * *")
    assert last_at_or_before(spec, NEW_YORK, utc(2026, 7, 1, 16)) == utc(2026, 7, 1, 16)


def test_stepped_day_of_month_fires_on_the_stepped_days_only() -> None:
    found = runs("0 0 */2 * *", "UTC", utc(2024, 3, 1), utc(2024, 4, 5))
    assert [moment.strftime("%m-%d") for moment in found] == [
        *(f"03-{day:02d}" for day in range(1, 32, 2)),
        "04-01", "04-03",
    ]  # fmt: skip
    assert found == runs("0 0 1-31/2 * *", "UTC", utc(2024, 3, 1), utc(2024, 4, 5))


def test_stepped_day_of_week_fires_on_sunday_tuesday_thursday_saturday() -> None:
    found = runs("0 0 * * */2", "UTC", utc(2024, 3, 1), utc(2024, 3, 15))
    assert [moment.strftime("%d %a") for moment in found] == [
        "02 Sat", "03 Sun", "05 Tue", "07 Thu", "09 Sat", "10 Sun", "12 Tue", "14 Thu",
    ]  # fmt: skip


def test_stepped_day_of_month_with_a_weekday_needs_both_like_vixie_cron() -> None:
    # A day field starting with `*` (`*/10`) does not take cron's either-day rule: days 1, 11,
    # 21 and 31 that are also Mondays (cronie's and Vixie cron's reading).
    found = runs("0 0 */10 * 1", "UTC", utc(2024, 1, 1), utc(2025, 1, 1))
    assert [moment.strftime("%m-%d %a") for moment in found] == [
        "01-01 Mon", "03-11 Mon", "04-01 Mon", "07-01 Mon", "10-21 Mon", "11-11 Mon",
    ]  # fmt: skip


def test_stepped_day_of_week_with_a_day_of_month_needs_both_like_vixie_cron() -> None:
    found = runs("0 0 13 * */5", "UTC", utc(2024, 1, 1), utc(2025, 1, 1))  # Sundays, Fridays
    assert [moment.strftime("%m-%d %a") for moment in found] == [
        "09-13 Fri", "10-13 Sun", "12-13 Fri",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "localtime",
        "Factory",
        "posixrules",
        "posix/Europe/Berlin",
        "right/Europe/Berlin",
        "Europe/Berlin ",
        "",
    ],
)
def test_names_that_are_no_iana_zone_are_refused_for_new_schedules(name: str) -> None:
    with pytest.raises(ZoneError, match="IANA"):
        checked_zone(name)


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/New_York", "Etc/GMT+3"])
def test_iana_zone_names_are_accepted_for_new_schedules(name: str) -> None:
    assert checked_zone(name) == zone_for(name)
