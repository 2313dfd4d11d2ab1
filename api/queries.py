"""Read queries of the API: an export with a window of its audit trail, export pages, statistics.

Every query takes the caller's connection and leaves the transaction to it. Lists are small pages
(at most `MAX_PAGE_SIZE` exports or `MAX_LOG_WINDOW` audit entries) counted with the same filters;
statistics come from the views `user_export_summary`, `export_summary` and
`export_health_metrics` defined in `schema.sql`.
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


# Audit entries a status document carries unless the client asks for another window: the
# newest, which tell where an export stands. A user export has tens of entries in all, but every
# download and every shard of a bulk export adds some, and the document is polled.
DEFAULT_LOG_WINDOW = 100
# Largest window a client may ask for: an entry is 100-200 bytes of JSON, so the widest window
# is a document of about 100 KB however long the trail grows.
MAX_LOG_WINDOW = 500

# The export row, a window of its audit entries and their total, read by one statement: one round
# trip and one snapshot (the row, the window and the total agree) instead of BEGIN, three reads
# and COMMIT. The window is taken newest first, `export_logs_export_idx` (export_id, id) read
# backwards, and aggregated oldest first.
_EXPORT_WITH_LOGS = """
    SELECT e.*, l.log_created_at, l.log_event, l.log_level, l.log_actor_type,
           (SELECT count(*) FROM export_logs WHERE export_id = e.id) AS log_total
    FROM data_exports e
    CROSS JOIN LATERAL (
        SELECT array_agg(w.created_at ORDER BY w.id) AS log_created_at,
               array_agg(w.event ORDER BY w.id) AS log_event,
               array_agg(w.level ORDER BY w.id) AS log_level,
               array_agg(w.actor_type ORDER BY w.id) AS log_actor_type
        FROM (
            SELECT id, created_at, event, level, actor_type
            FROM export_logs WHERE export_id = e.id
            ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s
        ) w
    ) l
    WHERE e.id = %(export_id)s
"""
# No message: workers write the raw cause there, and clients read `api.public_text` instead.
_LOG_FIELDS = ("created_at", "event", "level", "actor_type")


@dataclass(frozen=True)
class LogWindow:
    """Which audit entries a status document lists: `limit` entries, `offset` from the newest."""

    limit: int = DEFAULT_LOG_WINDOW
    offset: int = 0


@dataclass(frozen=True)
class ExportWithLogs:
    """One export row, a window of its audit entries oldest first, and how many it has in all."""

    row: dict[str, Any]
    logs: list[dict[str, Any]]
    log_total: int


def export_with_logs(
    conn: psycopg.Connection[Any], export_id: uuid.UUID, window: LogWindow
) -> ExportWithLogs | None:
    """Return the export, its window of audit entries and their total, or None if there is none.

    The window's entries travel in the one row, at most `MAX_LOG_WINDOW` of them; the total
    counts every entry of the export, so a client can tell what lies outside the window.
    """
    if not 1 <= window.limit <= MAX_LOG_WINDOW or not 0 <= window.offset <= MAX_OFFSET:
        raise ValueError(f"log limit must be 1 to {MAX_LOG_WINDOW} and offset 0 to {MAX_OFFSET}")
    params = {"export_id": export_id, "limit": window.limit, "offset": window.offset}
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(_EXPORT_WITH_LOGS, params)
        row = cursor.fetchone()
    if row is None:
        return None
    log_total = int(row.pop("log_total"))
    columns = [row.pop(f"log_{field}") or [] for field in _LOG_FIELDS]
    logs = [dict(zip(_LOG_FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]
    return ExportWithLogs(row=row, logs=logs, log_total=log_total)


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
