"""Read the JSON Lines format back, line by line, in bounded memory.

Each line is one object whose `record_type` is a table name, `header` or `metadata`. Record lines
go through `JsonRecords` (orjson, jsonb as written); any other line, or one it cannot read
exactly (a number orjson does not hold as written, jsonb nested past orjson's depth limit),
through `object_members`, which splits it into exact member texts at any depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

import orjson

from pipelines.formats.json_records import JsonRecords
from pipelines.formats.json_text import object_members
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
        members = _members(line, number)
        record_type = _record_type(members, number)
        if record_type in _NOT_RECORDS:
            fields = {key: loads_exact(text) for key, text in members}
            if record_type == "header":
                header = header_from_fields(fields)
                if header.format_version != FORMAT_VERSION:
                    raise CorruptExportError(f"unsupported format version {header.format_version}")
                yield header
            else:
                yield trailer_from_fields(fields)
        else:
            yield records.from_members(record_type, members)


def _members(line: bytes, number: int) -> list[tuple[str, str]]:
    try:
        return object_members(line)
    except CorruptExportError as exc:
        raise CorruptExportError(f"line {number}: {exc}") from exc


def _record_type(members: list[tuple[str, str]], number: int) -> str:
    """Remove the one `record_type` member from `members` and return its string."""
    found = [index for index, (key, _) in enumerate(members) if key == "record_type"]
    text = members[found[0]][1] if len(found) == 1 else ""
    if not text.startswith('"'):
        raise CorruptExportError(f"line {number}: not an object with one record_type string")
    del members[found[0]]
    return str(loads_exact(text))
