"""Encode an export stream as JSON Lines: one JSON object per line, the table named in each.

Every line starts with `"record_type"`: a table name for a record, `header` or `metadata` for the
optional first and last lines. Values are written as in the JSON format. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import orjson

from pipelines.formats.metadata import header_fields, trailer_fields
from pipelines.records import CsvRowBatch, ExportHeader, RowBatch, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of
from pipelines.serializers.json import FORMAT_NAME, columnar_writer, row_objects


def encode_jsonl(
    batches: Iterable[SourceBatch],
    *,
    tables: Sequence[Table],
    header: ExportHeader,
    include_metadata: bool,
    resume: ResumePoint | None = None,
) -> Iterator[Chunk]:
    """Yield the JSON Lines for `batches`, or only the lines after `resume`."""
    sections = Sections(tables, resume)
    encoders = {
        table.name: row_objects(table, prefix=_record_type(table)) for table in sections.tables
    }
    if resume is None and include_metadata:
        fields = {"record_type": "header", "format": FORMAT_NAME, **header_fields(header)}
        yield Chunk(orjson.dumps(fields) + b"\n", None, 0)
    columnar: dict[str, Callable[[CsvRowBatch], bytes]] = {}
    for batch in batches:
        for _step in sections.enter(batch):
            pass  # JSON Lines has no sections; entering only validates the order
        if isinstance(batch, CsvRowBatch):
            records = batch.records
            writer = columnar_writer(
                columnar, batch.table, prefix=_record_type(batch.table).decode(), after="\n"
            )
            data = writer(batch)
        else:
            rows = rows_of(batch, "jsonl", export_values=True)
            records = len(rows)
            data = b""
            if rows:
                converted = isinstance(batch, RowBatch) and batch.export_values
                data = b"\n".join(encoders[batch.table.name](rows, converted)) + b"\n"
        point = sections.add(batch.table, records)
        yield Chunk(data, batch.cursor, records, point)
    if include_metadata:
        fields = {"record_type": "metadata", **trailer_fields(sections.trailer())}
        yield Chunk(orjson.dumps(fields) + b"\n", None, 0)


def _record_type(table: Table) -> bytes:
    """Return the member every record of `table` starts with, and its comma."""
    return b'"record_type":' + orjson.dumps(table.name) + b","
