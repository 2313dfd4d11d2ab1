"""Cron parsing refusals: only ASCII digits count, and an expression must fire often enough."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from workers.scheduling import CronError, next_after, parse_cron, zone_for
from workers.scheduling.occurrences import MAX_GAP_DAYS, check_recurrence


@pytest.mark.parametrize(
    "expression",
    [
        "² * * * *",  # superscript two: str.isdigit() says yes, int() fails
        "*/² * * * *",
        "٣ * * * *",  # Arabic-Indic three: int() reads it as 3
        "0 \uff13 * * *",  # fullwidth three
        "0 0 1-٣ * *",
    ],
)
def test_non_ascii_digits_are_refused_as_cron_errors(expression: str) -> None:
    with pytest.raises(CronError, match="ASCII"):
        parse_cron(expression)


def test_ascii_digits_names_and_steps_still_parse() -> None:
    spec = parse_cron("5,10-12 */6 1 jan-mar mon")
    assert spec.minutes == (5, 10, 11, 12)
    assert spec.hours == (0, 6, 12, 18)
    assert spec.months == frozenset({1, 2, 3})


@pytest.mark.parametrize("expression", ["0 0 */28 2 1", "0 0 */31 6 5"])
def test_expression_with_runs_further_apart_than_the_search_window_fires_too_rarely(
    expression: str,
) -> None:
    with pytest.raises(CronError, match="fires too rarely"):
        check_recurrence(parse_cron(expression))


def test_too_rare_expression_really_loses_its_next_run_in_the_search() -> None:
    # Monday 2027-02-01 fires; the next Monday that is February 1 or 29 is years out of reach.
    spec = parse_cron("0 0 */28 2 1")
    first = next_after(spec, zone_for("UTC"), datetime(2026, 6, 1, tzinfo=UTC))
    assert first == datetime(2027, 2, 1, tzinfo=UTC)
    with pytest.raises(CronError):
        next_after(spec, zone_for("UTC"), first)


def test_expression_that_never_fires_is_refused_by_the_recurrence_check() -> None:
    with pytest.raises(CronError, match="never fires"):
        check_recurrence(parse_cron("0 0 30 2 *"))


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "0 0 29 2 *",  # every four years, eight across 2100: still within the window
        "0 0 1 2 1",  # either field: every Monday in February and February 1
        "0 0 */10 * 1",
        "0 3 13 * 5",
        "@yearly",
    ],
)
def test_expressions_that_recur_within_the_window_pass(expression: str) -> None:
    check_recurrence(parse_cron(expression))


def test_leap_day_gap_across_2100_fits_the_window() -> None:
    spec = parse_cron("0 0 29 2 *")
    after_2096 = next_after(spec, zone_for("UTC"), datetime(2096, 2, 29, tzinfo=UTC))
    assert after_2096 == datetime(2104, 2, 29, tzinfo=UTC)
    assert (after_2096 - datetime(2096, 2, 29, tzinfo=UTC)).days <= MAX_GAP_DAYS
