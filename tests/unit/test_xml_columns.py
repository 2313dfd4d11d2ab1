"""XML written a column at a time from CSV rows is byte for byte XML written from the rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from copy_csv import both_ways, copy_csv, row_lists
from hypothesis import given
from hypothesis import strategies as st

from pipelines.records import (
    CsvRowBatch,
    ExportHeader,
    Row,
    SourceBatch,
    Table,
    export_tables,
)
from pipelines.serializers import arrow_columns, encode_xml
from pipelines.serializers.xml_columns import ColumnarRecordWriter

USERS, FILES = export_tables(True)
HEADER = ExportHeader("e1", "bulk", datetime(2026, 1, 1, tzinfo=UTC), "test", "1")

# Markup characters, what XML forbids (C0 controls, U+FFFE, U+FFFF), line breaks, quotes and
# what looks like a CSV record boundary, beside any text PostgreSQL can hold (no NUL).
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.lists(
        st.sampled_from(
            [
                *("&", "<", ">", "]]>", "]]", "\r", "\n", "\r\n", '"', ",", '\n"files","'),
                *("\x01", "\x0b", "\x1f", "\t", "\ufffe", "\uffff", "é", "𝄞", "&amp;", "x"),
            ]
        ),
        max_size=6,
    ).map("".join),
)


def _rows(table: Table) -> st.SearchStrategy[list[Row]]:
    return row_lists(table, TEXT, TEXT)


def _document(batches: list[SourceBatch]) -> bytes:
    chunks = encode_xml(batches, tables=(USERS, FILES), header=HEADER, include_metadata=True)
    return b"".join(chunk.data for chunk in chunks)


@given(users=_rows(USERS), files=_rows(FILES), split=st.integers(min_value=0, max_value=6))
def test_csv_rows_give_the_bytes_of_the_same_rows(
    users: list[Row], files: list[Row], split: int
) -> None:
    from_rows, from_csv = both_ways(USERS, FILES, users, files, split)

    assert _document(from_csv) == _document(from_rows)


@given(files=_rows(FILES))
def test_markup_escaped_by_row_or_by_column_gives_the_same_bytes(files: list[Row]) -> None:
    batch = CsvRowBatch(FILES, copy_csv(FILES, files), len(files), None)

    by_row = ColumnarRecordWriter(FILES, dense_share=float("inf"))(batch)
    by_column = ColumnarRecordWriter(FILES, dense_share=0.0)(batch)

    assert by_row == by_column


def test_a_batch_whose_record_count_is_wrong_is_refused() -> None:
    row = ("1", "x", "text/plain", None, None)
    table = FILES.select(["id", "path", "content_type", "metadata", "deleted_at"])
    writer = ColumnarRecordWriter(table)

    with pytest.raises(ValueError, match="holds 1 records, not 2"):
        writer(CsvRowBatch(table, copy_csv(table, [row]), 2, None))


def test_null_and_empty_text_stay_apart() -> None:
    table = FILES.select(["id", "path", "metadata"])
    data = copy_csv(table, [("1", "", None)])

    written = ColumnarRecordWriter(table)(CsvRowBatch(table, data, 1, None))

    assert written == b'\n<file><id>1</id><path></path><metadata xsi:nil="true"/></file>'


def test_a_batch_read_in_several_blocks_gives_the_same_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = FILES.select(["id", "path"])
    rows: list[Row] = [(str(i), "line\n" * 20 + "é" * i) for i in range(200)]
    batch = CsvRowBatch(table, copy_csv(table, rows), len(rows), None)
    whole = ColumnarRecordWriter(table)(batch)

    monkeypatch.setattr(arrow_columns, "MAX_BLOCK_BYTES", 1000)
    in_blocks = ColumnarRecordWriter(table)(batch)

    assert in_blocks == whole
    assert whole.count(b"<file>") == 200
