"""CSV records written by PostgreSQL: the CSV layout as a COPY query, its output cut in batches.

Also rows for a serializer that works a column at a time (`CsvRowBatch`): the same COPY of a
table's own columns with converted values, cut the same way with LF kept.

`COPY (SELECT ...) TO STDOUT (FORMAT csv, FORCE_QUOTE *)` quotes exactly as the CSV serializer
does (every value quoted, quotes doubled, NULL an unquoted empty field) at a fraction of the CPU
Python needs per row. The SELECT makes the serializer's conversions (timestamps to ISO 8601 with
`Z`, booleans to `true`/`false`, OWASP formula neutralising), so the bytes are the serializer's,
byte for byte. What is left for Python is per batch, never per value: COPY ends a record with LF
where the format wants CRLF, and each batch needs the key of its last record to resume after it.

Record boundaries are found without parsing. Every record starts with its quoted table name, and
the bytes `LF "files","` cannot occur inside a value: a quote inside a quoted value is doubled, and
a closing quote is followed by a comma or a line end, never by a letter. So every occurrence is a
record terminator followed by a record, whatever the values hold and however the server frames its
messages. Pure: no I/O here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from psycopg import sql
from psycopg.abc import Buffer

from pipelines.records import Column, Table
from pipelines.serializers.csv import RECORD_TYPE_COLUMN
from pipelines.sql_values import (
    export_boolean,
    export_timestamp,
    export_value,
    neutralised_jsonb,
    neutralised_text,
)

COPY_OPTIONS: Final = sql.SQL("(FORMAT csv, FORCE_QUOTE *, ENCODING 'UTF8')")


def _value(column: Column) -> sql.Composable:
    """Return the SQL for `column` as the CSV serializer writes it."""
    name = sql.Identifier(column.name)
    if column.kind == "text":
        return neutralised_text(name)
    if column.kind == "jsonb":
        return neutralised_jsonb(name)
    if column.kind == "timestamptz":
        return export_timestamp(name)
    if column.kind == "boolean":
        return export_boolean(name)
    return name


def csv_select_list(table: Table, layout: Sequence[str]) -> sql.Composable:
    """Return the SELECT list writing rows of `table` on the CSV `layout` (columns after the first).

    Columns of the layout that `table` lacks are NULL; the first column is the table's name.
    """
    by_name = {column.name: column for column in table.columns}
    values: list[sql.Composable] = [
        sql.SQL("{} AS {}").format(sql.Literal(table.name), sql.Identifier(RECORD_TYPE_COLUMN))
    ]
    for name in layout:
        column = by_name.get(name)
        values.append(sql.NULL if column is None else _value(column))
    return sql.SQL(", ").join(values)


def row_select_list(table: Table) -> sql.Composable:
    """Return the SELECT list writing rows of `table` for `CsvRowBatch`: its name, then its
    columns in order with timestamps and booleans converted to export text."""
    values: list[sql.Composable] = [sql.Literal(table.name)]
    values += [export_value(column) for column in table.columns]
    return sql.SQL(", ").join(values)


@dataclass(frozen=True, slots=True)
class CsvBlock:
    """Whole CSV records (CRLF or LF terminated), how many, and the key fields of the last one."""

    data: bytes
    records: int
    last_key: tuple[str, ...]


class CsvRecordCutter:
    """Turn COPY's output for one table into `CsvBlock`s of whole records.

    `key_fields` are the positions (in the record, the table name being 0) of the key that orders
    the rows. The last record seen is held back until the next record (or the end) proves it whole.
    Records end with CRLF, as the CSV format writes them, or with COPY's own LF when `crlf` is
    false.
    """

    def __init__(self, table_name: str, key_fields: Sequence[int], *, crlf: bool = True) -> None:
        self._table = table_name
        self._start = b'"' + table_name.encode() + b'",'
        self._lf_boundary = b"\n" + self._start
        self._terminator = b"\r\n" if crlf else b"\n"
        self._boundary = self._terminator + self._start
        self._key_fields = tuple(key_fields)
        self._held = b""

    def cut(self, output: Sequence[Buffer]) -> CsvBlock | None:
        """Add COPY output; return the records it completed, or None while the last is open."""
        buffer = b"".join([self._held, *output])
        if self._boundary == self._lf_boundary:
            ended = buffer.count(self._boundary)
        else:
            # One pass turns every record end before a record start into CRLF, one byte longer.
            converted = buffer.replace(self._lf_boundary, self._boundary)
            ended = len(converted) - len(buffer)
            buffer = converted
        if not ended:
            self._held = buffer
            return None
        end = buffer.rfind(self._boundary) + len(self._terminator)
        self._held = buffer[end:]
        return self._block(buffer[:end], ended)

    def finish(self) -> CsvBlock | None:
        """Return the last record, which the end of the output proves whole."""
        held, self._held = self._held, b""
        if not held:
            return None
        if not held.endswith(b"\n"):
            raise ValueError("COPY output ended inside a record")
        return self._block(held[:-1] + self._terminator, 1)

    def _block(self, data: bytes, records: int) -> CsvBlock:
        """Return `records` whole records, terminated, as a block keyed by the last one."""
        if not data.startswith(self._start):
            raise ValueError(f"COPY output does not start with a record of {self._table}")
        width = len(self._terminator)
        last_start = data.rfind(self._boundary, 0, len(data) - width) + width
        last = data[last_start if last_start >= width else 0 : -width]
        fields = next(csv.reader([last.decode("utf-8")]))
        return CsvBlock(data, records, tuple(fields[i] for i in self._key_fields))


def iter_csv_blocks(
    messages: Iterable[Buffer],
    *,
    table_name: str,
    key_fields: Sequence[int],
    batch_messages: int,
    crlf: bool = True,
) -> Iterator[CsvBlock]:
    """Yield whole-record blocks of COPY output, one per `batch_messages` messages or so.

    PostgreSQL sends a COPY row per message, so a block holds that many records, the first one
    too: a record is whole only once the next one starts, so the first cut waits for one more
    message. Blocks then end at the same records whether the query starts at the table's first
    row or after a resume cursor (itself a block's last key), and a resumed export credits the
    same records to each part. Framing does not matter for correctness, only for block sizes.
    """
    cutter = CsvRecordCutter(table_name, key_fields, crlf=crlf)
    pending: list[Buffer] = []
    held = 0  # records the cutter holds back: one once it has seen any
    for message in messages:
        pending.append(message)
        if held + len(pending) > batch_messages:
            block = cutter.cut(pending)
            pending = []
            held = 1
            if block is not None:
                yield block
    if pending:
        block = cutter.cut(pending)
        if block is not None:
            yield block
    last = cutter.finish()
    if last is not None:
        yield last
