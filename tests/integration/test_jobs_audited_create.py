"""An export created with its audit entry in one statement: both are written, or neither.

The API writes an accepted export this way in autocommit, so the statement is the transaction:
a failure of either insert must leave no export row behind, and an idempotent retry must not
append a second entry.
"""

from __future__ import annotations

import psycopg
import pytest

from pipelines.database import connect
from pipelines.jobs import (
    AuditEntry,
    NewExport,
    create_export,
    export_logs,
    request_fingerprint,
)
from pipelines.options import parse_options

USER = "00000000-0000-4000-8000-00000000000b"


def _new(key: str | None = None) -> NewExport:
    options = parse_options("json", None, default_compression="zstd")
    return NewExport(
        user_id=USER, export_type="user", options=options, request_id="req-1", idempotency_key=key
    )


def _entry(event: str = "export.requested") -> AuditEntry:
    return AuditEntry(
        event=event,
        message="user export requested as json",
        actor_type="user",
        actor_id=USER,
        request_id="req-1",
        client_ip="127.0.0.1",
        user_agent="tests",
    )


def _add_user(url: str) -> None:
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES (%s, 'b@example.com', 'B')",
            (USER,),
        )
        conn.commit()


def _count(url: str, table: str) -> int:
    with connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_audited_export_is_committed_with_its_entry_by_one_autocommit_statement(
    database_url: str,
) -> None:
    _add_user(database_url)
    with connect(database_url, autocommit=True) as conn:
        created = create_export(conn, _new(), audit=_entry())
    assert created.created
    with connect(database_url) as reader:
        [entry] = export_logs(reader, str(created.row["id"]))
        detail = reader.execute(
            "SELECT actor_id::text, client_ip::text, user_agent, request_id FROM export_logs"
        ).fetchone()
    assert (entry["event"], entry["level"], entry["actor_type"]) == (
        "export.requested",
        "info",
        "user",
    )
    assert entry["message"] == "user export requested as json"
    assert detail == (USER, "127.0.0.1/32", "tests", "req-1")


def test_failing_audit_entry_leaves_no_export_row(database_url: str) -> None:
    _add_user(database_url)
    with (
        connect(database_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        create_export(conn, _new(), audit=_entry(event="Not An Event"))
    assert _count(database_url, "data_exports") == 0
    assert _count(database_url, "export_logs") == 0


def test_idempotent_retry_appends_no_second_entry(database_url: str) -> None:
    _add_user(database_url)
    fingerprint = request_fingerprint({"format": "json"})
    with connect(database_url, autocommit=True) as conn:
        first = create_export(conn, _new("key-1"), fingerprint=fingerprint, audit=_entry())
        again = create_export(conn, _new("key-1"), fingerprint=fingerprint, audit=_entry())
    assert (first.created, again.created) == (True, False)
    assert again.row["id"] == first.row["id"]
    assert _count(database_url, "export_logs") == 1
