"""Deeply nested jsonb reads back exactly from the JSON formats, and hostile depth is a clear error.

PostgreSQL stores jsonb nested thousands of levels deep (its limit follows `max_stack_depth`);
orjson stops at 1024 levels and Python's json module and `==` at the recursion limit, so these
values take the readers' exact path, which must neither recurse nor build the value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipelines.formats import CorruptExportError, RecordStream, iter_records
from pipelines.formats.json_text import object_members
from pipelines.records import ExportHeader, Row, RowBatch, export_tables
from pipelines.serializers import ENCODERS

HEADER = ExportHeader(
    export_id="e-deep",
    export_type="bulk",
    snapshot_time=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
    generator_name="data-export",
    generator_version="0.1.0",
    options={"includeMetadata": True},
)
TABLES = export_tables(True)
USER: Row = (
    "0b5f7c1e-0000-4000-8000-000000000001", "a@example.com", "A", "user", "{}",
    "2024-03-01 12:00:00+00", "2024-03-01 12:00:00+00", None, "f",
)  # fmt: skip
# Past PostgreSQL's own limit at its default max_stack_depth (about 14,500 levels of arrays):
# the reader must never be what stops a value the database can hold.
DEPTHS = [900, 1000, 1025, 1100, 5_000, 20_000]


def _nested(depth: int) -> str:
    """Return jsonb text as PostgreSQL prints it: arrays and objects alternating, `depth` deep."""
    opening = "".join('{"k": ' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opening + "1" + closing


def _file(metadata: str) -> Row:
    return (
        "1b5f7c1e-0000-4000-8000-000000000001", USER[0], "a.txt", "1", "text/plain", "f" * 64,
        "2024-03-01 12:00:00+00", "2024-03-01 12:00:00+00", metadata, "files/a", None,
    )  # fmt: skip


def _export(fmt: str, files: list[Row]) -> bytes:
    batches = [RowBatch(TABLES[0], [USER], 1), RowBatch(TABLES[1], files, 2)]
    chunks = ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=True)
    return b"".join(chunk.data for chunk in chunks)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_deeply_nested_jsonb_reads_back_as_written(fmt: str, depth: int) -> None:
    metadata = _nested(depth)
    shallow = '{"n": 123456789012345678901234567890}'  # orjson cannot hold it: exact path too
    files = [_file(metadata), _file(shallow)]
    data = _export(fmt, files)
    stream = iter_records((data[i : i + 65536] for i in range(0, len(data), 65536)), format=fmt)
    records = [record.values for record in stream]
    assert records == [USER, *files]
    assert stream.trailer is not None
    assert stream.trailer.counts == stream.counts == {"users": 1, "files": 2}


def test_reading_deep_jsonb_leaves_the_recursion_limit_alone() -> None:
    limit = sys.getrecursionlimit()
    data = _export("jsonl", [_file(_nested(5_000))])
    list(iter_records([data], format="jsonl"))
    assert sys.getrecursionlimit() == limit


@pytest.mark.parametrize("column", ["path", "size_bytes"])
def test_deep_array_where_a_scalar_belongs_is_a_corrupt_export(column: str) -> None:
    values = {"path": '"a"', "size_bytes": "1"}
    values[column] = "[" * 5_000 + "]" * 5_000
    line = (
        '{"record_type":"files","id":"1b5f7c1e-0000-4000-8000-000000000001",'
        f'"owner_id":"{USER[0]}","path":{values["path"]},"size_bytes":{values["size_bytes"]},'
        f'"content_type":"c","sha256":"{"f" * 64}","created_at":"2024-03-01T12:00:00Z",'
        '"updated_at":"2024-03-01T12:00:00Z","metadata":{},"object_key":"k","deleted_at":null}\n'
    )
    with pytest.raises(CorruptExportError, match="cannot be a JSON array"):
        list(iter_records([line.encode()], format="jsonl"))


def test_deep_header_options_are_a_corrupt_export() -> None:
    deep = "[" * 5_000 + "]" * 5_000
    line = (
        '{"record_type":"header","exportId":"e","exportType":"bulk","formatVersion":1,'
        '"snapshotTime":"2026-11-03T09:30:00.000000Z",'
        f'"generator":{{"name":"g","version":"1"}},"options":{{"x":{deep}}}}}\n'
    )
    with pytest.raises(CorruptExportError, match="nested too deeply"):
        list(iter_records([line.encode()], format="jsonl"))


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_deep_jsonb_cut_short_is_a_corrupt_export(fmt: str) -> None:
    data = _export(fmt, [_file(_nested(5_000))])
    broken = data.replace(b"1}]}", b"1}}", 1)  # one array left open
    with pytest.raises(CorruptExportError, match="invalid JSON"):
        list(iter_records([broken], format=fmt))


def test_a_recursion_error_inside_a_reader_becomes_a_corrupt_export() -> None:
    def events() -> Iterator[object]:
        raise RecursionError("maximum recursion depth exceeded")
        yield

    with pytest.raises(CorruptExportError, match="nested too deeply"):
        list(RecordStream(events()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line",
    [b"{", b'{"a"}', b'{"a":}', b'{"a":1,}', b'{"a":[1,]}', b'{"a":[1}', b'{"a":{"b":1]}',
     b'{"a":01}', b'{"a":tru}', b'{"a":"\x01"}', b'{"a":1}x', b"[]", b'{"a":1 "b":2}',
     b'{"a":"\\x"}', b'{"a":{1:2}}', b'{"a":NaN}', b'{"a":"\xff"}'],
)  # fmt: skip
def test_object_members_refuses_what_is_not_one_json_object(line: bytes) -> None:
    with pytest.raises(CorruptExportError):
        object_members(line)


def test_object_members_keeps_each_value_as_written() -> None:
    line = b'{ "a" : [ ] , "b":{"c":[1,-2.5e+3,{"d":null}]},"\\u00e9":"x\\"y\\n" }'
    assert object_members(line) == [
        ("a", "[ ]"),
        ("b", '{"c":[1,-2.5e+3,{"d":null}]}'),
        ("é", '"x\\"y\\n"'),
    ]
