"""schema.sql on a real PostgreSQL: idempotent, drift found, bad rows refused, views exact.

Every test gets its own database from the shared fixtures: `database_url` has the schema applied,
`empty_database_url` has nothing. `exportctl db` is exercised as the subprocess operators run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pipelines.database import connect
from pipelines.schema import apply_schema, catalog_snapshot, schema_drift

REPO_ROOT = Path(__file__).resolve().parents[2]

EXPORT_TABLES = {
    "data_exports",
    "export_requests",
    "export_logs",
    "export_config",
    "export_permissions",
    "export_templates",
    "export_schedules",
    "export_analytics",
    "export_shards",
    "export_upload_parts",
    "export_schedule_runs",
    "webhook_deliveries",
}
SOURCE_TABLES = {"users", "files"}
VIEWS = {"export_summary", "export_health_metrics", "user_export_summary"}
DIGEST = "ab" * 32


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh schema-applied database: each statement stands alone."""
    with connect(database_url, autocommit=True) as connection:
        yield connection


def _insert(conn: psycopg.Connection[Any], table: str, values: Mapping[str, Any]) -> Any:
    """Insert one row and return its first column (the id for every table here)."""
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING 1, *").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    adapted = [Jsonb(v) if isinstance(v, dict) else v for v in values.values()]
    row = conn.execute(query, adapted).fetchone()
    assert row is not None
    return row[1]


def _user(conn: psycopg.Connection[Any]) -> uuid.UUID:
    user_id = uuid.uuid4()
    _insert(conn, "users", {"id": user_id, "email": f"{user_id}@example.com", "display_name": "U"})
    return user_id


def _completed(**overrides: Any) -> dict[str, Any]:
    """Columns of a completed export, which the schema insists carries its digests and sizes."""
    return {
        "status": "completed",
        "object_key": f"exports/{uuid.uuid4()}.json",
        "size_bytes": 100,
        "content_size_bytes": 400,
        "record_count": 10,
        "sha256": DIGEST,
        "content_sha256": DIGEST,
        **overrides,
    }


# --- idempotency and drift ------------------------------------------------------------------


def test_applying_schema_twice_changes_nothing(empty_database_url: str) -> None:
    with connect(empty_database_url, autocommit=True) as connection:
        apply_schema(connection)
        first = catalog_snapshot(connection)
        apply_schema(connection)
        second = catalog_snapshot(connection)
        drift = schema_drift(connection)
    assert first == second
    assert drift == []
    assert {key[1] for key in first if key[0] == "table"} == EXPORT_TABLES | SOURCE_TABLES
    assert {key[1] for key in first if key[0] == "view"} == VIEWS


def test_every_table_and_view_says_why_it_exists(conn: psycopg.Connection[Any]) -> None:
    snapshot = catalog_snapshot(conn)
    relations = [key for key in snapshot if key[0] in ("table", "view")]
    uncommented = [
        key[1]
        for key in relations
        if len(snapshot.get((f"comment on {key[0]}", key[1], ""), "")) < 20
    ]
    assert len(relations) == len(EXPORT_TABLES | SOURCE_TABLES | VIEWS)
    assert uncommented == []


def test_drift_on_an_empty_database_names_every_missing_relation(empty_database_url: str) -> None:
    with connect(empty_database_url, autocommit=True) as connection:
        drift = schema_drift(connection)
    expected = {f"missing table {name}" for name in EXPORT_TABLES | SOURCE_TABLES}
    expected |= {f"missing view {name}" for name in VIEWS}
    expected |= {
        "missing function export_logs_refuse_change()",
        "missing function webhook_deliveries_owe_call()",
    }
    assert set(drift) == expected


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        (
            "DROP INDEX data_exports_lease_idx",
            "missing index data_exports.data_exports_lease_idx: CREATE INDEX",
        ),
        (
            "ALTER TABLE export_shards DROP COLUMN user_count",
            "missing column export_shards.user_count",
        ),
        (
            "ALTER TABLE data_exports DROP CONSTRAINT data_exports_format_check",
            "missing constraint data_exports.data_exports_format_check: CHECK",
        ),
        (
            "ALTER TABLE data_exports DROP CONSTRAINT data_exports_user_id_fkey",
            "missing constraint data_exports.data_exports_user_id_fkey: FOREIGN KEY (user_id)",
        ),
        (
            "ALTER TABLE files ALTER COLUMN path TYPE varchar(200)",
            "different column files.path: expected 'text not null', "
            "found 'character varying(200) not null'",
        ),
        (
            "ALTER TABLE data_exports ALTER COLUMN format DROP NOT NULL",
            "different column data_exports.format: expected 'text not null', found 'text null'",
        ),
        (
            "ALTER TABLE data_exports ALTER COLUMN status SET DEFAULT 'running'",
            "different column data_exports.status",
        ),
        (
            "ALTER TABLE export_logs DISABLE TRIGGER export_logs_append_only",
            "different trigger export_logs.export_logs_append_only",
        ),
        ("DROP VIEW export_summary", "missing view export_summary"),
        (
            "DROP VIEW export_summary; CREATE VIEW export_summary AS SELECT export_type, status, "
            "0::bigint AS export_count FROM data_exports",
            "different view export_summary",
        ),
        ("COMMENT ON TABLE export_config IS NULL", "missing comment on table export_config"),
        ("ALTER TABLE data_exports ADD COLUMN note text", "unexpected column data_exports.note"),
        (
            "CREATE UNIQUE INDEX export_logs_request_idx ON export_logs (request_id)",
            "unexpected index export_logs.export_logs_request_idx",
        ),
    ],
)
def test_drift_reports_each_change(conn: psycopg.Connection[Any], ddl: str, expected: str) -> None:
    conn.execute(ddl.encode())
    drift = schema_drift(conn)
    assert [line for line in drift if line.startswith(expected)], drift


def test_dropped_table_is_reported_once_not_per_column(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP TABLE export_analytics")
    assert schema_drift(conn) == ["missing table export_analytics"]


def test_tables_outside_schema_sql_are_not_drift(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE invoices (id bigint PRIMARY KEY, user_id uuid REFERENCES users (id))"
    )
    conn.execute("CREATE INDEX invoices_user_idx ON invoices (user_id)")
    assert schema_drift(conn) == []


def test_drift_check_leaves_nothing_behind(conn: psycopg.Connection[Any]) -> None:
    before = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    assert schema_drift(conn) == []
    after = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    schemas = conn.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'schema\\_check\\_%'"
    ).fetchone()
    assert before == after
    assert schemas == (0,)


def test_migrating_again_restores_a_dropped_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DROP INDEX export_requests_due_idx")
    apply_schema(conn)
    assert schema_drift(conn) == []


# --- constraints ----------------------------------------------------------------------------


@pytest.fixture
def rows(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """A valid baseline: two users, a user export, a bulk export with a shard, a schedule."""
    user, other = _user(conn), _user(conn)
    export = _insert(conn, "data_exports", {"user_id": user, "format": "json"})
    bulk = _insert(conn, "data_exports", {"user_id": other, "format": "csv", "export_type": "bulk"})
    other_bulk = _insert(
        conn, "data_exports", {"user_id": other, "format": "csv", "export_type": "bulk"}
    )
    shard = _insert(conn, "export_shards", {"export_id": bulk, "shard_index": 0})
    schedule = _insert(
        conn,
        "export_schedules",
        {"user_id": user, "name": "nightly", "format": "json", "cron_expression": "0 3 * * *"},
    )
    return {
        "user": user,
        "other": other,
        "export": export,
        "bulk": bulk,
        "other_bulk": other_bulk,
        "shard": shard,
        "schedule": schedule,
        "missing": uuid.uuid4(),
        "digest": DIGEST,
    }


def _export_insert(columns: str, values: str) -> str:
    return (
        f"INSERT INTO data_exports (user_id, format, {columns}) VALUES (%(user)s, 'json', {values})"
    )


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        pytest.param(
            "INSERT INTO data_exports (user_id, format) VALUES (%(user)s, 'pdf')",
            errors.CheckViolation,
            id="unknown-format",
        ),
        pytest.param(
            _export_insert("compression", "'brotli'"),
            errors.CheckViolation,
            id="unknown-compression",
        ),
        pytest.param(
            _export_insert("status", "'done'"), errors.CheckViolation, id="unknown-status"
        ),
        pytest.param(_export_insert("export_type", "'team'"), errors.CheckViolation, id="bad-type"),
        pytest.param(_export_insert("size_bytes", "-1"), errors.CheckViolation, id="negative-size"),
        pytest.param(
            _export_insert("progress", "101"), errors.CheckViolation, id="progress-over-100"
        ),
        pytest.param(_export_insert("sha256", "'ABCD'"), errors.CheckViolation, id="bad-digest"),
        pytest.param(
            _export_insert("options", "'[1]'::jsonb"),
            errors.CheckViolation,
            id="options-not-object",
        ),
        pytest.param(
            _export_insert("verification_status", "'ok'"),
            errors.CheckViolation,
            id="unknown-verification-outcome",
        ),
        pytest.param(
            _export_insert("verification_status", "'passed'"),
            errors.CheckViolation,
            id="verified-without-time",
        ),
        pytest.param(
            _export_insert("status, finished_at", "'completed', now()"),
            errors.CheckViolation,
            id="completed-without-digests",
        ),
        pytest.param(
            _export_insert("status, finished_at", "'failed', now()"),
            errors.CheckViolation,
            id="failed-without-reason",
        ),
        pytest.param(
            _export_insert("status", "'running'"), errors.CheckViolation, id="running-without-lease"
        ),
        pytest.param(
            _export_insert("lease_owner", "'worker-1'"), errors.CheckViolation, id="half-a-lease"
        ),
        pytest.param(
            _export_insert("idempotency_key", "'k1'"),
            errors.CheckViolation,
            id="idempotency-key-without-fingerprint",
        ),
        pytest.param(
            "INSERT INTO data_exports (user_id, format) VALUES (%(missing)s, 'json')",
            errors.ForeignKeyViolation,
            id="export-of-missing-user",
        ),
        pytest.param(
            "INSERT INTO data_exports (user_id) VALUES (%(user)s)",
            errors.NotNullViolation,
            id="export-without-format",
        ),
        pytest.param(
            "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256, object_key) "
            "VALUES (gen_random_uuid(), %(missing)s, '/a', 1, 'text/plain', %(digest)s, 'k')",
            errors.ForeignKeyViolation,
            id="file-of-missing-user",
        ),
        pytest.param(
            "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256, object_key) "
            "VALUES (gen_random_uuid(), %(user)s, '/a', -5, 'text/plain', %(digest)s, 'k')",
            errors.CheckViolation,
            id="file-with-negative-size",
        ),
        pytest.param(
            "DELETE FROM users WHERE id = %(user)s",
            errors.ForeignKeyViolation,
            id="user-with-exports",
        ),
        pytest.param(
            "INSERT INTO export_shards (export_id, shard_index) VALUES (%(bulk)s, 0)",
            errors.UniqueViolation,
            id="duplicate-shard-index",
        ),
        pytest.param(
            "INSERT INTO export_shards (export_id, shard_index, user_id_from, user_id_to) "
            "VALUES (%(bulk)s, 1, 'ffffffff-0000-0000-0000-000000000000', "
            "'00000000-0000-0000-0000-000000000000')",
            errors.CheckViolation,
            id="shard-range-backwards",
        ),
        pytest.param(
            "INSERT INTO export_upload_parts (upload_id, part_number, export_id, size_bytes, "
            "content_size_bytes, record_count, sha256, etag, resume_cursor) "
            "VALUES ('u1', 0, %(export)s, 5, 5, 1, %(digest)s, 'e', '{}')",
            errors.CheckViolation,
            id="part-number-zero",
        ),
        pytest.param(
            "INSERT INTO export_upload_parts (upload_id, part_number, export_id, size_bytes, "
            "content_size_bytes, record_count, sha256, etag, resume_cursor) "
            "VALUES ('u1', 10001, %(export)s, 5, 5, 1, %(digest)s, 'e', '{}')",
            errors.CheckViolation,
            id="part-number-over-s3-limit",
        ),
        pytest.param(
            "INSERT INTO export_upload_parts (upload_id, part_number, export_id, shard_id, "
            "size_bytes, content_size_bytes, record_count, sha256, etag, resume_cursor) "
            "VALUES ('u1', 1, %(other_bulk)s, %(shard)s, 5, 5, 1, %(digest)s, 'e', '{}')",
            errors.ForeignKeyViolation,
            id="part-of-another-exports-shard",
        ),
        pytest.param(
            "INSERT INTO export_upload_parts (upload_id, part_number, export_id, size_bytes, "
            "content_size_bytes, record_count, sha256, etag) "
            "VALUES ('u1', 1, %(export)s, 5, 5, 1, %(digest)s, 'e')",
            errors.NotNullViolation,
            id="part-without-resume-cursor",
        ),
        pytest.param(
            "INSERT INTO export_requests (user_id, format, scheduled_at, status) "
            "VALUES (%(user)s, 'json', now(), 'bogus')",
            errors.CheckViolation,
            id="unknown-request-status",
        ),
        pytest.param(
            "INSERT INTO export_requests (user_id, format, scheduled_at, status) "
            "VALUES (%(user)s, 'json', now(), 'skipped')",
            errors.CheckViolation,
            id="skipped-without-reason",
        ),
        pytest.param(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression) "
            "VALUES (%(user)s, 'x', 'json', 'every day')",
            errors.CheckViolation,
            id="cron-with-two-fields",
        ),
        pytest.param(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, timezone) "
            "VALUES (%(user)s, 'x', 'json', '0 3 * * *', 'Mars/Olympus_Mons')",
            errors.InvalidParameterValue,
            id="unknown-time-zone",
        ),
        pytest.param(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, paused) "
            "VALUES (%(user)s, 'x', 'json', '0 3 * * *', true)",
            errors.CheckViolation,
            id="paused-without-time",
        ),
        pytest.param(
            "INSERT INTO export_schedule_runs (schedule_id, occurrence_at, status, reason) "
            "VALUES (%(schedule)s, now(), 'skipped', NULL)",
            errors.CheckViolation,
            id="skipped-run-without-reason",
        ),
        pytest.param(
            "INSERT INTO export_permissions (user_id, allowed_formats) "
            "VALUES (%(user)s, ARRAY['json', 'pdf'])",
            errors.CheckViolation,
            id="permission-for-unknown-format",
        ),
        pytest.param(
            "INSERT INTO export_config (key, value) VALUES ('Not A Key', '1')",
            errors.CheckViolation,
            id="bad-config-key",
        ),
        pytest.param(
            "INSERT INTO export_analytics (export_id, user_id, export_type, format, compression, "
            "size_bytes, content_size_bytes, record_count, verify_duration_ms, "
            "verification_status, problem_count) "
            "VALUES (%(export)s, %(user)s, 'user', 'json', 'none', 1, 1, 1, 1, 'passed', 2)",
            errors.CheckViolation,
            id="passed-with-problems",
        ),
        pytest.param(
            "INSERT INTO export_logs (event, message, actor_type) VALUES ('Export Created', 'm', "
            "'system')",
            errors.CheckViolation,
            id="bad-log-event-name",
        ),
        pytest.param(
            "INSERT INTO export_logs (event, message, actor_type) VALUES ('export.download', 'm', "
            "'user')",
            errors.CheckViolation,
            id="user-action-without-user",
        ),
    ],
)
def test_constraints_refuse_bad_rows(
    conn: psycopg.Connection[Any], rows: dict[str, Any], statement: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        conn.execute(statement.encode(), rows)


def test_idempotency_key_is_unique_per_user_only(
    conn: psycopg.Connection[Any], rows: dict[str, Any]
) -> None:
    keyed = {"format": "json", "idempotency_key": "retry-1", "idempotency_fingerprint": "f"}
    _insert(conn, "data_exports", {"user_id": rows["user"], **keyed})
    _insert(conn, "data_exports", {"user_id": rows["other"], **keyed})
    with pytest.raises(errors.UniqueViolation):
        _insert(conn, "data_exports", {"user_id": rows["user"], **keyed})


def test_a_scheduled_request_fires_into_one_export(
    conn: psycopg.Connection[Any], rows: dict[str, Any]
) -> None:
    request = _insert(
        conn,
        "export_requests",
        {"user_id": rows["user"], "format": "json", "scheduled_at": datetime.now().astimezone()},
    )
    _insert(
        conn,
        "data_exports",
        {"user_id": rows["user"], "format": "json", "export_request_id": request},
    )
    with pytest.raises(errors.UniqueViolation):
        _insert(
            conn,
            "data_exports",
            {"user_id": rows["user"], "format": "json", "export_request_id": request},
        )


def test_a_schedule_occurrence_is_recorded_once(
    conn: psycopg.Connection[Any], rows: dict[str, Any]
) -> None:
    occurrence = {
        "schedule_id": rows["schedule"],
        "occurrence_at": datetime(2026, 3, 29, 1, 0).astimezone(),
    }
    _insert(conn, "export_schedule_runs", {**occurrence, "status": "enqueued"})
    with pytest.raises(errors.UniqueViolation):
        _insert(conn, "export_schedule_runs", {**occurrence, "status": "enqueued"})


def test_system_template_names_are_unique(conn: psycopg.Connection[Any]) -> None:
    _insert(conn, "export_templates", {"name": "weekly-dr", "format": "jsonl"})
    with pytest.raises(errors.UniqueViolation):
        _insert(conn, "export_templates", {"name": "weekly-dr", "format": "csv"})


def test_audit_log_is_append_only(conn: psycopg.Connection[Any], rows: dict[str, Any]) -> None:
    _insert(
        conn,
        "export_logs",
        {
            "event": "export.download",
            "message": "downloaded",
            "actor_type": "user",
            "actor_id": rows["user"],
            "export_id": rows["export"],
            "client_ip": "127.0.0.1",
            "request_id": "req-1",
        },
    )
    for statement in (
        "UPDATE export_logs SET message = 'rewritten'",
        "DELETE FROM export_logs",
        "TRUNCATE export_logs",
    ):
        with pytest.raises(errors.RestrictViolation):
            conn.execute(statement.encode())
    assert conn.execute("SELECT message FROM export_logs").fetchall() == [("downloaded",)]


def test_deleting_a_bulk_export_removes_its_shards_and_parts(
    conn: psycopg.Connection[Any], rows: dict[str, Any]
) -> None:
    _insert(
        conn,
        "export_upload_parts",
        {
            "upload_id": "u-9",
            "part_number": 1,
            "export_id": rows["bulk"],
            "shard_id": rows["shard"],
            "size_bytes": 5,
            "content_size_bytes": 9,
            "record_count": 2,
            "sha256": DIGEST,
            "etag": '"e1"',
            "resume_cursor": {"after_user_id": str(rows["user"])},
        },
    )
    conn.execute("DELETE FROM data_exports WHERE id = %s", (rows["bulk"],))
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM export_shards), (SELECT count(*) FROM export_upload_parts)"
    ).fetchone()
    assert counts == (0, 0)


# --- views ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """A known set of exports, queried in the transaction that wrote it."""

    cur: psycopg.Cursor[dict[str, Any]]
    now: datetime
    alice: uuid.UUID
    bob: uuid.UUID


@pytest.fixture
def history(database_url: str) -> Iterator[History]:
    """Exports of two users in every state, inserted relative to the transaction's now()."""
    # One transaction, so now() in the inserted times and in the views is the same instant.
    with connect(database_url) as connection, connection.transaction(force_rollback=True):
        now_row = connection.execute("SELECT now()").fetchone()
        assert now_row is not None
        now: datetime = now_row[0]
        # carol has no exports and so no row in user_export_summary.
        alice, bob, _carol = _user(connection), _user(connection), _user(connection)

        def at(**offset: float) -> datetime:
            return now - timedelta(**offset)

        lease = {"lease_owner": "worker-1"}
        exports = [
            # alice: two completed in the last day (10 s and 30 s), one failed, one queued
            (
                alice,
                "json",
                _completed(
                    compression_ratio=4.0,
                    verification_status="passed",
                    verified_at=at(hours=1),
                    created_at=at(hours=3),
                    started_at=at(hours=2),
                    finished_at=at(hours=2) + timedelta(seconds=10),
                    expires_at=now + timedelta(days=7),
                ),
            ),
            (
                alice,
                "json",
                _completed(
                    size_bytes=300,
                    content_size_bytes=600,
                    record_count=30,
                    compression_ratio=2.0,
                    verification_status="failed",
                    verified_at=at(minutes=30),
                    created_at=at(hours=2),
                    started_at=at(minutes=90, seconds=30),
                    finished_at=at(minutes=90),
                    expires_at=at(hours=1),
                ),
            ),
            (
                alice,
                "csv",
                {
                    "status": "failed",
                    "error_message": "boom",
                    "created_at": at(hours=4),
                    "started_at": at(hours=3, seconds=5),
                    "finished_at": at(hours=3),
                },
            ),
            (alice, "csv", {"created_at": at(minutes=10)}),
            # bob: one running with an expired lease and an open upload, one old bulk completed,
            # one bulk running with a stuck shard
            (
                bob,
                "json",
                {
                    "status": "running",
                    **lease,
                    "lease_expires_at": at(minutes=1),
                    "multipart_upload_id": "up-1",
                    "created_at": at(minutes=20),
                    "started_at": at(minutes=19),
                },
            ),
            (
                bob,
                "xml",
                _completed(
                    export_type="bulk",
                    size_bytes=1000,
                    content_size_bytes=5000,
                    record_count=100,
                    compression_ratio=5.0,
                    created_at=at(days=3),
                    started_at=at(days=2, seconds=60),
                    finished_at=at(days=2),
                ),
            ),
            (
                bob,
                "jsonl",
                {
                    "export_type": "bulk",
                    "status": "running",
                    **lease,
                    "lease_expires_at": now + timedelta(minutes=5),
                    "created_at": at(minutes=5),
                    "started_at": at(minutes=4),
                },
            ),
        ]
        ids = [
            _insert(connection, "data_exports", {"user_id": user, "format": fmt, **columns})
            for user, fmt, columns in exports
        ]
        running_bulk = ids[-1]
        _insert(
            connection,
            "export_shards",
            {
                "export_id": running_bulk,
                "shard_index": 0,
                "status": "running",
                **lease,
                "lease_expires_at": at(minutes=1),
                "multipart_upload_id": "up-2",
            },
        )
        _insert(
            connection,
            "export_shards",
            {"export_id": running_bulk, "shard_index": 1, **_completed(finished_at=at(minutes=2))},
        )
        # What the scheduler should have fired: a schedule 20 minutes late and a request 30
        # minutes late are overdue; a request 2 minutes late is due but not yet overdue; a
        # paused schedule and a future one are neither, nor is a request already enqueued.
        schedule = {
            "user_id": alice,
            "name": "nightly",
            "format": "json",
            "cron_expression": "@daily",
        }
        for columns in (
            {"next_run_at": at(minutes=20)},
            {"next_run_at": at(days=3), "paused": True, "paused_at": at(days=4)},
            {"next_run_at": now + timedelta(hours=1)},
        ):
            _insert(connection, "export_schedules", {**schedule, **columns})
        request = {"user_id": bob, "format": "csv"}
        for columns in (
            {"scheduled_at": at(minutes=30)},
            {"scheduled_at": at(minutes=2)},
            {"scheduled_at": at(hours=5), "status": "enqueued", "enqueued_at": at(hours=5)},
        ):
            _insert(connection, "export_requests", {**request, **columns})

        with connection.cursor(row_factory=dict_row) as cur:
            yield History(cur=cur, now=now, alice=alice, bob=bob)


def test_health_metrics_count_backlog_stuck_jobs_and_outcomes(history: History) -> None:
    health = history.cur.execute("SELECT * FROM export_health_metrics").fetchall()

    assert health == [
        {
            "queued_count": 1,
            "running_count": 2,
            "stuck_count": 1,
            "stuck_shard_count": 1,
            "completed_last_24h": 2,
            "failed_last_24h": 1,
            "success_rate_24h": pytest.approx(2 / 3),
            "awaiting_verification": 1,
            "verification_failed_last_24h": 1,
            "awaiting_cleanup": 1,
            "abandoned_uploads": 2,
            "oldest_queued_age_seconds": 600.0,
            "avg_duration_seconds_24h": 20.0,
            "overdue_scheduled_count": 2,
            "oldest_due_age_seconds": 1800.0,
            "oldest_awaiting_cleanup_age_seconds": 3600.0,
        }
    ]


def test_export_summary_groups_by_type_format_and_status(history: History) -> None:
    summary = history.cur.execute(
        "SELECT * FROM export_summary ORDER BY export_type, format, status"
    ).fetchall()

    figures = [
        (
            row["export_type"],
            row["format"],
            row["status"],
            row["export_count"],
            row["total_size_bytes"],
            row["total_content_size_bytes"],
            row["total_records"],
            row["avg_compression_ratio"],
            row["avg_duration_seconds"],
        )
        for row in summary
    ]
    assert figures == [
        ("bulk", "jsonl", "running", 1, 0, 0, 0, None, None),
        ("bulk", "xml", "completed", 1, 1000, 5000, 100, 5.0, 60.0),
        ("user", "csv", "failed", 1, 0, 0, 0, None, 5.0),
        ("user", "csv", "queued", 1, 0, 0, 0, None, None),
        ("user", "json", "completed", 2, 400, 1000, 40, 3.0, 20.0),
        ("user", "json", "running", 1, 0, 0, 0, None, None),
    ]
    assert summary[4]["first_created_at"] == history.now - timedelta(hours=3)
    assert summary[4]["last_created_at"] == history.now - timedelta(hours=2)


def test_user_export_summary_has_one_row_per_user_with_exports(history: History) -> None:
    rows = history.cur.execute("SELECT * FROM user_export_summary").fetchall()
    per_user = {row["user_id"]: row for row in rows}
    alice, bob, now = history.alice, history.bob, history.now

    assert set(per_user) == {alice, bob}
    assert {k: v for k, v in per_user[alice].items() if k != "user_id"} == {
        "total_exports": 4,
        "completed_exports": 2,
        "failed_exports": 1,
        "active_exports": 1,
        "verified_exports": 1,
        "completed_size_bytes": 400,
        "last_export_at": now - timedelta(minutes=10),
        "last_completed_at": now - timedelta(minutes=90),
    }
    assert {k: v for k, v in per_user[bob].items() if k != "user_id"} == {
        "total_exports": 3,
        "completed_exports": 1,
        "failed_exports": 0,
        "active_exports": 2,
        "verified_exports": 0,
        "completed_size_bytes": 1000,
        "last_export_at": now - timedelta(minutes=5),
        "last_completed_at": now - timedelta(days=2),
    }


# --- exportctl db ---------------------------------------------------------------------------


def _exportctl(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "exportctl", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_migrate_then_check_pass_on_an_empty_database(empty_database_url: str) -> None:
    before = _exportctl("db", "check", database_url=empty_database_url)
    migrated = _exportctl("db", "migrate", database_url=empty_database_url)
    again = _exportctl("db", "migrate", database_url=empty_database_url)
    checked = _exportctl("db", "check", "--database-url", empty_database_url)

    assert before.returncode == 1
    assert "  - missing table data_exports" in before.stdout.splitlines()
    assert migrated.returncode == 0, migrated.stderr
    assert "matches schema.sql" in migrated.stdout
    assert again.returncode == 0, again.stderr
    assert checked.returncode == 0, checked.stderr
    assert "matches schema.sql" in checked.stdout


def test_db_check_lists_drift_and_exits_1(database_url: str) -> None:
    with connect(database_url, autocommit=True) as connection:
        connection.execute("DROP INDEX data_exports_user_created_idx")
        connection.execute("ALTER TABLE export_logs DROP COLUMN client_ip")
    result = _exportctl("db", "check", database_url=database_url)

    assert result.returncode == 1
    assert "differs from schema.sql in 2 place(s)" in result.stdout
    assert "missing index data_exports.data_exports_user_created_idx" in result.stdout
    assert "missing column export_logs.client_ip" in result.stdout


def test_db_migrate_reports_drift_it_cannot_repair(database_url: str) -> None:
    with connect(database_url, autocommit=True) as connection:
        connection.execute("DROP INDEX data_exports_user_created_idx")
        connection.execute("ALTER TABLE export_logs DROP COLUMN client_ip")
    result = _exportctl("db", "migrate", database_url=database_url)

    assert result.returncode == 1
    assert "data_exports_user_created_idx" not in result.stdout
    assert "missing column export_logs.client_ip" in result.stdout


def test_db_check_reports_an_unreachable_database_without_its_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://exporter:s3cret-pw@127.0.0.1:{port}/nothing"
    result = _exportctl("db", "check", "--database-url", url)

    assert result.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://exporter:***@127.0.0.1" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_oldest_awaiting_cleanup_age_covers_exactly_what_awaiting_cleanup_counts(
    database_url: str,
) -> None:
    # One transaction, so now() in the inserted times and in the view is the same instant.
    with connect(database_url) as connection, connection.transaction(force_rollback=True):
        now_row = connection.execute("SELECT now()").fetchone()
        assert now_row is not None
        now: datetime = now_row[0]
        user = _user(connection)

        def health() -> dict[str, Any]:
            with connection.cursor(row_factory=dict_row) as cur:
                row = cur.execute("SELECT * FROM export_health_metrics").fetchone()
            assert row is not None
            return row

        assert health()["oldest_awaiting_cleanup_age_seconds"] is None
        finished = {"finished_at": now - timedelta(days=30)}
        for columns in (
            # awaiting cleanup: completed and past its expiry (7 hours and 1 hour ago)
            _completed(expires_at=now - timedelta(hours=7), **finished),
            _completed(expires_at=now - timedelta(hours=1), **finished),
            # not awaiting cleanup: still within its retention, or already cleaned up (expired),
            # or failed (its leftovers are purged, but it was never a completed export)
            _completed(expires_at=now + timedelta(days=1), **finished),
            _completed(status="expired", expires_at=now - timedelta(days=9), **finished),
            {
                "status": "failed",
                "error_message": "x",
                "expires_at": now - timedelta(days=8),
                **finished,
            },
        ):
            _insert(connection, "data_exports", {"user_id": user, "format": "json", **columns})

        row = health()
        assert row["awaiting_cleanup"] == 2
        assert row["oldest_awaiting_cleanup_age_seconds"] == 7 * 3600.0
        assert list(row)[-1] == "oldest_awaiting_cleanup_age_seconds"
