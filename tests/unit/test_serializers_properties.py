"""Property tests: every serializer, for adversarial rows, is read back exactly by standard parsers
and by our readers, does not depend on batch sizes, and resumes after any batch byte for byte."""

from __future__ import annotations

import base64
import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from pipelines.formats import iter_records, xsd_bytes
from pipelines.formats.values import JsonNumber, iso_timestamp, pg_jsonb_text
from pipelines.records import ExportHeader, Kind, Row, RowBatch, Table, export_tables
from pipelines.serializers import ENCODERS
from pipelines.serializers.common import union_columns
from pipelines.serializers.xml import NAMESPACE

FORMATS = sorted(ENCODERS)
EXAMPLES = 30  # per format and property: enough variety while the unit suite stays fast

NASTY = [
    "",
    " ",
    "=1+2",
    "+33 1 23",
    "-x",
    "@SUM(A1)",
    "\tlead tab",
    "\rlead cr",
    "'quoted already",
    "''",
    '"',
    '""',
    "a,b",
    "a\nb",
    "a\r\nb",
    "\r",
    "]]>",
    "<tag>&amp;",
    "\x01\x02\x1f",
    "bell\x07",
    "\ufffe\uffff",
    "\x7f\x85\u2028",
    "Zoë ✓ 😀 \U0001d518",
    "None",
    "null",
    "\\N",
    "x" * 300,
]

_TEXT_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
_TEXT = st.one_of(st.sampled_from(NASTY), st.text(_TEXT_CHARS, max_size=40))


def _pg_timestamp(moment: datetime) -> str:
    text = f"{moment.year:04d}-" + moment.strftime("%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "+00"


_TIMESTAMP = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(_pg_timestamp),
    st.sampled_from(["infinity", "-infinity", "0044-03-15 12:00:00+00 BC"]),
)

_JSON_NUMBER = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: JsonNumber(str(n))),
    st.tuples(st.integers(-999, 999), st.integers(0, 999)).map(
        lambda p: JsonNumber(f"{p[0]}.{p[1]:03d}")
    ),
)
_JSON_TEXT = st.text(_TEXT_CHARS, max_size=12)


def _pg_sorted(value: Any) -> Any:
    """Order object keys as PostgreSQL's jsonb does: by UTF-8 length, then bytes."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: _pg_sorted(value[key]) for key in keys}
    if isinstance(value, list):
        return [_pg_sorted(item) for item in value]
    return value


_JSONB = st.recursive(
    st.none() | st.booleans() | _JSON_NUMBER | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_JSON_TEXT, inner, max_size=4),
    max_leaves=12,
).map(lambda value: pg_jsonb_text(_pg_sorted(value)))

VALUES: dict[str, st.SearchStrategy[str]] = {
    "uuid": st.uuids().map(str),
    "text": _TEXT,
    "bigint": st.integers(-(2**63), 2**63 - 1).map(str),
    "boolean": st.sampled_from(["t", "f"]),
    "timestamptz": _TIMESTAMP,
    "jsonb": _JSONB,
}


def rows_of(table: Table) -> st.SearchStrategy[list[Row]]:
    """Return a strategy for lists of rows of `table`, NULL allowed in every column but jsonb.

    The JSON formats write SQL NULL and JSON null alike in a jsonb column and read `null` back as
    JSON null: the exported jsonb columns are NOT NULL (docs/formats.md).
    """
    cells = [
        VALUES[column.kind] if column.kind == "jsonb" else st.none() | VALUES[column.kind]
        for column in table.columns
    ]
    return st.lists(st.tuples(*cells), max_size=8)


@st.composite
def exports(draw: st.DrawFn) -> tuple[tuple[Table, ...], list[Row], list[Row]]:
    """Draw the tables (with or without system fields) and rows for users and files."""
    tables = export_tables(draw(st.booleans()))
    return tables, draw(rows_of(tables[0])), draw(rows_of(tables[1]))


def split(table: Table, rows: list[Row], sizes: Sequence[int], start: int) -> list[RowBatch]:
    """Cut `rows` into batches of the given sizes (cycled), cursors counting from `start`."""
    batches: list[RowBatch] = []
    position = 0
    index = 0
    while position < len(rows) or not batches:
        size = sizes[index % len(sizes)] if sizes else len(rows)
        batches.append(RowBatch(table, rows[position : position + size], start + len(batches)))
        position += size
        index += 1
    return batches


HEADER = ExportHeader(
    export_id="3f6c9d1e-2b4a-4c8e-9f00-0123456789ab",
    export_type="bulk",
    snapshot_time=datetime(2026, 11, 3, 9, 30, 15, 123456, tzinfo=UTC) + timedelta(0),
    generator_name="data-export",
    generator_version="0.1.0",
    options={"includeMetadata": True, "includeSystemFields": False, "dateRange": None},
)

_SIZES = st.lists(st.integers(0, 5), min_size=1, max_size=4).filter(any)


def encode(fmt: str, batches: list[RowBatch], tables: Sequence[Table], metadata: bool) -> bytes:
    chunks = ENCODERS[fmt](batches, tables=tables, header=HEADER, include_metadata=metadata)
    return b"".join(chunk.data for chunk in chunks)


def json_value(kind: Kind, value: str | None) -> object:
    """Return what a standard JSON parser should read for a PostgreSQL text value."""
    if value is None:
        return None
    if kind == "bigint":
        return int(value)
    if kind == "boolean":
        return value == "t"
    if kind == "timestamptz":
        return iso_timestamp(value)
    if kind == "jsonb":
        return json.loads(value)
    return value


def text_value(kind: Kind, value: str) -> str:
    """Return the text CSV and XML carry for a non-NULL PostgreSQL text value."""
    if kind == "boolean":
        return "true" if value == "t" else "false"
    if kind == "timestamptz":
        return iso_timestamp(value)
    return value


_SCHEMA = etree.XMLSchema(etree.fromstring(xsd_bytes()))
_PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("fmt", FORMATS)
@_PROPERTY
@given(data=exports(), sizes=_SIZES, metadata=st.booleans())
def test_our_reader_returns_exactly_the_rows_written(
    fmt: str, data: tuple[tuple[Table, ...], list[Row], list[Row]], sizes: list[int], metadata: bool
) -> None:
    tables, users, files = data
    batches = split(tables[0], users, sizes, 0) + split(tables[1], files, sizes, 100)
    document = encode(fmt, batches, tables, metadata)
    stream = iter_records(
        iter([document[i : i + 7] for i in range(0, len(document), 7)]), format=fmt
    )
    records = list(stream)
    assert [r.values for r in records if r.table.name == "users"] == users
    assert [r.values for r in records if r.table.name == "files"] == files
    assert {r.table for r in records} <= set(tables)
    assert stream.counts == {
        name: n for name, n in (("users", len(users)), ("files", len(files))) if n
    }
    if metadata:
        assert stream.header == HEADER
        assert stream.trailer is not None
        assert dict(stream.trailer.counts) == {"users": len(users), "files": len(files)}
    else:
        assert stream.header is None
        assert stream.trailer is None


@pytest.mark.parametrize("fmt", FORMATS)
@_PROPERTY
@given(data=exports(), first=_SIZES, second=_SIZES)
def test_output_bytes_do_not_depend_on_batch_sizes(
    fmt: str,
    data: tuple[tuple[Table, ...], list[Row], list[Row]],
    first: list[int],
    second: list[int],
) -> None:
    tables, users, files = data
    one = split(tables[0], users, first, 0) + split(tables[1], files, first, 100)
    other = split(tables[0], users, second, 0) + split(tables[1], files, second, 100)
    assert encode(fmt, one, tables, True) == encode(fmt, other, tables, True)


@pytest.mark.parametrize("fmt", FORMATS)
@_PROPERTY
@given(data=exports(), sizes=_SIZES, cut=st.integers(0, 1000), metadata=st.booleans())
def test_resume_after_any_batch_reproduces_the_tail(
    fmt: str,
    data: tuple[tuple[Table, ...], list[Row], list[Row]],
    sizes: list[int],
    cut: int,
    metadata: bool,
) -> None:
    tables, users, files = data
    batches = split(tables[0], users, sizes, 0) + split(tables[1], files, sizes, 100)
    encoder = ENCODERS[fmt]
    chunks = list(encoder(batches, tables=tables, header=HEADER, include_metadata=metadata))
    resumable = [i for i, chunk in enumerate(chunks) if chunk.resume is not None]
    assert [chunks[i].cursor for i in resumable] == [batch.cursor for batch in batches]
    position = resumable[cut % len(resumable)]
    resumed_after = batches.index(next(b for b in batches if b.cursor == chunks[position].cursor))
    tail = encoder(
        batches[resumed_after + 1 :],
        tables=tables,
        header=HEADER,
        include_metadata=metadata,
        resume=chunks[position].resume,
    )
    assert b"".join(c.data for c in tail) == b"".join(c.data for c in chunks[position + 1 :])


@_PROPERTY
@given(data=exports(), metadata=st.booleans())
def test_json_module_reads_back_the_rows(
    data: tuple[tuple[Table, ...], list[Row], list[Row]], metadata: bool
) -> None:
    tables, users, files = data
    document = json.loads(
        encode(
            "json", [RowBatch(tables[0], users, 1), RowBatch(tables[1], files, 2)], tables, metadata
        )
    )
    assert document["format"] == "data-export"
    assert document["formatVersion"] == 1
    for table, rows in zip(tables, (users, files), strict=True):
        expected = [
            {c.name: json_value(c.kind, v) for c, v in zip(table.columns, row, strict=True)}
            for row in rows
        ]
        assert document[table.name] == expected
    assert ("metadata" in document) == metadata
    if metadata:
        assert document["metadata"]["counts"] == {"users": len(users), "files": len(files)}
        assert document["header"]["exportId"] == HEADER.export_id


@_PROPERTY
@given(data=exports(), metadata=st.booleans())
def test_json_per_line_reads_back_the_rows(
    data: tuple[tuple[Table, ...], list[Row], list[Row]], metadata: bool
) -> None:
    tables, users, files = data
    document = encode(
        "jsonl", [RowBatch(tables[0], users, 1), RowBatch(tables[1], files, 2)], tables, metadata
    )
    lines = [json.loads(line) for line in document.decode().split("\n")[:-1]]
    if metadata:
        assert lines.pop(0)["record_type"] == "header"
        assert lines.pop()["counts"] == {"users": len(users), "files": len(files)}
    expected = [
        {"record_type": table.name}
        | {c.name: json_value(c.kind, v) for c, v in zip(table.columns, row, strict=True)}
        for table, rows in zip(tables, (users, files), strict=True)
        for row in rows
    ]
    assert lines == expected


@_PROPERTY
@given(data=exports(), metadata=st.booleans())
def test_csv_module_reads_back_the_rows(
    data: tuple[tuple[Table, ...], list[Row], list[Row]], metadata: bool
) -> None:
    tables, users, files = data
    document = encode(
        "csv", [RowBatch(tables[0], users, 1), RowBatch(tables[1], files, 2)], tables, metadata
    )
    assert document.count(b"\r\n") >= 1 + len(users) + len(files)
    parsed = list(csv.reader(io.StringIO(document.decode("utf-8"), newline="")))
    columns = union_columns(tables)
    assert parsed.pop(0) == ["record_type", *columns] + (["export_info"] if metadata else [])
    if metadata:
        assert parsed.pop(0)[0] == "header"
        assert json.loads(parsed.pop()[-1])["counts"] == {"users": len(users), "files": len(files)}
    expected = []
    for table, rows in zip(tables, (users, files), strict=True):
        for row in rows:
            cells = dict.fromkeys(columns, "")
            for column, value in zip(table.columns, row, strict=True):
                if value is not None:
                    text = text_value(column.kind, value)
                    if column.kind in ("text", "jsonb") and text[:1] in "=+-@\t\r'" and text:
                        text = "'" + text
                    cells[column.name] = text
            expected.append([table.name, *cells.values()] + ([""] if metadata else []))
    assert parsed == expected


@_PROPERTY
@given(data=exports(), metadata=st.booleans())
def test_xml_is_valid_against_the_xsd_and_etree_reads_back_the_rows(
    data: tuple[tuple[Table, ...], list[Row], list[Row]], metadata: bool
) -> None:
    tables, users, files = data
    document = encode(
        "xml", [RowBatch(tables[0], users, 1), RowBatch(tables[1], files, 2)], tables, metadata
    )
    _SCHEMA.assertValid(etree.fromstring(document))
    root = ET.fromstring(document)  # noqa: S314 (our own output, the point of the test)
    ns = "{" + NAMESPACE + "}"
    nil = "{http://www.w3.org/2001/XMLSchema-instance}nil"
    for table, rows in zip(tables, (users, files), strict=True):
        section = root.find(ns + table.name)
        assert section is not None
        read = []
        for element in section:
            values: list[str | None] = []
            for child in element:
                if child.get(nil) == "true":
                    values.append(None)
                elif child.get("encoding") == "base64":
                    values.append(base64.b64decode(child.text or "").decode())
                else:
                    values.append(child.text or "")
            read.append(tuple(values))
        expected = [
            tuple(
                None if v is None else text_value(c.kind, v)
                for c, v in zip(table.columns, row, strict=True)
            )
            for row in rows
        ]
        assert read == expected
    assert (root.find(ns + "metadata") is not None) == metadata
