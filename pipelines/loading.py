"""Loading restored records into PostgreSQL with `COPY ... FROM STDIN`, and readying the target.

`prepare_target` applies the schema to an empty database, locks the tables and refuses rows it
should not add to; `foreign_keys_deferred` drops and re-adds the files' foreign keys around a
load into empty tables; `TableLoader` copies runs of one table's records as PostgreSQL text.
Runs inside the caller's transaction: nothing here commits, reads an export or checks digests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg import sql

from pipelines.errors import PermanentError
from pipelines.records import FILES, Record, Table
from pipelines.schema import apply_schema

# Rows between progress calls: frequent enough for a smooth bar, rare enough to cost nothing.
PROGRESS_ROWS: Final = 10_000
# The key an export without system fields lacks, derived on request the way the application
# names its objects.
OBJECT_KEY_COLUMN: Final = "object_key"
MISSING_KEYS: Final = (
    "the export has no system fields, so its files lack object_key, which the target requires: "
    "restore an export made with includeSystemFields, or pass --fill-object-keys to derive "
    "files/<owner_id>/<id>"
)


class RestoreError(PermanentError):
    """The restore was refused: the target or the export does not allow it."""


class RestoreConflictError(RestoreError):
    """A restored row has the id of a row already in the target."""


def prepare_target(conn: psycopg.Connection[Any], *, allow_non_empty: bool) -> tuple[bool, bool]:
    """Apply the schema to a target without tables, lock the tables, refuse a non-empty target.

    Returns whether the schema was applied and whether both tables are empty.
    """
    row = conn.execute(
        "SELECT to_regclass('users') IS NOT NULL, to_regclass('files') IS NOT NULL"
    ).fetchone()
    assert row is not None
    applied = False
    if not row[0] and not row[1]:
        apply_schema(conn)
        applied = True
    elif not (row[0] and row[1]):
        raise RestoreError("the target has only one of the users and files tables")
    # Writers wait until the restore ends, so the emptiness seen here still holds at commit.
    conn.execute("LOCK TABLE users, files IN SHARE ROW EXCLUSIVE MODE")
    found = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM users), EXISTS (SELECT 1 FROM files)"
    ).fetchone()
    assert found is not None
    empty = not (found[0] or found[1])
    if not empty and not allow_non_empty:
        raise RestoreError(
            "the target already holds users or files rows: restore into an empty database, "
            "or pass --allow-non-empty to add to it (an id already present is then an error)"
        )
    return applied, empty


@contextmanager
def foreign_keys_deferred(conn: psycopg.Connection[Any], *, defer: bool) -> Iterator[None]:
    """Drop the foreign keys of `files` around the load into empty tables, then add them back.

    A per-row key check more than halves the load rate (measured: ~40k against ~90k rows/s);
    adding the key afterwards checks every row in one join. Inside the restore's transaction, so
    a failure restores the definitions with everything else. Kept row by row on a non-empty
    target, where adding the key back would scan rows the restore did not write.
    """
    if not defer:
        yield
        return
    keys = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'files'::regclass AND contype = 'f' ORDER BY conname"
    ).fetchall()  # a table's foreign keys: a handful of catalog rows
    for name, _ in keys:
        conn.execute(sql.SQL("ALTER TABLE files DROP CONSTRAINT {}").format(sql.Identifier(name)))
    yield
    for name, definition in keys:
        # The definition text comes from the catalog, never from the export.
        conn.execute(
            sql.SQL("ALTER TABLE files ADD CONSTRAINT {} {}").format(
                sql.Identifier(name), sql.SQL(definition)
            )
        )


class TableLoader:
    """Copies runs of one table's records into the target, counting rows per table."""

    def __init__(self, *, fill_object_keys: bool) -> None:
        self.counts: dict[str, int] = {}
        self.rows = 0
        self._fill_object_keys = fill_object_keys

    def copy(
        self,
        cursor: psycopg.Cursor[Any],
        table: Table,
        records: Iterable[Record],
        *,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        """Copy records of `table`, calling `on_progress` every `PROGRESS_ROWS` rows."""
        columns = table.column_names
        derive: Callable[[Record], tuple[str | None, ...]] | None = None
        if table.name == FILES.name and OBJECT_KEY_COLUMN not in columns:
            if not self._fill_object_keys:
                raise RestoreError(MISSING_KEYS)
            derive = _object_key_deriver(table)
            columns = (*columns, OBJECT_KEY_COLUMN)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        count = 0
        with cursor.copy(statement) as copy:
            for record in records:
                copy.write_row(record.values if derive is None else derive(record))
                count += 1
                if count % PROGRESS_ROWS == 0:
                    self.rows += PROGRESS_ROWS
                    if on_progress is not None:
                        on_progress()
        self.rows += count % PROGRESS_ROWS
        self.counts[table.name] = self.counts.get(table.name, 0) + count


def _object_key_deriver(table: Table) -> Callable[[Record], tuple[str | None, ...]]:
    """Return a function adding `files/<owner_id>/<id>` to a files record without object_key."""
    id_index = table.column_names.index("id")
    owner_index = table.column_names.index("owner_id")

    def derive(record: Record) -> tuple[str | None, ...]:
        values = record.values
        return (*values, f"files/{values[owner_index]}/{values[id_index]}")

    return derive


def diagnostic(exc: psycopg.Error) -> str:
    """Return the server's message, hint and context (which COPY line) for an error."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc), diag.message_detail, diag.message_hint, diag.context]
    return "; ".join(" ".join(part.split()) for part in parts if part)
