"""Read the CSV format back in bounded memory, keeping NULL apart from the empty string.

Python's `csv` module (before 3.12) cannot tell a quoted empty field from an unquoted one, so this
is a small RFC 4180 tokenizer: an unquoted empty field is NULL, a quoted field is a value. The
leading `'` the writer adds against formula injection is removed from text and jsonb cells.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from typing import Final

from pipelines.formats.metadata import header_from_fields, trailer_from_fields
from pipelines.formats.stream import Event
from pipelines.formats.values import CorruptExportError, from_export_text, loads_exact
from pipelines.records import FORMAT_VERSION, Record, Table, source_table

# A field and the separator after it; possessive quantifiers keep long values linear.
_FIELD: Final = re.compile(r'"([^"]*+(?:""[^"]*+)*+)"(,|\r\n)|([^",\r\n]*+)(,|\r\n)')
_MALFORMED_AFTER_QUOTE: Final = re.compile(r'"[^"]*+(?:""[^"]*+)*+"[^,\r]')
_STRAY_IN_UNQUOTED: Final = re.compile(r'[^",\r\n]*+(?:"|\r[^\n]|\n)')
_NEUTRALISED_KINDS: Final = frozenset({"text", "jsonb"})
_RECORD_TYPE: Final = "record_type"
_EXPORT_INFO: Final = "export_info"


def _rows(chunks: Iterable[bytes]) -> Iterator[list[str | None]]:
    """Yield each CSV row as fields: None for an unquoted empty field, else the value."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    position = 0
    row: list[str | None] = []
    match_field = _FIELD.match
    for chunk in chunks:
        buffer = buffer[position:] + decoder.decode(chunk)
        position = 0
        while True:
            match = match_field(buffer, position)
            if match is None:
                _check_incomplete(buffer, position)
                break
            quoted, separator_q, bare, separator_b = match.groups()
            if quoted is not None:
                row.append(quoted.replace('""', '"'))
                separator = separator_q
            else:
                row.append(bare or None)
                separator = separator_b
            position = match.end()
            if separator != ",":
                yield row
                row = []
    buffer = buffer[position:] + decoder.decode(b"", final=True)
    if buffer or row:
        raise CorruptExportError("CSV ends in the middle of a row: it is truncated")


def _check_incomplete(buffer: str, position: int) -> None:
    """Raise when the unmatched rest of the buffer can never become a field."""
    if _MALFORMED_AFTER_QUOTE.match(buffer, position) or (
        buffer[position : position + 1] != '"' and _STRAY_IN_UNQUOTED.match(buffer, position)
    ):
        raise CorruptExportError(f"malformed CSV near {buffer[position : position + 40]!r}")


def read_csv(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of a CSV export."""
    rows = _rows(chunks)
    names = next(rows, None)
    if not names or names[0] != _RECORD_TYPE or any(name is None for name in names):
        raise CorruptExportError("not a data-export CSV file: the header row is missing")
    header_names = [str(name) for name in names]
    position = {name: index for index, name in enumerate(header_names)}
    layouts: dict[str, tuple[Table, list[int]]] = {}
    for name in ("users", "files"):
        table = source_table(name)
        present = [column.name for column in table.columns if column.name in position]
        projected = table.select(present)
        layouts[name] = (projected, [position[column] for column in present])
    info = position.get(_EXPORT_INFO)
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header_names):
            raise CorruptExportError(f"row {number} has {len(row)} fields, not {len(header_names)}")
        record_type = row[0]
        if record_type in layouts:
            table, indexes = layouts[record_type]
            values = tuple(
                _value(column.kind, row[index])
                for column, index in zip(table.columns, indexes, strict=True)
            )
            yield Record(table, values)
        elif record_type in ("header", "metadata") and info is not None:
            fields = loads_exact(row[info] or "")
            if not isinstance(fields, dict):
                raise CorruptExportError(f"row {number}: export_info is not a JSON object")
            if record_type == "metadata":
                yield trailer_from_fields(fields)
                continue
            header = header_from_fields(fields)
            if header.format_version != FORMAT_VERSION:
                raise CorruptExportError(f"unsupported format version {header.format_version}")
            yield header
        else:
            raise CorruptExportError(f"row {number}: unknown record_type {record_type!r}")


def _value(kind: str, cell: str | None) -> str | None:
    if cell is None:
        return None
    if kind in _NEUTRALISED_KINDS:
        return cell[1:] if cell[:1] == "'" else cell
    return from_export_text(kind, cell)  # type: ignore[arg-type]
