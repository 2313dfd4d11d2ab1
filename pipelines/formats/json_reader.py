"""Read the JSON format back, one line at a time, in bounded memory.

Relies on the writer's layout (docs/formats.md): the prologue, header, each table's opening and
closing, each record and the metadata sit on lines of their own. A document reformatted by
another tool is refused with a clear error rather than loaded whole. Record lines go through
`JsonRecords` (orjson, jsonb as written), falling back to `object_members`, which reads them
exactly at any nesting depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from pipelines.formats.json_records import JsonRecords
from pipelines.formats.json_text import object_members
from pipelines.formats.metadata import header_from_fields, trailer_from_fields
from pipelines.formats.stream import Event, KeyedRecords, iter_lines
from pipelines.formats.values import CorruptExportError, loads_exact
from pipelines.records import FORMAT_VERSION, ExportHeader, ExportTrailer, Record, source_table

_PROLOGUE = b'{"format":"data-export","formatVersion":'


def _object(text: bytes, what: str) -> dict[str, Any]:
    value = loads_exact(text)
    if not isinstance(value, dict):
        raise CorruptExportError(f"{what} is not a JSON object")
    return value


def read_json(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of a JSON export."""
    records = KeyedRecords()
    fast = JsonRecords(records)
    lines = iter_lines(chunks)
    first = next(lines, b"")
    if not first.startswith(_PROLOGUE):
        raise CorruptExportError("not a data-export JSON document (or not in its line layout)")
    version = _object(first.removesuffix(b",") + b"}", "prologue")["formatVersion"]
    if str(version) != str(FORMAT_VERSION):
        raise CorruptExportError(f"unsupported format version {version}")
    table: str | None = None
    closed = False
    for number, raw in enumerate(lines, start=2):
        line = raw.removesuffix(b",")
        if closed:
            raise CorruptExportError(f"line {number}: content after the end of the document")
        if table is not None:
            if line == b"]":
                table = None
            elif line.startswith(b"{"):
                yield _record(fast, table, line) or _exact_record(records, table, line, number)
            else:
                raise CorruptExportError(f"line {number}: expected a {table} record")
        elif line == b"}":
            closed = True
        elif line.startswith(b'"') and line.endswith(b"["):
            table = _table_name(line[:-2], number)
        else:
            yield _metadata(line, number)
    if not closed:
        raise CorruptExportError("JSON document ends early: it is truncated")


def _record(fast: JsonRecords, table: str, line: bytes) -> Record | None:
    """Return the record of a record line read by orjson, or None to use the exact parser."""
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return fast.record(table, fields, line) if fields.__class__ is dict else None


def _exact_record(records: KeyedRecords, table: str, line: bytes, number: int) -> Record:
    """Return the record of a record line read exactly, without recursion at any depth."""
    try:
        return records.from_members(table, object_members(line))
    except CorruptExportError as exc:
        raise CorruptExportError(f"line {number}: {exc}") from exc


def _table_name(text: bytes, number: int) -> str:
    name = loads_exact(text)
    try:
        return source_table(str(name)).name
    except ValueError as exc:
        raise CorruptExportError(f"line {number}: unknown table {name!r}") from exc


def _metadata(line: bytes, number: int) -> ExportHeader | ExportTrailer:
    if line.startswith(b'"header":'):
        return header_from_fields(_object(b"{" + line + b"}", "header")["header"])
    if line.startswith(b'"metadata":'):
        return trailer_from_fields(_object(b"{" + line + b"}", "metadata")["metadata"])
    raise CorruptExportError(f"line {number}: not in the data-export JSON layout")
