"""Readers: exact round trips of awkward values, and clear errors for truncated or foreign input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.formats import CorruptExportError, iter_records
from pipelines.formats.values import iso_timestamp, pg_timestamp
from pipelines.records import ExportHeader, Row, RowBatch, export_tables
from pipelines.serializers import ENCODERS

HEADER = ExportHeader(
    export_id="e-1",
    export_type="bulk",
    snapshot_time=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
    generator_name="data-export",
    generator_version="0.1.0",
    options={"dateRange": {"start": "2024-01-01", "end": "2024-12-31"}, "level": 3},
)
TABLES = export_tables(True)
LONG = "é" * 300_000  # past the csv module's default 128 KiB field limit
USERS: list[Row] = [
    ("0b5f7c1e-0000-4000-8000-000000000001", LONG, "'=x", "user", '{"a": "\\u0001 é"}',
     "2024-03-01 12:00:00.5+00", "10000-01-01 00:00:00+00", None, "t"),
    ("0b5f7c1e-0000-4000-8000-000000000002", "", "\x0b]]>\r", "admin", "null",
     "-infinity", "0044-03-15 12:00:00+00 BC", "2024-03-01 12:00:00+00", "f"),
]  # fmt: skip
FILES: list[Row] = [
    ("1b5f7c1e-0000-4000-8000-000000000001", "0b5f7c1e-0000-4000-8000-000000000001", "a,\"b\"\n",
     "0", "", "f" * 64, "2024-03-01 12:00:00+00", "2024-03-01 12:00:00+00", "[]", "k", None),
]  # fmt: skip


def export(fmt: str, *, metadata: bool = True) -> bytes:
    batches = [RowBatch(TABLES[0], USERS, 1), RowBatch(TABLES[1], FILES, 2)]
    chunks = ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=metadata)
    return b"".join(chunk.data for chunk in chunks)


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_long_and_awkward_values_come_back_exactly(fmt: str) -> None:
    data = export(fmt)
    stream = iter_records((data[i : i + 4096] for i in range(0, len(data), 4096)), format=fmt)
    records = list(stream)
    assert [r.values for r in records] == USERS + FILES
    assert [r.table for r in records] == [TABLES[0], TABLES[0], TABLES[1]]
    assert stream.header == HEADER
    assert stream.trailer is not None
    assert stream.trailer.counts == stream.counts == {"users": 2, "files": 1}


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
@pytest.mark.parametrize("metadata", [True, False])
def test_truncated_export_is_reported_as_corrupt(fmt: str, metadata: bool) -> None:
    data = export(fmt, metadata=metadata)
    with pytest.raises(CorruptExportError, match=r"truncated|malformed"):
        list(iter_records([data[:-20]], format=fmt))


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_another_format_is_refused_with_a_clear_error(fmt: str) -> None:
    other = {"json": "xml", "jsonl": "csv", "csv": "json", "xml": "jsonl"}[fmt]
    with pytest.raises(CorruptExportError):
        list(iter_records([export(other)], format=fmt))


def test_unknown_format_is_refused() -> None:
    with pytest.raises(CorruptExportError, match="unknown export format"):
        iter_records([], format="yaml")


def test_a_record_missing_a_column_is_refused() -> None:
    line = b'{"record_type":"users","id":"0b5f7c1e-0000-4000-8000-000000000001"}\n'
    with pytest.raises(CorruptExportError, match="lacks column"):
        list(iter_records([line], format="jsonl"))


def test_csv_stray_quote_is_refused_without_reading_to_the_end() -> None:
    def chunks() -> object:
        yield b'record_type,id\r\n"users","a"x,\r\n'
        raise AssertionError("read past the malformed row")

    with pytest.raises(CorruptExportError, match="malformed CSV"):
        list(iter_records(chunks(), format="csv"))  # type: ignore[arg-type]


def test_csv_stray_quote_in_a_value_spanning_lines_is_refused_without_reading_on() -> None:
    def chunks() -> object:
        yield b'record_type,id\r\n"users","a\r\nb"x"c\r\n'
        raise AssertionError("read past the malformed row")

    with pytest.raises(CorruptExportError, match="malformed CSV"):
        list(iter_records(chunks(), format="csv"))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_jsonb_numbers_a_double_cannot_hold_come_back_as_written(fmt: str) -> None:
    metadata = '{"n": 1.50, "big": 123456789012345678901234567890, "tiny": 1e-400}'
    row = (*FILES[0][:8], metadata, *FILES[0][9:])
    batches = [RowBatch(TABLES[0], USERS, 1), RowBatch(TABLES[1], [row], 2)]
    chunks = ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=False)
    records = list(iter_records((chunk.data for chunk in chunks), format=fmt))
    assert [r.values for r in records] == [*USERS, row]


@pytest.mark.parametrize(
    "text",
    ["2024-03-01 12:00:00+00", "2024-03-01 12:00:00.000001+00", "infinity",
     "12345-06-07 08:09:10.5+00", "2024-03-01 12:00:00+05:30", "0044-03-15 12:00:00+00 BC"],
)  # fmt: skip
def test_timestamps_round_trip_through_iso_form(text: str) -> None:
    assert pg_timestamp(iso_timestamp(text)) == text
