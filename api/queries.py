"""Read queries of the API: an export with its audit trail, a page of exports, statistics.

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


# The audit entries of the status document, gathered beside the export in the same statement:
# one round trip and one snapshot instead of BEGIN, two reads and COMMIT.
_EXPORT_WITH_LOGS = """
    SELECT e.*, l.log_created_at, l.log_event, l.log_level, l.log_message, l.log_actor_type
    FROM data_exports e
    CROSS JOIN LATERAL (
        SELECT array_agg(created_at ORDER BY id) AS log_created_at,
               array_agg(event ORDER BY id) AS log_event,
               array_agg(level ORDER BY id) AS log_level,
               array_agg(message ORDER BY id) AS log_message,
               array_agg(actor_type ORDER BY id) AS log_actor_type
        FROM export_logs WHERE export_id = e.id
    ) l
    WHERE e.id = %s
"""
_LOG_FIELDS = ("created_at", "event", "level", "message", "actor_type")


@dataclass(frozen=True)
class ExportWithLogs:
    """One export row and its audit entries, oldest first (as `pipelines.jobs.export_logs`)."""

    row: dict[str, Any]
    logs: list[dict[str, Any]]


def export_with_logs(conn: psycopg.Connection[Any], export_id: uuid.UUID) -> ExportWithLogs | None:
    """Return the export and its audit entries read by one statement, or None if there is none.

    The entries travel whole in the one row: tens for a user export, two or three per shard for a
    bulk export (the status document lists them all, as it did when they were read apart).
    """
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_EXPORT_WITH_LOGS, (export_id,))
        row = cursor.fetchone()
    if row is None:
        return None
    columns = [row.pop(f"log_{field}") or [] for field in _LOG_FIELDS]
    logs = [dict(zip(_LOG_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]
    return ExportWithLogs(row=row, logs=logs)


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
