"""Row sources: one user's data, or a shard of many users, streamed from PostgreSQL in batches.

Every format reads through `COPY (SELECT ...) TO STDOUT` in CSV, ordered by key (see
`pipelines.database_csv`), inside a REPEATABLE READ, READ ONLY transaction that may adopt an
exported snapshot, so every shard of a bulk export on any machine reads the same point in time.
For a CSV export PostgreSQL writes the records themselves (`EncodedBatch`); for JSON, JSON Lines
and XML it sends the rows as CSV (`CsvRowBatch`) with timestamps and booleans converted
(`pipelines.sql_values`), for the serializer to rewrite a column at a time. Values stay
PostgreSQL's own text: exact for restore, and measured fastest. A source can start after a
recorded position, which is how an interrupted export resumes. Nothing here is
buffered beyond one batch.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipelines.copy_output import iter_copy_output
from pipelines.database import translate_error
from pipelines.database_csv import (
    COPY_OPTIONS,
    csv_select_list,
    iter_csv_blocks,
    row_select_list,
)
from pipelines.errors import PermanentError, RetryableError
from pipelines.options import ExportOptions
from pipelines.records import (
    FILES,
    USERS,
    CsvRowBatch,
    EncodedBatch,
    SourceBatch,
    Table,
    export_tables,
)
from pipelines.serializers.csv import csv_layout

# Records per batch: about 1 MB of files rows (466 bytes each on average), enough to amortise the
# per-batch work, small enough that memory stays one batch.
BATCH_ROWS = 2000


@dataclass(frozen=True)
class SourcePosition:
    """The key of the last row emitted: resume reads strictly after it."""

    table: str
    key: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """Return the position as JSON, for the upload-parts table."""
        return {"table": self.table, "key": list(self.key)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourcePosition:
        """Rebuild a position stored by `as_json`."""
        return cls(table=str(data["table"]), key=tuple(str(part) for part in data["key"]))


@dataclass(frozen=True)
class UserRange:
    """Users whose id is in [low, high); None means unbounded on that side."""

    low: str | None = None
    high: str | None = None


def begin_snapshot(conn: psycopg.Connection[Any], *, snapshot_id: str | None = None) -> None:
    """Open the read transaction, adopting an exported snapshot when one is given."""
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if snapshot_id:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.UndefinedObject) as exc:
        raise PermanentError(
            f"snapshot {snapshot_id} is gone: the transaction that exported it has ended"
        ) from exc
    except psycopg.OperationalError as exc:
        raise RetryableError(f"cannot open the read transaction: {exc}") from exc


def export_snapshot(conn: psycopg.Connection[Any]) -> str:
    """Open a REPEATABLE READ transaction on `conn` and export its snapshot for other sessions."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


def iter_user_batches(
    conn: psycopg.Connection[Any],
    *,
    user_id: str,
    options: ExportOptions,
    after: SourcePosition | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Generator[SourceBatch, None, None]:
    """Stream one user's row, then their files, inside the caller's read transaction."""
    hidden = sql.SQL("") if options.include_system_fields else sql.SQL("AND deleted_at IS NULL")
    try:
        exists = conn.execute(
            sql.SQL("SELECT 1 FROM users WHERE id = %s {}").format(hidden), (user_id,)
        ).fetchone()
    except psycopg.errors.InvalidTextRepresentation as exc:
        raise PermanentError(f"user id {user_id!r} is not a UUID") from exc
    except psycopg.Error as exc:
        raise translate_error(exc, f"looking up user {user_id}") from exc
    if exists is None:
        raise PermanentError(f"user {user_id} does not exist")
    everyone = UserRange()
    for table in (USERS, FILES):
        projected = table.project(options.include_system_fields)
        yield from _iter_table(
            conn,
            projected,
            users=everyone,
            options=options,
            after=after,
            batch_rows=batch_rows,
            only_user=user_id,
        )


def iter_shard_batches(
    conn: psycopg.Connection[Any],
    *,
    users: UserRange,
    options: ExportOptions,
    after: SourcePosition | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Generator[SourceBatch, None, None]:
    """Stream the users in a range, then all their files, inside the caller's read transaction."""
    for table in (USERS, FILES):
        projected = table.project(options.include_system_fields)
        yield from _iter_table(
            conn, projected, users=users, options=options, after=after, batch_rows=batch_rows
        )


def _iter_table(
    conn: psycopg.Connection[Any],
    table: Table,
    *,
    users: UserRange,
    options: ExportOptions,
    after: SourcePosition | None,
    batch_rows: int,
    only_user: str | None = None,
) -> Generator[SourceBatch, None, None]:
    """Stream `table` in key order, as text, starting after `after` when it is this table's."""
    if after is not None and after.table == FILES.name and table.name == USERS.name:
        return  # the users were all emitted before the interruption
    key_columns = ("id",) if table.name == USERS.name else ("owner_id", "id")
    conditions, params = _conditions(table, users=users, options=options, only_user=only_user)
    if after is not None and after.table == table.name:
        conditions.append(
            sql.SQL("({}) > ({})").format(
                sql.SQL(", ").join(sql.Identifier(name) for name in key_columns),
                sql.SQL(", ").join(sql.Placeholder() * len(key_columns)),
            )
        )
        params.extend(after.key)
    select = sql.SQL("SELECT {columns} FROM {table} WHERE {where} ORDER BY {order}")
    where = sql.SQL(" AND ").join(conditions)
    order = sql.SQL(", ").join(sql.Identifier(name) for name in key_columns)
    if options.format == "csv":
        layout = csv_layout(
            export_tables(options.include_system_fields),
            include_metadata=options.include_metadata,
        )
        columns = csv_select_list(table, layout)
    else:
        layout = table.column_names
        columns = row_select_list(table)
    query = select.format(
        columns=columns, table=sql.Identifier(table.name), where=where, order=order
    )
    key_fields = [1 + layout.index(name) for name in key_columns]
    yield from _iter_copied_csv(
        conn,
        table,
        query,
        params,
        key_fields=key_fields,
        batch_rows=batch_rows,
        export_format=options.format,
    )


def _iter_copied_csv(
    conn: psycopg.Connection[Any],
    table: Table,
    query: sql.Composed,
    params: list[Any],
    *,
    key_fields: list[int],
    batch_rows: int,
    export_format: str,
) -> Iterator[EncodedBatch | CsvRowBatch]:
    """Stream the CSV PostgreSQL writes for `query`, in batches of about `batch_rows` records:
    the CSV format's own records, or rows for the XML serializer."""
    as_records = export_format == "csv"
    # COPY takes no bind parameters: the values are bound on the client, quoted by psycopg.
    with psycopg.ClientCursor(conn) as binder:
        bound = binder.mogrify(query, params)
    copy_query = sql.SQL("COPY ({}) TO STDOUT {}").format(sql.SQL(bound), COPY_OPTIONS)
    try:
        with closing(iter_copy_output(conn, copy_query)) as messages:
            blocks = iter_csv_blocks(
                messages,
                table_name=table.name,
                key_fields=key_fields,
                batch_messages=batch_rows,
                crlf=as_records,
            )
            for block in blocks:
                position = SourcePosition(table.name, block.last_key)
                if as_records:
                    yield EncodedBatch(table, "csv", block.data, block.records, position)
                else:
                    yield CsvRowBatch(table, block.data, block.records, position)
    except psycopg.Error as exc:
        raise translate_error(exc, f"reading {table.name}") from exc
    except ValueError as exc:
        raise PermanentError(f"reading {table.name} as CSV: {exc}") from exc


def _conditions(
    table: Table, *, users: UserRange, options: ExportOptions, only_user: str | None
) -> tuple[list[sql.Composable], list[Any]]:
    """Return the WHERE conditions and parameters that select this export's rows of `table`."""
    owner = sql.Identifier("id" if table.name == USERS.name else "owner_id")
    conditions: list[sql.Composable] = [sql.SQL("TRUE")]
    params: list[Any] = []
    if only_user is not None:
        conditions.append(sql.SQL("{} = %s").format(owner))
        params.append(only_user)
    if users.low is not None:
        conditions.append(sql.SQL("{} >= %s").format(owner))
        params.append(users.low)
    if users.high is not None:
        conditions.append(sql.SQL("{} < %s").format(owner))
        params.append(users.high)
    if not options.include_system_fields:
        # Soft-deleted rows are system data: exported only with includeSystemFields. A file of a
        # soft-deleted user is as hidden as its owner.
        conditions.append(sql.SQL("deleted_at IS NULL"))
        if table.name == FILES.name:
            conditions.append(
                sql.SQL("owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL)")
            )
    if table.name == FILES.name and options.date_range is not None:
        if options.date_range.start is not None:
            conditions.append(sql.SQL("created_at >= %s"))
            params.append(options.date_range.start)
        if options.date_range.end_exclusive is not None:
            conditions.append(sql.SQL("created_at < %s"))
            params.append(options.date_range.end_exclusive)
    return conditions, params
