"""Read the JSON Lines format back, line by line, in bounded memory.

Each line is one object whose `record_type` is a table name, `header` or `metadata`. Record lines
go through `JsonRecords` (orjson, jsonb as written); any other line, or one it cannot read
exactly, through the exact parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import orjson

from pipelines.formats.json_records import JsonRecords
from pipelines.formats.metadata import header_from_fields, trailer_from_fields
from pipelines.formats.stream import Event, KeyedRecords, iter_lines
from pipelines.formats.values import CorruptExportError, loads_exact
from pipelines.records import FORMAT_VERSION

_NOT_RECORDS: Final = frozenset({"header", "metadata"})


def read_jsonl(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of a JSON Lines export."""
    records = KeyedRecords()
    fast = JsonRecords(records)
    loads = orjson.loads
    for number, line in enumerate(iter_lines(chunks), start=1):
        try:
            parsed = loads(line)
        except orjson.JSONDecodeError:
            parsed = None
        if parsed.__class__ is dict:
            record_type = parsed.pop("record_type", None)
            if record_type.__class__ is str and record_type not in _NOT_RECORDS:
                record = fast.record(record_type, parsed, line)
                if record is not None:
                    yield record
                    continue
        fields = loads_exact(line)
        if not isinstance(fields, dict) or not isinstance(fields.get("record_type"), str):
            raise CorruptExportError(f"line {number}: not an object with a record_type")
        record_type = fields.pop("record_type")
        if record_type == "header":
            header = header_from_fields(fields)
            if header.format_version != FORMAT_VERSION:
                raise CorruptExportError(f"unsupported format version {header.format_version}")
            yield header
        elif record_type == "metadata":
            yield trailer_from_fields(fields)
        else:
            yield records.from_json(record_type, fields)
