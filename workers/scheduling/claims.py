"""The scheduler's SQL: claim due one-off requests and schedules, record what each firing did.

Claims take `FOR NO KEY UPDATE SKIP LOCKED` on one row at a time, so replicas never wait on each
other and never claim the same row; NO KEY UPDATE (not FOR UPDATE) lets the firing's own writes
on a second connection insert rows that reference the claimed one. `export_schedule_runs`'
primary key (schedule, occurrence) and `data_exports.export_request_id`'s uniqueness make a
second firing of the same occurrence impossible even after a crash. Every function takes the
caller's connection and leaves the transaction to the caller.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

# High priority first, then the oldest due: an urgent export is not held behind routine ones.
_PRIORITY_ORDER: Final = "CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END"


def claim_due_request(conn: psycopg.Connection[Any], now: datetime) -> dict[str, Any] | None:
    """Lock and return one pending request due at `now` that no other scheduler holds."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            f"SELECT * FROM export_requests WHERE status = 'pending' AND scheduled_at <= %s"
            f" ORDER BY {_PRIORITY_ORDER}, scheduled_at, id LIMIT 1"
            " FOR NO KEY UPDATE SKIP LOCKED",
            (now,),
        )
        return cursor.fetchone()


def claim_due_schedule(conn: psycopg.Connection[Any], now: datetime) -> dict[str, Any] | None:
    """Lock and return one active schedule due at `now` that no other scheduler holds."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            f"SELECT * FROM export_schedules WHERE NOT paused AND next_run_at <= %s"
            f" ORDER BY {_PRIORITY_ORDER}, next_run_at, id LIMIT 1"
            " FOR NO KEY UPDATE SKIP LOCKED",
            (now,),
        )
        return cursor.fetchone()


def export_for_request(conn: psycopg.Connection[Any], request_id: str) -> dict[str, Any] | None:
    """Return the export an earlier, interrupted firing of this request created, if any."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM data_exports WHERE export_request_id = %s", (request_id,))
        return cursor.fetchone()


def finish_request(
    conn: psycopg.Connection[Any], request_id: str, *, status: str, reason: str | None
) -> None:
    """Record how a claimed request ended: enqueued, skipped or failed (with the reason)."""
    conn.execute(
        "UPDATE export_requests SET status = %s, status_reason = %s, updated_at = now(),"
        " enqueued_at = CASE WHEN %s = 'enqueued' THEN now() ELSE enqueued_at END"
        " WHERE id = %s",
        (status, reason, status, request_id),
    )


def existing_run(
    conn: psycopg.Connection[Any], schedule_id: str, occurrence: datetime
) -> dict[str, Any] | None:
    """Return the run recorded for this occurrence, with its export's id and status, if any."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT r.status, r.reason, r.export_id::text AS export_id, e.export_type,"
            " e.priority, e.status AS export_status"
            " FROM export_schedule_runs r LEFT JOIN data_exports e ON e.id = r.export_id"
            " WHERE r.schedule_id = %s AND r.occurrence_at = %s",
            (schedule_id, occurrence),
        )
        return cursor.fetchone()


def record_run(
    conn: psycopg.Connection[Any],
    schedule_id: str,
    occurrence: datetime,
    *,
    status: str,
    export_id: str | None,
    reason: str | None,
) -> bool:
    """Insert the run of one occurrence; False if another firing already recorded it."""
    row = conn.execute(
        "INSERT INTO export_schedule_runs (schedule_id, occurrence_at, export_id, status, reason)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (schedule_id, occurrence_at) DO NOTHING"
        " RETURNING 1",
        (schedule_id, occurrence, export_id, status, reason),
    ).fetchone()
    return row is not None


def advance_schedule(
    conn: psycopg.Connection[Any],
    schedule_id: str,
    *,
    next_run_at: datetime | None,
    last_run_at: datetime | None,
) -> None:
    """Set the schedule's next run (None stops it) and, when it fired, its last run."""
    conn.execute(
        "UPDATE export_schedules SET next_run_at = %s,"
        " last_run_at = coalesce(%s, last_run_at), updated_at = now() WHERE id = %s",
        (next_run_at, last_run_at, schedule_id),
    )


def apply_schedule_retention(conn: psycopg.Connection[Any], schedule: dict[str, Any]) -> int:
    """Mark completed exports beyond the schedule's retention for cleanup; return how many.

    Keep-last-N counts only exports whose verification did not fail (a broken backup takes no
    slot), and neither rule touches the newest export that passed verification: the last
    known-good backup stays until a newer one passes. Failed ones still expire by days. Both
    rules only bring `expires_at` forward; the cleanup sweep then deletes the objects and marks
    the exports expired, as for any other expiry.
    """
    keep_last, days = schedule["retention_keep_last"], schedule["retention_days"]
    if keep_last is None and days is None:
        return 0
    cursor = conn.execute(
        """
        WITH completed AS (
            SELECT id, finished_at, verification_status = 'failed' AS broken,
                   row_number() OVER (PARTITION BY verification_status = 'failed'
                                      ORDER BY finished_at DESC, id DESC) AS rank
            FROM data_exports WHERE schedule_id = %(schedule)s AND status = 'completed'
        ), known_good AS (
            SELECT id FROM data_exports
            WHERE schedule_id = %(schedule)s AND status = 'completed'
              AND verification_status = 'passed'
            ORDER BY finished_at DESC, id DESC LIMIT 1
        ), surplus AS (
            SELECT id FROM completed
            WHERE id NOT IN (SELECT id FROM known_good)
              AND ((%(keep)s::int IS NOT NULL AND NOT broken AND rank > %(keep)s::int)
                   OR (%(days)s::int IS NOT NULL
                       AND finished_at < now() - make_interval(days => %(days)s::int)))
        )
        UPDATE data_exports e SET expires_at = now(), updated_at = now()
        FROM surplus WHERE e.id = surplus.id AND (e.expires_at IS NULL OR e.expires_at > now())
        """,
        {"schedule": schedule["id"], "keep": keep_last, "days": days},
    )
    return cursor.rowcount


def claim_maintenance_slot(
    conn: psycopg.Connection[Any], key: str, *, now: datetime, every_seconds: int
) -> bool:
    """Return True for exactly one caller per `every_seconds` window, across all replicas.

    One statement: an atomic compare-and-set on an `export_config` entry holding the time the
    maintenance jobs were last enqueued.
    """
    row = conn.execute(
        """
        INSERT INTO export_config (key, value, description)
        VALUES (%(key)s, to_jsonb(%(now)s::timestamptz),
                'When a scheduler last enqueued the maintenance jobs (written by the scheduler).')
        ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
        WHERE (export_config.value #>> '{}')::timestamptz
              <= %(now)s::timestamptz - make_interval(secs => %(every)s)
        RETURNING 1
        """,
        {"key": key, "now": now, "every": every_seconds},
    ).fetchone()
    return row is not None
