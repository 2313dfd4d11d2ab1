"""Read the CSV format back in bounded memory, keeping NULL apart from the empty string.

Python's `csv` module (before 3.12) cannot tell a quoted empty field from an unquoted one, so this
reads RFC 4180 itself: an unquoted empty field is NULL, a quoted field is a value. The leading `'`
the writer adds against formula injection is removed from text and jsonb cells. Rows in the
writer's own shape take a fast path (`str.split` on quotes, a layout cached per NULL pattern);
anything else (doubled quotes, metadata rows, malformed input) goes through a careful tokenizer.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Final

from pipelines.formats.metadata import header_from_fields, trailer_from_fields
from pipelines.formats.stream import Event
from pipelines.formats.values import (
    CorruptExportError,
    from_export_text,
    loads_exact,
    pg_boolean,
    pg_timestamp,
)
from pipelines.records import FORMAT_VERSION, Record, Table, source_table

# A field and the separator after it; possessive quantifiers keep long values linear.
_FIELD: Final = re.compile(r'"([^"]*+(?:""[^"]*+)*+)"(,|\r\n)|([^",\r\n]*+)(,|\r\n)')
# A whole quoted field: splitting a row on it leaves the separators between its values.
_QUOTED: Final = re.compile(r'"([^"]*+(?:""[^"]*+)*+)"')
_MALFORMED_AFTER_QUOTE: Final = re.compile(r'"[^"]*+(?:""[^"]*+)*+"[^,\r]')
_STRAY_IN_UNQUOTED: Final = re.compile(r'[^",\r\n]*+(?:"|\r[^\n]|\n)')
_NEUTRALISED_KINDS: Final = frozenset({"text", "jsonb"})
_CONVERTERS: Final[dict[str, Callable[[str], str]]] = {
    "timestamptz": pg_timestamp,
    "boolean": pg_boolean,
}
_RECORD_TYPE: Final = "record_type"
_EXPORT_INFO: Final = "export_info"
# Row layouts (table and NULL pattern) remembered for the fast path: an export has a handful
# (which nullable columns are NULL); the bound only keeps hostile input from growing the cache.
_LAYOUT_CACHE_LIMIT: Final = 1024


class _Layout:
    """How to turn the quoted values of rows with one NULL pattern into a record of one table."""

    __slots__ = ("converters", "pick", "table", "texts")

    def __init__(
        self,
        table: Table,
        pick: Callable[[list[Any]], tuple[str | None, ...]],
        converters: list[tuple[int, Callable[[str], str]]],
        texts: list[int],
    ) -> None:
        self.table = table
        self.pick = pick
        self.converters = converters
        self.texts = texts


def _line_batches(chunks: Iterable[bytes]) -> Iterator[list[str]]:
    """Yield the CRLF-separated lines of each chunk (a quoted value may hold a CRLF)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    rest = ""
    for chunk in chunks:
        lines = (rest + decoder.decode(chunk)).split("\r\n")
        rest = lines.pop()
        if lines:
            yield lines
    if rest + decoder.decode(b"", final=True):
        raise CorruptExportError("CSV ends in the middle of a row: it is truncated")


def _tokenize(text: str) -> list[str | None]:
    """Split one whole row carefully: None for an unquoted empty field; raise when malformed."""
    text += "\r\n"
    end = len(text)
    row: list[str | None] = []
    position = 0
    while True:
        match = _FIELD.match(text, position)
        if match is None:
            _check_incomplete(text, position)
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
            if position == end:
                return row
            break
    raise CorruptExportError(f"malformed CSV near {text[position : position + 40]!r}")


def _check_open(text: str) -> None:
    """Raise unless `text` is whole fields followed by a quoted value still open at its end."""
    position = 0
    while match := _FIELD.match(text, position):
        position = match.end()
    _check_incomplete(text, position)


def _check_incomplete(text: str, position: int) -> None:
    """Raise when the unmatched rest of the text can never become a field."""
    if _MALFORMED_AFTER_QUOTE.match(text, position) or (
        text[position : position + 1] != '"' and _STRAY_IN_UNQUOTED.match(text, position)
    ):
        raise CorruptExportError(f"malformed CSV near {text[position : position + 40]!r}")


def _rows(lines: Iterator[str]) -> Iterator[str]:
    """Yield whole rows, joining the lines of a row whose quoted value holds a CRLF."""
    for line in lines:
        if not line.count('"') & 1:
            yield line
            continue
        _check_open(line)  # a stray quote fails here, not after reading to the end
        pending = [line]
        for more in lines:
            pending.append(more)
            if more.count('"') & 1:
                yield "\r\n".join(pending)
                break
            _check_open('"' + more)  # the line continues a quoted value
        else:
            raise CorruptExportError("CSV ends in the middle of a row: it is truncated")


class _CsvRecords:
    """Turns the rows after the header into events, through the fast path where it applies."""

    def __init__(self, names: Sequence[str]) -> None:
        self.width = len(names)
        position = {name: index for index, name in enumerate(names)}
        self.tables: dict[str, tuple[Table, list[int]]] = {}
        for name in ("users", "files"):
            table = source_table(name)
            present = [column.name for column in table.columns if column.name in position]
            self.tables[name] = (table.select(present), [position[column] for column in present])
        self.info = position.get(_EXPORT_INFO)
        self._layouts: dict[tuple[str, ...], _Layout] = {}

    def events(self, rows: Iterator[str]) -> Iterator[Event]:
        """Yield the event of every row; `rows` must not include the header row."""
        layouts = self._layouts
        split_quoted = _QUOTED.split
        for number, line in enumerate(rows, start=2):
            escaped = '""' in line
            if escaped:
                if "\x00" in line:  # the unescaping below joins values with NUL
                    yield self._careful(line, number)
                    continue
                parts = split_quoted(line)
            else:
                parts = line.split('"')
            layout = layouts.get((parts[1], *parts[::2])) if len(parts) > 2 else None
            if layout is None:
                layout = self._layout(parts)
                if layout is None:
                    yield self._careful(line, number)
                    continue
            values: list[Any] = parts[1::2]  # the quoted values; None is appended for NULL
            if escaped:  # one C-speed pass instead of one replace per value
                values = "\x00".join(values).replace('""', '"').split("\x00")
            for index, convert in layout.converters:
                values[index] = convert(values[index])
            if "'" in line:
                for index in layout.texts:
                    value = values[index]
                    if value[:1] == "'":
                        values[index] = value[1:]
            values.append(None)
            yield Record(layout.table, layout.pick(values))

    def _layout(self, parts: list[str]) -> _Layout | None:
        """Return the layout of a row split into separators and quoted values, or None."""
        if len(parts) < 3 or not len(parts) & 1 or parts[1] not in self.tables:
            return None
        separators = parts[::2]
        if separators[0] or any(not s or s.strip(",") for s in separators[1:-1]):
            return None  # text before the first quote, doubled quotes, or stray characters
        if separators[-1].strip(","):
            return None
        fields: dict[int, int] = {}  # field position -> index among the quoted values
        field = 0
        for index, separator in enumerate(separators[1:], start=1):
            fields[field] = index - 1
            field += len(separator)
        if field + 1 != self.width:
            return None
        table, positions = self.tables[parts[1]]
        picks = [fields.get(position, -1) for position in positions]
        converters: list[tuple[int, Callable[[str], str]]] = []
        texts: list[int] = []
        for column, pick in zip(table.columns, picks, strict=True):
            if pick < 0:
                continue
            if column.kind in _CONVERTERS:
                converters.append((pick, _CONVERTERS[column.kind]))
            elif column.kind in _NEUTRALISED_KINDS:
                texts.append(pick)
        layout = _Layout(table, itemgetter(*picks), converters, texts)
        if len(self._layouts) < _LAYOUT_CACHE_LIMIT:
            self._layouts[(parts[1], *separators)] = layout
        return layout

    def _careful(self, line: str, number: int) -> Event:
        """Return the event of a row the fast path does not take, or raise what is wrong."""
        row = _tokenize(line)
        if len(row) != self.width:
            raise CorruptExportError(f"row {number} has {len(row)} fields, not {self.width}")
        record_type = row[0]
        if record_type in self.tables:
            table, indexes = self.tables[record_type]
            values = tuple(
                _value(column.kind, row[index])
                for column, index in zip(table.columns, indexes, strict=True)
            )
            return Record(table, values)
        if record_type in ("header", "metadata") and self.info is not None:
            fields = loads_exact(row[self.info] or "")
            if not isinstance(fields, dict):
                raise CorruptExportError(f"row {number}: export_info is not a JSON object")
            if record_type == "metadata":
                return trailer_from_fields(fields)
            header = header_from_fields(fields)
            if header.format_version != FORMAT_VERSION:
                raise CorruptExportError(f"unsupported format version {header.format_version}")
            return header
        raise CorruptExportError(f"row {number}: unknown record_type {record_type!r}")


def read_csv(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of a CSV export."""
    rows = _rows(line for lines in _line_batches(chunks) for line in lines)
    first = next(rows, None)
    names = _tokenize(first) if first is not None else None
    if not names or names[0] != _RECORD_TYPE or any(name is None for name in names):
        raise CorruptExportError("not a data-export CSV file: the header row is missing")
    yield from _CsvRecords([str(name) for name in names]).events(rows)


def _value(kind: str, cell: str | None) -> str | None:
    if cell is None:
        return None
    if kind in _NEUTRALISED_KINDS:
        return cell[1:] if cell[:1] == "'" else cell
    return from_export_text(kind, cell)  # type: ignore[arg-type]
