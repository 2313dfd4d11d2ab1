"""Export options: the seed's request shape, checked with every bad field named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.options import InvalidOptionsError, parse_options


def parse(export_format: object = "json", options: object = None):  # type: ignore[no-untyped-def]
    return parse_options(export_format, options, default_compression="zstd")


def test_defaults_are_json_with_metadata_and_no_compression() -> None:
    options = parse()
    assert (options.format, options.compression) == ("json", "none")
    assert options.include_metadata is True
    assert options.include_system_fields is False
    assert options.date_range is None


def test_compression_true_means_the_configured_default() -> None:
    assert parse(options={"compression": True}).compression == "zstd"
    assert parse(options={"compression": "gzip"}).compression == "gzip"
    assert parse(options={"compression": False}).compression == "none"


def test_compression_is_refused_when_the_server_disables_it() -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        parse_options(
            "csv", {"compression": "gzip"}, default_compression="zstd", compression_enabled=False
        )
    assert "options.compression" in caught.value.problems


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        parse(
            "yaml",
            {
                "compression": "brotli",
                "includeMetadata": "yes",
                "colour": "blue",
                "dateRange": {"start": "2024-13-01"},
            },
        )
    assert set(caught.value.problems) == {
        "format",
        "options.compression",
        "options.includeMetadata",
        "options.colour",
        "options.dateRange.start",
    }


def test_end_before_start_is_rejected() -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        parse(options={"dateRange": {"start": "2024-02-01", "end": "2024-01-01"}})
    assert caught.value.problems == {"options.dateRange": "end is before start"}


def test_date_only_end_includes_the_whole_day() -> None:
    options = parse(options={"dateRange": {"start": "2024-01-01", "end": "2024-01-31"}})
    assert options.date_range is not None
    assert options.date_range.start == datetime(2024, 1, 1, tzinfo=UTC)
    assert options.date_range.end_exclusive == datetime(2024, 2, 1, tzinfo=UTC)


def test_date_time_end_is_inclusive_to_the_microsecond() -> None:
    options = parse(options={"dateRange": {"end": "2024-01-31T12:00:00+00:00"}})
    assert options.date_range is not None
    assert options.date_range.end_exclusive == datetime(2024, 1, 31, 12, 0, 0, 1, tzinfo=UTC)


def test_date_time_without_offset_is_rejected() -> None:
    with pytest.raises(InvalidOptionsError, match="UTC offset"):
        parse(options={"dateRange": {"start": "2024-01-31T12:00:00"}})


def test_empty_date_range_is_rejected() -> None:
    with pytest.raises(InvalidOptionsError, match="give start, end or both"):
        parse(options={"dateRange": {}})


@pytest.mark.parametrize("end", ["9999-12-31", "9999-12-31T23:59:59.999999+00:00"])
def test_end_on_the_last_day_of_the_calendar_is_a_named_problem(end: str) -> None:
    with pytest.raises(InvalidOptionsError) as caught:
        parse(options={"dateRange": {"end": end}})
    assert caught.value.problems == {
        "options.dateRange.end": "must be before 9999-12-31; leave the end out for no upper bound"
    }
