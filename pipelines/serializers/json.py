"""Encode an export stream as one JSON document, one record per line inside the table arrays.

Values stay PostgreSQL text: bigint and jsonb are embedded unparsed with `orjson.Fragment`,
timestamps become ISO 8601 with `Z` (or arrive so, converted by the database: `export_values`).
Rows the database sent as CSV (`CsvRowBatch`) are written a column at a time by
`pipelines.serializers.json_columns`, to the same bytes. The line layout (docs/formats.md) lets a
reader stream the document line by line while any JSON parser still reads it whole. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

import orjson

from pipelines.formats.metadata import header_fields, trailer_fields
from pipelines.formats.values import iso_timestamp
from pipelines.records import CsvRowBatch, ExportHeader, Row, RowBatch, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of

FORMAT_NAME: Final = "data-export"

_BOOLEANS: Final = {"t": True, "f": False}
_EXPORT_BOOLEANS: Final = {"true": True, "false": False}

# Rows in, one JSON object per row out; the flag says the rows hold converted values.
RowObjects = Callable[[Sequence[Row], bool], list[bytes]]


def _boolean(text: str) -> bool:
    return _BOOLEANS[text]


def _export_boolean(text: str) -> bool:
    return _EXPORT_BOOLEANS[text]


_CONVERTERS: Final[dict[str, Callable[[str], object]]] = {
    "bigint": orjson.Fragment,
    "jsonb": orjson.Fragment,
    "boolean": _boolean,
    "timestamptz": iso_timestamp,
}
# For rows whose timestamps and booleans the database already converted.
_EXPORT_VALUE_CONVERTERS: Final[dict[str, Callable[[str], object]]] = {
    "bigint": orjson.Fragment,
    "jsonb": orjson.Fragment,
    "boolean": _export_boolean,
}


def row_objects(table: Table, *, prefix: bytes = b"") -> RowObjects:
    """Return a function encoding rows of `table` as JSON objects, `prefix` spliced after `{`."""
    names = table.column_names
    converter_sets = {
        export_values: [
            (position, chosen[column.kind])
            for position, column in enumerate(table.columns)
            if column.kind in chosen
        ]
        for export_values, chosen in ((False, _CONVERTERS), (True, _EXPORT_VALUE_CONVERTERS))
    }
    dumps = orjson.dumps
    opening = b"{" + prefix

    def encode(rows: Sequence[Row], export_values: bool) -> list[bytes]:
        converters = converter_sets[export_values]
        out: list[bytes] = []
        append = out.append
        for row in rows:
            values: list[object] = list(row)
            for position, convert in converters:
                value = row[position]
                if value is not None:
                    values[position] = convert(value)
            data = dumps(dict(zip(names, values, strict=True)))
            append(opening + data[1:] if prefix else data)
        return out

    return encode


def columnar_writer(
    writers: dict[str, Callable[[CsvRowBatch], bytes]],
    table: Table,
    *,
    before: str = "",
    prefix: str = "",
    after: str = "",
) -> Callable[[CsvRowBatch], bytes]:
    """Return the cached columnar writer of `table` in `writers`, made with this layout if new."""
    writer = writers.get(table.name)
    if writer is None:
        # Arrow is imported by the first export that needs it, not by every process.
        from pipelines.serializers.json_columns import ColumnarJsonWriter

        writer = ColumnarJsonWriter(table, before=before, prefix=prefix, after=after)
        writers[table.name] = writer
    return writer


def _converted(batch: SourceBatch) -> bool:
    """Return whether `batch` holds values the database converted (rows only reach here)."""
    return isinstance(batch, RowBatch) and batch.export_values


def _transition(closing: Table | None, opening: Table | None) -> bytes:
    """Return the bytes that close one table array and open the next."""
    data = b"\n]" if closing is not None else b""
    if opening is not None:
        data += (b"," if closing is not None else b"") + b'\n"' + opening.name.encode() + b'":['
    return data


def encode_json(
    batches: Iterable[SourceBatch],
    *,
    tables: Sequence[Table],
    header: ExportHeader,
    include_metadata: bool,
    resume: ResumePoint | None = None,
) -> Iterator[Chunk]:
    """Yield the JSON document for `batches`, or only its tail after `resume`."""
    sections = Sections(tables, resume)
    encoders = {table.name: row_objects(table) for table in sections.tables}
    if resume is None:
        opening = b'{"format":"' + FORMAT_NAME.encode() + b'","formatVersion":1,'
        if include_metadata:
            opening += b'\n"header":' + orjson.dumps(header_fields(header)) + b","
        yield Chunk(opening, None, 0)
    columnar: dict[str, Callable[[CsvRowBatch], bytes]] = {}
    for batch in batches:
        parts = [_transition(*step) for step in sections.enter(batch)]
        first = not sections.counts[batch.table.name]
        if isinstance(batch, CsvRowBatch):
            records = batch.records
            data = columnar_writer(columnar, batch.table, before=",\n")(batch)
            # Each record comes after `,\n`; the first of a table only after the line break.
            parts.append(data[1:] if first and data else data)
        else:
            rows = rows_of(batch, "json", export_values=True)
            records = len(rows)
            if rows:
                objects = encoders[batch.table.name](rows, _converted(batch))
                parts.append(b"\n" if first else b",\n")
                parts.append(b",\n".join(objects))
        point = sections.add(batch.table, records)
        yield Chunk(b"".join(parts), batch.cursor, records, point)
    parts = [_transition(*step) for step in sections.finish()]
    if include_metadata:
        parts.append(b',\n"metadata":' + orjson.dumps(trailer_fields(sections.trailer())))
    parts.append(b"\n}\n")
    yield Chunk(b"".join(parts), None, 0)
