"""JSON and JSON Lines written a column at a time from CSV rows are byte for byte those written
from the rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
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
from pipelines.serializers import Encoder, encode_json, encode_jsonl
from pipelines.serializers.json_columns import ColumnarJsonWriter

USERS, FILES = export_tables(True)
HEADER = ExportHeader("e1", "bulk", datetime(2026, 1, 1, tzinfo=UTC), "test", "1")

# What JSON escapes (quotes, backslashes, every C0 control), what it does not (DEL, U+2028, `/`),
# what looks like a CSV record boundary or JSON markup, beside any text PostgreSQL can hold.
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    st.lists(
        st.sampled_from(
            [
                *('"', "\\", '\\"', "\n", "\r\n", "\t", "\x01", "\x1f", "\x7f", "\u2028", "/"),
                *(",", '\n"files","', '"},{"', "null", "é", "𝄞", "x", ""),
            ]
        ),
        max_size=6,
    ).map("".join),
)
# jsonb arrives as PostgreSQL prints it: valid JSON, embedded as it is.
JSONB = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
).map(lambda value: json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))


def _rows(table: Table) -> st.SearchStrategy[list[Row]]:
    return row_lists(table, TEXT, JSONB)


@pytest.mark.parametrize("encoder", [encode_json, encode_jsonl])
@given(users=_rows(USERS), files=_rows(FILES), split=st.integers(min_value=0, max_value=6))
def test_csv_rows_give_the_bytes_of_the_same_rows(
    encoder: Encoder, users: list[Row], files: list[Row], split: int
) -> None:
    from_rows, from_csv = both_ways(USERS, FILES, users, files, split)

    def written(batches: list[SourceBatch]) -> bytes:
        chunks = encoder(batches, tables=(USERS, FILES), header=HEADER, include_metadata=True)
        return b"".join(chunk.data for chunk in chunks)

    assert written(from_csv) == written(from_rows)


@given(files=_rows(FILES))
def test_escapes_written_by_value_or_by_column_give_the_same_bytes(files: list[Row]) -> None:
    batch = CsvRowBatch(FILES, copy_csv(FILES, files), len(files), None)

    by_value = ColumnarJsonWriter(FILES, dense_share=float("inf"))(batch)
    by_column = ColumnarJsonWriter(FILES, dense_share=0.0)(batch)

    assert by_value == by_column


def test_values_needing_escapes_are_written_as_json_writes_them() -> None:
    table = FILES.select(["id", "path", "size_bytes", "metadata"])
    rows: list[Row] = [
        ("1", 'say "hi"\\\n\t\x01', "12", '{"a": [1, null]}'),
        ("2", "plain", None, None),
        ("3", "", "-5", "true"),
    ]
    batch = CsvRowBatch(table, copy_csv(table, rows), len(rows), None)

    written = ColumnarJsonWriter(table, after="\n")(batch)

    assert written.splitlines() == [
        b'{"id":"1","path":' + orjson.dumps(rows[0][1]) + b',"size_bytes":12,'
        b'"metadata":{"a": [1, null]}}',
        b'{"id":"2","path":"plain","size_bytes":null,"metadata":null}',
        b'{"id":"3","path":"","size_bytes":-5,"metadata":true}',
    ]
    assert [json.loads(line)["path"] for line in written.splitlines()] == [
        rows[0][1],
        "plain",
        "",
    ]


def test_an_empty_batch_writes_nothing() -> None:
    assert ColumnarJsonWriter(FILES)(CsvRowBatch(FILES, b"", 0, None)) == b""
