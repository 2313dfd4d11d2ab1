"""Read queries of the API: one visible export, a filtered page of exports, statistics.

Every query takes the caller's connection and leaves the transaction to it. Lists are small pages
(at most `MAX_PAGE_SIZE` rows) counted with the same filters; statistics come from the views
`user_export_summary`, `export_summary` and `export_health_metrics` defined in `schema.sql`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

# Largest page a client may ask for: a screen of exports, far below anything costly to render.
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# Deepest offset a list may start at: far beyond any user's export history, and small enough
# that PostgreSQL never has to walk (or overflow on) an absurd OFFSET.
MAX_OFFSET = 100_000
EXPORT_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class ExportFilter:
    """Which of a user's exports a list asks for, and which page."""

    user_id: uuid.UUID
    status: str | None = None
    export_format: str | None = None
    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0


@dataclass(frozen=True)
class ExportPage:
    """One page of exports, newest first, and how many match in all."""

    rows: list[dict[str, Any]]
    total: int


def _where(flt: ExportFilter) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = [sql.SQL("user_id = %s")]
    params: list[Any] = [flt.user_id]
    if flt.status is not None:
        clauses.append(sql.SQL("status = %s"))
        params.append(flt.status)
    if flt.export_format is not None:
        clauses.append(sql.SQL("format = %s"))
        params.append(flt.export_format)
    return sql.SQL(" AND ").join(clauses), params


def list_exports(conn: psycopg.Connection[Any], flt: ExportFilter) -> ExportPage:
    """Return one page of the user's exports matching the filter, and the total count."""
    if not 1 <= flt.limit <= MAX_PAGE_SIZE or not 0 <= flt.offset <= MAX_OFFSET:
        raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE} and offset 0 to {MAX_OFFSET}")
    where, params = _where(flt)
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            sql.SQL("SELECT count(*) AS total FROM data_exports WHERE {}").format(where), params
        )
        counted = cursor.fetchone()
        cursor.execute(
            sql.SQL(
                "SELECT * FROM data_exports WHERE {}"
                " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s"
            ).format(where),
            [*params, flt.limit, flt.offset],
        )
        rows = cursor.fetchall()  # at most MAX_PAGE_SIZE rows
    return ExportPage(rows=rows, total=int(counted["total"]) if counted else 0)


def user_summary(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> dict[str, Any] | None:
    """Return the user's row of `user_export_summary`, or None when they have no exports."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM user_export_summary WHERE user_id = %s", (user_id,))
        return cursor.fetchone()


def system_summary(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Return `export_summary`: one row per export type, format and status (a few dozen)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM export_summary ORDER BY export_type, format, status")
        return cursor.fetchall()


def health_metrics(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Return the one row of `export_health_metrics`."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM export_health_metrics")
        row = cursor.fetchone()
    return row or {}


def user_exists(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> bool:
    """Return whether the application knows this user (exports belong to existing users)."""
    row = conn.execute("SELECT 1 FROM users WHERE id = %s", (user_id,)).fetchone()
    return row is not None
