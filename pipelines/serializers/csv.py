"""Encode an export stream as one RFC 4180 CSV file holding every table.

UTF-8 without BOM, CRLF line ends, a header row. The first column `record_type` names the table;
the other columns are the union of the tables' columns. NULL is an unquoted empty field and every
other value is quoted (as PostgreSQL's COPY FORCE_QUOTE writes). Text and jsonb cells starting
with = + - @ TAB CR or ' get a leading ' (OWASP), which readers remove. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Final

import orjson

from pipelines.formats.metadata import header_fields, trailer_fields
from pipelines.formats.values import export_boolean, iso_timestamp
from pipelines.records import EncodedBatch, ExportHeader, Row, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of, union_columns

RECORD_TYPE_COLUMN: Final = "record_type"
# Only present when metadata is included: the header and metadata rows carry JSON here.
EXPORT_INFO_COLUMN: Final = "export_info"

# OWASP's spreadsheet formula triggers, plus the escape character itself so it can be reversed.
FORMULA_TRIGGERS: Final = frozenset("=+-@\t\r'")
ESCAPED_KINDS: Final = frozenset({"text", "jsonb"})

# Markers built on NUL, which PostgreSQL text can never contain: cells are joined with them and the
# whole batch is quoted with a few C-speed replaces instead of one string operation per cell.
_NULL: Final = "\x00N"
_CELL: Final = "\x00C"
_LINE: Final = "\x00L"
_CELL_BYTES: Final = _CELL.encode()
_LINE_BYTES: Final = _LINE.encode()
_NULL_CELL_BYTES: Final = b'"' + _NULL.encode() + b'"'


def _neutralise(text: str) -> str:
    return "'" + text if text[:1] in FORMULA_TRIGGERS else text


_CONVERTERS: Final[dict[str, Callable[[str], str]]] = {
    "text": _neutralise,
    "jsonb": _neutralise,
    "boolean": export_boolean,
    "timestamptz": iso_timestamp,
}


def _quote_lines(lines: list[str]) -> bytes:
    """Return marker-joined lines as CSV: values quoted, quotes doubled, NULL markers emptied.

    The passes run on the UTF-8 bytes: one byte per ASCII character, where a batch holding a
    single character outside the BMP would make the text four bytes per character.
    """
    data = _LINE.join(lines).encode()
    data = data.replace(b'"', b'""').replace(_CELL_BYTES, b'","').replace(_LINE_BYTES, b'"\r\n"')
    return (b'"' + data + b'"\r\n').replace(_NULL_CELL_BYTES, b"")


def _row_lines(table: Table, header: Sequence[str]) -> Callable[[Sequence[Row]], list[str]]:
    """Return a function laying rows of `table` out on the union header, joined with markers."""
    width = len(table.columns)
    slots = [table.column_names.index(n) if n in table.column_names else width for n in header]
    pick = itemgetter(*slots)
    converters = [
        (position, _CONVERTERS[column.kind])
        for position, column in enumerate(table.columns)
        if column.kind in _CONVERTERS
    ]
    record_type = table.name + _CELL
    join = _CELL.join

    def lines(rows: Sequence[Row]) -> list[str]:
        out: list[str] = []
        append = out.append
        for row in rows:
            values = [_NULL if value is None else value for value in row]
            for position, convert in converters:
                value = values[position]
                if value is not _NULL:
                    values[position] = convert(value)
            values.append(_NULL)
            append(record_type + join(pick(values)))
        return out

    return lines


def csv_layout(tables: Sequence[Table], *, include_metadata: bool) -> tuple[str, ...]:
    """Return the columns after `record_type`: every table's columns, then `export_info`."""
    columns = union_columns(tables)
    return (*columns, EXPORT_INFO_COLUMN) if include_metadata else columns


def encode_csv(
    batches: Iterable[SourceBatch],
    *,
    tables: Sequence[Table],
    header: ExportHeader,
    include_metadata: bool,
    resume: ResumePoint | None = None,
) -> Iterator[Chunk]:
    """Yield the CSV file for `batches`, or only the rows after `resume`.

    Records the database already wrote in this layout (`EncodedBatch`) pass through unchanged.
    """
    sections = Sections(tables, resume)
    columns = union_columns(sections.tables)
    layout = csv_layout(sections.tables, include_metadata=include_metadata)
    encoders = {table.name: _row_lines(table, layout) for table in sections.tables}
    if resume is None:
        data = (",".join((RECORD_TYPE_COLUMN, *layout)) + "\r\n").encode()
        if include_metadata:
            data += _info_line("header", header_fields(header), len(columns))
        yield Chunk(data, None, 0)
    for batch in batches:
        for _step in sections.enter(batch):
            pass  # CSV has no sections; entering only validates the order
        if isinstance(batch, EncodedBatch):
            if batch.format != "csv":
                raise ValueError(f"{batch.format} records cannot be written as csv")
            data, records = batch.data, batch.records
        else:
            rows = rows_of(batch, "csv")
            data = _quote_lines(encoders[batch.table.name](rows)) if rows else b""
            records = len(rows)
        point = sections.add(batch.table, records)
        yield Chunk(data, batch.cursor, records, point)
    if include_metadata:
        fields = trailer_fields(sections.trailer())
        yield Chunk(_info_line("metadata", fields, len(columns)), None, 0)


def _info_line(kind: str, fields: dict[str, object], empty: int) -> bytes:
    info = orjson.dumps(fields).decode()
    return _quote_lines([_CELL.join([kind, *([_NULL] * empty), info])])
