"""Encode an export stream as JSON Lines: one JSON object per line, the table named in each.

Every line starts with `"record_type"`: a table name for a record, `header` or `metadata` for the
optional first and last lines. Values are written as in the JSON format. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import orjson

from pipelines.formats.metadata import header_fields, trailer_fields
from pipelines.records import ExportHeader, RowBatch, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of
from pipelines.serializers.json import FORMAT_NAME, row_objects


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
        table.name: row_objects(table, prefix=b'"record_type":' + orjson.dumps(table.name) + b",")
        for table in sections.tables
    }
    if resume is None and include_metadata:
        fields = {"record_type": "header", "format": FORMAT_NAME, **header_fields(header)}
        yield Chunk(orjson.dumps(fields) + b"\n", None, 0)
    for batch in batches:
        rows = rows_of(batch, "jsonl", export_values=True)
        for _step in sections.enter(batch):
            pass  # JSON Lines has no sections; entering only validates the order
        data = b""
        if rows:
            converted = isinstance(batch, RowBatch) and batch.export_values
            data = b"\n".join(encoders[batch.table.name](rows, converted)) + b"\n"
        point = sections.add(batch.table, len(rows))
        yield Chunk(data, batch.cursor, len(rows), point)
    if include_metadata:
        fields = {"record_type": "metadata", **trailer_fields(sections.trailer())}
        yield Chunk(orjson.dumps(fields) + b"\n", None, 0)
