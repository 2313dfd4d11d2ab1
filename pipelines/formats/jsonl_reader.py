"""Read the JSON Lines format back, line by line, in bounded memory.

Each line is one object whose `record_type` is a table name, `header` or `metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipelines.formats.metadata import header_from_fields, trailer_from_fields
from pipelines.formats.stream import Event, KeyedRecords, iter_lines
from pipelines.formats.values import CorruptExportError, loads_exact
from pipelines.records import FORMAT_VERSION


def read_jsonl(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of a JSON Lines export."""
    records = KeyedRecords()
    for number, line in enumerate(iter_lines(chunks), start=1):
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
