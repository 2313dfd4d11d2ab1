"""Cutting PostgreSQL's COPY CSV output into whole-record blocks, with CRLF terminators or LF."""

from __future__ import annotations

import csv
import io
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.database_csv import CsvRecordCutter, iter_csv_blocks

# What a value may hold, weighted towards what could be mistaken for a record boundary.
TRICKY = st.lists(
    st.sampled_from(['"', ",", "\n", "\r", "files", '\n"files","', "x", "é", "'"]), max_size=8
).map("".join)


def _copy_record(table: str, key: str, values: list[str | None]) -> bytes:
    """Return one record as `COPY (FORMAT csv, FORCE_QUOTE *)` writes it, LF-terminated."""
    fields = [table, key, *values]
    cells = ["" if v is None else '"' + v.replace('"', '""') + '"' for v in fields]
    return (",".join(cells) + "\n").encode()


ROWS = st.lists(st.lists(st.none() | TRICKY, min_size=2, max_size=2), min_size=1, max_size=8)
CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=6)


def _framed(rows: list[list[str | None]], cuts: list[int]) -> tuple[bytes, list[bytes]]:
    """Return COPY's output for `rows` (keys k0, k1, ...) and that output cut at `cuts`."""
    output = b"".join(_copy_record("files", f"k{i}", row) for i, row in enumerate(rows))
    bounds = sorted({0, len(output), *(c for c in cuts if c < len(output))})
    return output, [output[a:b] for a, b in itertools.pairwise(bounds)]


def _records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@given(rows=ROWS, cuts=CUTS, batch=st.integers(min_value=1, max_value=4))
def test_blocks_are_the_records_with_crlf_however_the_output_is_framed(
    rows: list[list[str | None]], cuts: list[int], batch: int
) -> None:
    _, messages = _framed(rows, cuts)

    blocks = list(
        iter_csv_blocks(messages, table_name="files", key_fields=[1], batch_messages=batch)
    )

    data = b"".join(block.data for block in blocks)
    assert sum(block.records for block in blocks) == len(rows)
    assert data == b"".join(
        _copy_record("files", f"k{i}", row)[:-1] + b"\r\n" for i, row in enumerate(rows)
    )
    expected = [
        ["files", f"k{i}", *("" if v is None else v for v in row)] for i, row in enumerate(rows)
    ]
    assert _records(data) == expected
    # Each block ends a record, and says which.
    seen = 0
    for block in blocks:
        seen += block.records
        assert block.last_key == (f"k{seen - 1}",)


def test_a_value_holding_a_line_end_and_the_table_name_stays_inside_its_record() -> None:
    record = _copy_record("files", "k0", ['a\n"files","b', "c"]) + _copy_record("files", "k1", [])
    cutter = CsvRecordCutter("files", key_fields=[1])

    first = cutter.cut([record])
    last = cutter.finish()

    assert first is not None
    assert last is not None
    assert first.records == 1
    assert first.data == b'"files","k0","a\n""files"",""b","c"\r\n'
    assert (last.data, last.last_key) == (b'"files","k1"\r\n', ("k1",))


def test_output_that_stops_inside_a_record_is_refused() -> None:
    cutter = CsvRecordCutter("users", key_fields=[1])
    assert cutter.cut([b'"users","k0","a']) is None

    with pytest.raises(ValueError, match="ended inside a record"):
        cutter.finish()


def test_output_of_another_table_is_refused() -> None:
    cutter = CsvRecordCutter("users", key_fields=[1])
    cutter.cut([b'"files","k0"\n"files","k1"\n'])

    with pytest.raises(ValueError, match="not start with a record of users"):
        cutter.finish()


@given(rows=ROWS, cuts=CUTS, batch=st.integers(min_value=1, max_value=4))
def test_blocks_keep_copys_lf_when_asked_however_the_output_is_framed(
    rows: list[list[str | None]], cuts: list[int], batch: int
) -> None:
    output, messages = _framed(rows, cuts)

    blocks = list(
        iter_csv_blocks(
            messages, table_name="files", key_fields=[1], batch_messages=batch, crlf=False
        )
    )

    assert b"".join(block.data for block in blocks) == output
    assert sum(block.records for block in blocks) == len(rows)
    seen = 0
    for block in blocks:
        seen += block.records
        assert block.data.endswith(b"\n")
        assert block.last_key == (f"k{seen - 1}",)
