"""The record model shared by row sources, serializers, readers and restore.

Rows travel as tuples of PostgreSQL text output (`str | None`, session in UTC, DateStyle ISO) in the
column order of a projected `Table`; nothing here parses values or touches a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Kind = Literal["uuid", "text", "bigint", "boolean", "timestamptz", "jsonb"]
ExportType = Literal["user", "bulk"]
Row = tuple[str | None, ...]

# The version of the document layouts described in docs/formats.md; readers refuse other versions.
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Column:
    """One exported column: its name, its PostgreSQL kind and whether it is a system field."""

    name: str
    kind: Kind
    system: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    """A source table as exported: its name and its columns in output order."""

    name: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """Return the column names in output order."""
        return tuple(column.name for column in self.columns)

    def project(self, include_system: bool) -> Table:
        """Return this table without its system fields unless they are asked for."""
        if include_system:
            return self
        return Table(self.name, tuple(c for c in self.columns if not c.system))

    def select(self, names: Sequence[str]) -> Table:
        """Return the table restricted to `names`, which must follow the column order."""
        by_name = {column.name: column for column in self.columns}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(f"table {self.name} has no column(s) {', '.join(missing)}")
        selected = tuple(by_name[name] for name in names)
        order = [self.columns.index(column) for column in selected]
        if order != sorted(order):
            raise ValueError(f"columns of {self.name} out of order: {', '.join(names)}")
        return Table(self.name, selected)


USERS = Table(
    "users",
    (
        Column("id", "uuid"),
        Column("email", "text"),
        Column("display_name", "text"),
        Column("role", "text"),
        Column("settings", "jsonb"),
        Column("created_at", "timestamptz"),
        Column("updated_at", "timestamptz"),
        Column("deleted_at", "timestamptz", system=True),
        Column("is_internal", "boolean", system=True),
    ),
)

FILES = Table(
    "files",
    (
        Column("id", "uuid"),
        Column("owner_id", "uuid"),
        Column("path", "text"),
        Column("size_bytes", "bigint"),
        Column("content_type", "text"),
        Column("sha256", "text"),
        Column("created_at", "timestamptz"),
        Column("updated_at", "timestamptz"),
        Column("metadata", "jsonb"),
        Column("object_key", "text", system=True),
        Column("deleted_at", "timestamptz", system=True),
    ),
)

# Every exported table in stream order: all users batches come first, then all files batches.
SOURCE_TABLES: tuple[Table, ...] = (USERS, FILES)


def export_tables(include_system: bool) -> tuple[Table, ...]:
    """Return the exported tables in stream order, projected for `include_system`."""
    return tuple(table.project(include_system) for table in SOURCE_TABLES)


def source_table(name: str) -> Table:
    """Return the full source table called `name`."""
    for table in SOURCE_TABLES:
        if table.name == name:
            return table
    raise ValueError(f"unknown table {name!r}")


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows of one table plus the opaque position to resume from after them.

    The database sources send `CsvRowBatch`es instead; rows are how any other source (a test, a
    program using the serializers) hands values over.
    """

    table: Table
    rows: Sequence[Row]
    cursor: object
    # True when timestamps and booleans already hold the text exports write (ISO 8601 with `Z`,
    # `true`/`false`), converted by the database; otherwise every value is PostgreSQL's text.
    export_values: bool = False


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Records of one table that the database already wrote in an export format, whole.

    `data` is the records exactly as that format's serializer writes them, `records` how many
    they are, and `cursor` the position to resume from after them.
    """

    table: Table
    format: str
    data: bytes
    records: int
    cursor: object


@dataclass(frozen=True, slots=True)
class CsvRowBatch:
    """Rows of one table as PostgreSQL writes them in CSV, for a serializer that works by column.

    `data` holds `records` whole records, each ended by LF: the table's name, then the table's
    columns in order, every value quoted (quotes doubled), NULL an unquoted empty field, and
    timestamps and booleans already in the text exports write (`pipelines.sql_values`).
    `cursor` is the position to resume from after them.
    """

    table: Table
    data: bytes
    records: int
    cursor: object


# What a row source yields: rows to serialize, records the database serialized, or rows the
# database wrote as CSV for a serializer to rewrite a column at a time.
SourceBatch = RowBatch | EncodedBatch | CsvRowBatch


@dataclass(frozen=True, slots=True)
class Record:
    """One row read back from an export, with the (projected) table it belongs to."""

    table: Table
    values: Row


@dataclass(frozen=True, slots=True)
class ExportHeader:
    """What an export says about itself at its start when metadata is included."""

    export_id: str
    export_type: ExportType
    snapshot_time: datetime
    generator_name: str
    generator_version: str
    options: Mapping[str, object] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class ExportTrailer:
    """What an export says about itself at its end: record counts per table."""

    counts: Mapping[str, int]

    @property
    def records(self) -> int:
        """Return the number of records over all tables."""
        return sum(self.counts.values())
