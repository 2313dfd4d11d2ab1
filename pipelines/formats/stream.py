"""What every reader shares: line splitting over chunks and the `RecordStream` it hands back.

A reader is a generator of events (`Record`, `ExportHeader`, `ExportTrailer`); `RecordStream`
passes the records on and keeps the header, the trailer and its own counts for verification.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

from pipelines.formats.values import CorruptExportError, from_json_value, loads_exact
from pipelines.records import ExportHeader, ExportTrailer, Kind, Record, Table, source_table

Event = Record | ExportHeader | ExportTrailer


class RecordStream(Iterator[Record]):
    """Records read from an export; `header`, `trailer` and `counts` fill in while it is read."""

    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events
        self.header: ExportHeader | None = None
        self.trailer: ExportTrailer | None = None
        self.counts: dict[str, int] = {}

    def __iter__(self) -> RecordStream:
        return self

    def __next__(self) -> Record:
        try:
            for event in self._events:
                if isinstance(event, Record):
                    name = event.table.name
                    self.counts[name] = self.counts.get(name, 0) + 1
                    return event
                if isinstance(event, ExportHeader):
                    self.header = event
                else:
                    self.trailer = event
        except RecursionError as exc:
            # Readers follow nesting without recursion; this only keeps a missed case a clear
            # error about the export instead of a crash.
            raise CorruptExportError(
                f"a value is nested too deeply to read ({exc}); the export cannot be read back"
            ) from exc
        raise StopIteration


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the `\\n`-terminated lines of a byte stream, without their `\\n`."""
    pending = bytearray()
    for chunk in chunks:
        start = 0
        end = chunk.find(b"\n")
        while end >= 0:
            if pending:
                pending += chunk[start:end]
                yield bytes(pending)
                pending.clear()
            else:
                yield chunk[start:end]
            start = end + 1
            end = chunk.find(b"\n", start)
        pending += chunk[start:]
    if pending:
        raise CorruptExportError("export ends in the middle of a line: it is truncated")


class KeyedRecords:
    """Build records from column-keyed values, finding the projected table from the keys."""

    _CACHE_LIMIT: Final = 64  # distinct key layouts remembered; an export has one per table

    def __init__(self) -> None:
        self._tables: dict[tuple[str, tuple[str, ...]], Table] = {}

    def table(self, name: str, keys: tuple[str, ...]) -> Table:
        """Return table `name` restricted to `keys`, which must follow its column order."""
        cached = self._tables.get((name, keys))
        if cached is not None:
            return cached
        try:
            table = source_table(name).select(keys)
        except ValueError as exc:
            raise CorruptExportError(f"unexpected {name} columns: {exc}") from exc
        missing = [
            c.name for c in source_table(name).columns if not c.system and c not in table.columns
        ]
        if missing:
            raise CorruptExportError(f"{name} record lacks column(s) {', '.join(missing)}")
        if len(self._tables) < self._CACHE_LIMIT:
            self._tables[(name, keys)] = table
        return table

    def from_json(self, name: str, fields: Mapping[str, object]) -> Record:
        """Return the record for JSON fields parsed by `loads_exact`."""
        table = self.table(name, tuple(fields))
        values = tuple(
            from_json_value(column.kind, fields[column.name]) for column in table.columns
        )
        return Record(table, values)

    def from_members(self, name: str, members: Sequence[tuple[str, str]]) -> Record:
        """Return the record for the members of an object line split by `object_members`.

        A jsonb value is kept as its text, already checked to be JSON, so it is never parsed
        into a tree whatever its depth; other values are scalars, parsed exactly.
        """
        keys = tuple(key for key, _ in members)
        if len(set(keys)) != len(keys):
            raise CorruptExportError(f"{name} record names a column twice")
        table = self.table(name, keys)
        return Record(
            table,
            tuple(
                _member_value(column.kind, text)
                for column, (_, text) in zip(table.columns, members, strict=True)
            ),
        )


def _member_value(kind: Kind, text: str) -> str | None:
    """Return the PostgreSQL text of one member's exact JSON text."""
    if kind == "jsonb":
        return text
    if text[:1] in ("[", "{"):
        raise CorruptExportError(f"a {kind} value cannot be a JSON array or object")
    return from_json_value(kind, loads_exact(text))
