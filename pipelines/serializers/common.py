"""What every serializer shares: the chunk it yields, the resume point, and section bookkeeping.

A serializer writes one section per exported table in stream order; `Sections` tracks which one is
open and how many records each holds, so output depends only on the rows, never on batch sizes,
and a serializer can restart right after any batch given the `ResumePoint` of that batch's chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.records import (
    CsvRowBatch,
    EncodedBatch,
    ExportTrailer,
    Row,
    RowBatch,
    SourceBatch,
    Table,
)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a serializer stands after a batch: the open table and the records written so far."""

    table: str
    counts: Mapping[str, int]

    def to_fields(self) -> dict[str, Any]:
        """Return the point as a JSON-ready dict, to store beside the batch cursor."""
        return {"table": self.table, "counts": dict(self.counts)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> ResumePoint:
        """Return the point stored by `to_fields`."""
        counts = {str(name): int(count) for name, count in fields["counts"].items()}
        return cls(table=str(fields["table"]), counts=counts)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Serialized bytes; after a batch, also the cursor and resume point to continue from there."""

    data: bytes
    cursor: object | None
    records: int
    resume: ResumePoint | None = None


class Sections:
    """Track the open table section and the record counts, validating the stream order."""

    def __init__(self, tables: Sequence[Table], resume: ResumePoint | None) -> None:
        if not tables:
            raise ValueError("an export has at least one table")
        self.tables = tuple(tables)
        self._index = {table.name: position for position, table in enumerate(self.tables)}
        self.counts = {table.name: 0 for table in self.tables}
        self.current = -1
        if resume is not None:
            if resume.table not in self._index or set(resume.counts) - set(self.counts):
                raise ValueError(f"resume point {resume!r} does not match tables")
            self.current = self._index[resume.table]
            self.counts.update(resume.counts)

    def enter(self, batch: SourceBatch) -> Iterator[tuple[Table | None, Table]]:
        """Yield (section to close or None, section to open) until the batch's table is open."""
        position = self._index.get(batch.table.name)
        if position is None or self.tables[position] != batch.table:
            raise ValueError(f"batch table {batch.table.name} is not one of the export's tables")
        if position < self.current:
            raise ValueError(f"batch of {batch.table.name} after a later table: order is wrong")
        width = len(batch.table.columns)
        if isinstance(batch, RowBatch) and any(len(row) != width for row in batch.rows):
            raise ValueError(f"a {batch.table.name} row does not have {width} values")
        while self.current < position:
            closing = self.tables[self.current] if self.current >= 0 else None
            self.current += 1
            yield closing, self.tables[self.current]

    def finish(self) -> Iterator[tuple[Table | None, Table | None]]:
        """Yield the (close, open) steps that write every remaining section, then a last close."""
        while self.current < len(self.tables) - 1:
            closing = self.tables[self.current] if self.current >= 0 else None
            self.current += 1
            yield closing, self.tables[self.current]
        yield self.tables[self.current], None

    def add(self, table: Table, records: int) -> ResumePoint:
        """Count `records` written for `table` and return the point to resume after them."""
        self.counts[table.name] += records
        return ResumePoint(table=table.name, counts=dict(self.counts))

    def trailer(self) -> ExportTrailer:
        """Return the trailer with the final counts."""
        return ExportTrailer(dict(self.counts))


def rows_of(batch: SourceBatch, serializer: str, *, export_values: bool = False) -> Sequence[Row]:
    """Return the rows of `batch` for `serializer`, refusing a batch it cannot write.

    Records the database already serialized cannot be written again, and rows whose values the
    database converted (`export_values`) only by a serializer that says it takes them.
    """
    if isinstance(batch, EncodedBatch):
        raise ValueError(
            f"{batch.table.name} records already written as {batch.format} by the database"
            f" cannot be written as {serializer}"
        )
    if isinstance(batch, CsvRowBatch):
        raise ValueError(f"{serializer} does not write rows the database sent as CSV")
    if batch.export_values and not export_values:
        raise ValueError(f"{serializer} needs PostgreSQL's own text, not converted values")
    return batch.rows


def union_columns(tables: Sequence[Table]) -> tuple[str, ...]:
    """Return every column name of `tables` once, in order of first appearance."""
    names: dict[str, None] = {}
    for table in tables:
        for column in table.columns:
            names.setdefault(column.name, None)
    return tuple(names)
