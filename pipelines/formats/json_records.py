"""Records from the JSON formats' object lines: parsed with orjson, jsonb handed back as written.

The writer embeds every jsonb value unparsed, as PostgreSQL printed it, so the record keeps that
slice of the line instead of parsing the value exactly and printing it again. A line this cannot
read exactly (a number orjson does not hold as written, a value of the wrong type, an unexpected
layout, nesting too deep to compare) gets None back, and the reader uses the exact reader in
`json_text`, with its result or error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from pipelines.formats.stream import KeyedRecords
from pipelines.formats.values import CorruptExportError, pg_timestamp
from pipelines.records import Record, Table

# Key layouts remembered: an export has one per table; the bound only stops hostile input.
_LAYOUT_CACHE_LIMIT: Final = 64
_TEXT_KINDS: Final = frozenset({"uuid", "text"})


class _Layout:
    """Which values of a table's record need which check or conversion."""

    __slots__ = ("bigints", "booleans", "jsonb", "table", "texts", "timestamps")

    def __init__(self, table: Table, keys: tuple[str, ...]) -> None:
        self.table = table
        self.texts: list[int] = []
        self.timestamps: list[int] = []
        self.booleans: list[int] = []
        self.bigints: list[int] = []
        # (index, bytes before the value, bytes after it or None when it ends the object)
        self.jsonb: list[tuple[int, bytes, bytes | None]] = []
        for index, column in enumerate(table.columns):
            if column.kind in _TEXT_KINDS:
                self.texts.append(index)
            elif column.kind == "timestamptz":
                self.timestamps.append(index)
            elif column.kind == "boolean":
                self.booleans.append(index)
            elif column.kind == "bigint":
                self.bigints.append(index)
            else:
                position = keys.index(column.name)
                before = (b"," if position else b"{") + orjson.dumps(column.name) + b":"
                after = None
                if position + 1 < len(keys):
                    after = b"," + orjson.dumps(keys[position + 1]) + b":"
                self.jsonb.append((index, before, after))


class JsonRecords:
    """Build records from object lines parsed by orjson, or say that only the exact parser can."""

    def __init__(self, keyed: KeyedRecords) -> None:
        self._keyed = keyed
        self._layouts: dict[tuple[str, tuple[str, ...]], _Layout | None] = {}

    def record(self, name: str, fields: dict[str, Any], line: bytes) -> Record | None:
        """Return the record for `fields` parsed from `line`, or None to use the exact parser."""
        keys = tuple(fields)
        layout = self._layouts.get((name, keys))
        if layout is None:
            layout = self._layout(name, keys)
            if layout is None:
                return None
        values: list[Any] = list(fields.values())
        if not (_take_texts(layout, values) and _take_booleans(layout, values)):
            return None
        if not _take_bigints(layout, values, line):
            return None
        if layout.jsonb and not _take_jsonb(layout, values, line):
            return None
        return Record(layout.table, tuple(values))

    def _layout(self, name: str, keys: tuple[str, ...]) -> _Layout | None:
        try:
            table = self._keyed.table(name, keys)
        except CorruptExportError:
            return None  # the exact parser reports it
        layout = _Layout(table, keys)
        if len(self._layouts) < _LAYOUT_CACHE_LIMIT:
            self._layouts[(name, keys)] = layout
        return layout


def _take_texts(layout: _Layout, values: list[Any]) -> bool:
    """Check text values and convert timestamps; False if one is not a string."""
    for index in layout.texts:
        value = values[index]
        if value.__class__ is not str and value is not None:
            return False
    for index in layout.timestamps:
        value = values[index]
        if value is not None:
            if value.__class__ is not str:
                return False
            values[index] = pg_timestamp(value)
    return True


def _take_booleans(layout: _Layout, values: list[Any]) -> bool:
    """Convert booleans to `t`/`f`; False if one is not a JSON boolean."""
    for index in layout.booleans:
        value = values[index]
        if value is True:
            values[index] = "t"
        elif value is False:
            values[index] = "f"
        elif value is not None:
            return False
    return True


def _take_bigints(layout: _Layout, values: list[Any], line: bytes) -> bool:
    """Convert integers to their text; False if one is not an integer kept as written."""
    for index in layout.bigints:
        value = values[index]
        if value is not None:
            # `-0` is the one integer orjson does not give back as written.
            if value.__class__ is not int or (not value and b":-0" in line):
                return False
            values[index] = str(value)
    return True


def _take_jsonb(layout: _Layout, values: list[Any], line: bytes) -> bool:
    """Replace parsed jsonb values by their text as written; False if a slice is not the value."""
    start = 0
    loads: Callable[[bytes], Any] = orjson.loads
    for index, before, after in layout.jsonb:
        found = line.find(before, start)
        if found < 0:
            return False
        start = found + len(before)
        if after is None:
            end = len(line) - 1
            if line[end:] != b"}":
                return False
        else:
            end = line.find(after, start)
            if end < 0:
                return False
        raw = line[start:end]
        try:
            # The slice is the value only if it parses to it: a nested key that looks like the
            # next column's, or a duplicate key, gives a different or invalid slice.
            if loads(raw) != values[index]:
                return False
        except (orjson.JSONDecodeError, RecursionError):
            # Comparing values nested about a thousand deep exceeds the recursion limit: the
            # exact reader, which never builds the value, reads such a line instead.
            return False
        values[index] = raw.decode()
        start = end
    return True
