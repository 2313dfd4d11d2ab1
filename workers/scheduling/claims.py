"""The scheduler's SQL: claim due one-off requests and schedules, record what each firing did.

Claims take `FOR NO KEY UPDATE SKIP LOCKED` on one row at a time, so replicas never wait on each
other and never claim the same row; NO KEY UPDATE (not FOR UPDATE) lets the firing's own writes
on a second connection insert rows that reference the claimed one. The next row is chosen in
one order across requests and schedules (priority, then due time). `export_schedule_runs`'
primary key (schedule, occurrence) and `data_exports.export_request_id`'s uniqueness make a
second firing of the same occurrence impossible even after a crash. Every function takes the
caller's connection and leaves the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from psycopg.rows import dict_row

# High priority first, then the oldest due: an urgent export is not held behind routine ones.
_PRIORITY_ORDER: Final = "CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END"
# The due condition of each kind, shared by the look and the claim so both agree on "due".
_DUE_REQUEST: Final = "status = 'pending' AND scheduled_at <= %(now)s"
_DUE_SCHEDULE: Final = "NOT paused AND next_run_at <= %(now)s"
# Each table's best unlocked due row (locked only while looking), the better of the two first.
_NEXT_DUE: Final = f"""
WITH request AS (
    SELECT 'request' AS kind, id, {_PRIORITY_ORDER} AS rank, scheduled_at AS due_at
    FROM export_requests
    WHERE {_DUE_REQUEST} AND id <> ALL(%(passed_over)s::uuid[])
      AND user_id <> ALL(%(full_owners)s::uuid[])
    ORDER BY rank, due_at, id LIMIT 1
    FOR NO KEY UPDATE SKIP LOCKED
), schedule AS (
    SELECT 'schedule' AS kind, id, {_PRIORITY_ORDER} AS rank, next_run_at AS due_at
    FROM export_schedules
    WHERE {_DUE_SCHEDULE} AND id <> ALL(%(passed_over)s::uuid[])
      AND user_id <> ALL(%(full_owners)s::uuid[])
    ORDER BY rank, due_at, id LIMIT 1
    FOR NO KEY UPDATE SKIP LOCKED
)
SELECT kind, id FROM (SELECT * FROM request UNION ALL SELECT * FROM schedule) AS heads
ORDER BY rank, due_at, kind, id LIMIT 1
"""
_CLAIM: Final = {
    "request": f"SELECT * FROM export_requests WHERE id = %(id)s AND {_DUE_REQUEST}"
    " FOR NO KEY UPDATE SKIP LOCKED",
    "schedule": f"SELECT * FROM export_schedules WHERE id = %(id)s AND {_DUE_SCHEDULE}"
    " FOR NO KEY UPDATE SKIP LOCKED",
}
# How often a claim looks again when another replica took the chosen row first; then it leaves
# the rest to the next pass (every such loss means other replicas are busy firing due items).
CLAIM_ATTEMPTS: Final = 8

ItemKind = Literal["request", "schedule"]


def claim_next_due(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    passed_over: Collection[str] = (),
    full_owners: Collection[str] = (),
) -> tuple[ItemKind, dict[str, Any]] | None:
    """Lock and return the next due request or schedule no other scheduler holds, and its kind.

    One order across both tables: priority (high, normal, low), then due time. Rows in
    `passed_over` and rows of owners in `full_owners` are left for the next pass. The look locks
    each table's best row (SKIP LOCKED, so rows other replicas hold are not seen) inside a
    savepoint and rolls it back, which releases both locks; then only the better row is claimed.
    """
    params: dict[str, Any] = {
        "now": now,
        "passed_over": list(passed_over),
        "full_owners": list(full_owners),
    }
    for _ in range(CLAIM_ATTEMPTS):
        conn.execute("SAVEPOINT next_due")
        head = conn.execute(_NEXT_DUE, params).fetchone()
        conn.execute("ROLLBACK TO SAVEPOINT next_due")  # releases the look's two locks
        conn.execute("RELEASE SAVEPOINT next_due")
        if head is None:
            return None
        kind: ItemKind = head[0]
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(_CLAIM[kind], {"id": head[1], "now": now})
            row = cursor.fetchone()
        if row is not None:
            return kind, row
        # Another replica claimed it (or fired it) between the look and the claim: look again.
    return None


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


def note_run_reason(
    conn: psycopg.Connection[Any], schedule_id: str, occurrence: datetime, reason: str
) -> None:
    """Add `reason` to the reason recorded on one occurrence's run."""
    conn.execute(
        "UPDATE export_schedule_runs SET reason = concat_ws('; ', reason, %s::text)"
        " WHERE schedule_id = %s AND occurrence_at = %s",
        (reason, schedule_id, occurrence),
    )


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
