"""Schedule retention on a real PostgreSQL: keep-last-N and days never expire the last good backup.

Exports are inserted already completed, with the verification outcome each test needs; the test
then applies the schedule's retention and reads back which exports it brought forward to now.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from api_support import add_user
from psycopg.rows import dict_row

from pipelines.database import connect
from workers.scheduling.claims import apply_schedule_retention

# Far enough ahead that an export's own expiry never counts as "expired by retention".
LATER = datetime(2099, 1, 1, tzinfo=UTC)


def add_schedule(url: str, *, keep_last: int | None, days: int | None) -> dict[str, Any]:
    user_id = add_user(url)
    with connect(url) as conn, conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, timezone,"
            " next_run_at, retention_keep_last, retention_days)"
            " VALUES (%s, 'nightly', 'json', '0 3 * * *', 'UTC', now(), %s, %s) RETURNING *",
            (user_id, keep_last, days),
        )
        row = cursor.fetchone()
        conn.commit()
    assert row is not None
    return row


def add_export(url: str, schedule: dict[str, Any], *, days_ago: float, verification: str) -> str:
    """Insert a completed export of the schedule, finished `days_ago`, with that verification."""
    export_id = str(uuid.uuid4())
    finished = datetime.now(UTC) - timedelta(days=days_ago)
    verified = finished if verification in ("passed", "failed") else None
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO data_exports (id, user_id, export_type, format, compression, options,"
            " schedule_id, status, object_key, size_bytes, content_size_bytes, record_count,"
            " sha256, content_sha256, verification_status, verified_at, created_at, started_at,"
            " finished_at, expires_at)"
            " VALUES (%s, %s, 'user', 'json', 'none', '{}', %s, 'completed', %s, 11, 11, 2,"
            " repeat('a', 64), repeat('b', 64), %s, %s, %s, %s, %s, %s)",
            (
                export_id,
                schedule["user_id"],
                schedule["id"],
                f"exports/{export_id}/export.json",
                verification,
                verified,
                finished,
                finished,
                finished,
                LATER,
            ),
        )
        conn.commit()
    return export_id


def retained(url: str, schedule: dict[str, Any]) -> tuple[int, set[str]]:
    """Apply the schedule's retention; return how many it marked and which exports it keeps."""
    with connect(url) as conn:
        marked = apply_schedule_retention(conn, schedule)
        conn.commit()
    with connect(url) as conn:
        kept = conn.execute(
            "SELECT id::text FROM data_exports WHERE schedule_id = %s AND expires_at > now()",
            (schedule["id"],),
        ).fetchall()
    return marked, {export_id for (export_id,) in kept}


def test_keep_last_does_not_count_exports_whose_verification_failed(database_url: str) -> None:
    schedule = add_schedule(database_url, keep_last=2, days=None)
    oldest = add_export(database_url, schedule, days_ago=4, verification="passed")
    older = add_export(database_url, schedule, days_ago=3, verification="passed")
    broken = add_export(database_url, schedule, days_ago=2, verification="failed")
    newest = add_export(database_url, schedule, days_ago=1, verification="pending")

    marked, kept = retained(database_url, schedule)

    # The two newest usable backups stay; the failed one takes no slot and keeps its own expiry.
    assert (marked, kept) == (1, {older, broken, newest})
    assert oldest not in kept


def test_keep_last_never_expires_the_newest_passed_export(database_url: str) -> None:
    schedule = add_schedule(database_url, keep_last=1, days=None)
    known_good = add_export(database_url, schedule, days_ago=3, verification="passed")
    unverified = add_export(database_url, schedule, days_ago=2, verification="pending")
    newest = add_export(database_url, schedule, days_ago=1, verification="pending")

    marked, kept = retained(database_url, schedule)

    assert (marked, kept) == (1, {known_good, newest})
    assert unverified not in kept


def test_days_never_expire_the_newest_passed_export_but_do_expire_failed_ones(
    database_url: str,
) -> None:
    schedule = add_schedule(database_url, keep_last=None, days=7)
    older_good = add_export(database_url, schedule, days_ago=30, verification="passed")
    known_good = add_export(database_url, schedule, days_ago=20, verification="passed")
    broken = add_export(database_url, schedule, days_ago=10, verification="failed")
    recent = add_export(database_url, schedule, days_ago=1, verification="failed")

    marked, kept = retained(database_url, schedule)

    assert (marked, kept) == (2, {known_good, recent})
    assert not {older_good, broken} & kept


def test_newer_passed_export_releases_the_previous_known_good_one(database_url: str) -> None:
    schedule = add_schedule(database_url, keep_last=1, days=None)
    previous = add_export(database_url, schedule, days_ago=2, verification="passed")
    newest = add_export(database_url, schedule, days_ago=1, verification="pending")
    assert retained(database_url, schedule) == (0, {previous, newest})

    with connect(database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET verification_status = 'passed', verified_at = now()"
            " WHERE id = %s",
            (newest,),
        )
        conn.commit()

    assert retained(database_url, schedule) == (1, {newest})
