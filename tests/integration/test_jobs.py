"""Export job rows: creation, idempotent retries, conflicting reuse and the audit trail."""

from __future__ import annotations

import pytest

from pipelines.database import connect
from pipelines.jobs import (
    IdempotencyConflictError,
    NewExport,
    append_log,
    create_export,
    export_logs,
    get_export,
    request_fingerprint,
)
from pipelines.options import parse_options

USER = "00000000-0000-4000-8000-00000000000a"


def _new(key: str | None = None, export_format: str = "csv") -> NewExport:
    options = parse_options(export_format, {"compression": True}, default_compression="zstd")
    return NewExport(user_id=USER, export_type="user", options=options, idempotency_key=key)


def _add_user(url: str) -> None:
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES (%s, 'a@example.com', 'A')",
            (USER,),
        )
        conn.commit()


def test_created_export_is_queued_with_its_options(database_url: str) -> None:
    _add_user(database_url)
    with connect(database_url) as conn:
        created = create_export(conn, _new())
        conn.commit()
        row = get_export(conn, str(created.row["id"]))
    assert created.created
    assert row is not None
    assert (row["status"], row["format"], row["compression"]) == ("queued", "csv", "zstd")
    assert row["options"]["compression"] == "zstd"


def test_retry_with_the_same_key_and_body_returns_the_same_export(database_url: str) -> None:
    _add_user(database_url)
    body = {"format": "csv"}
    with connect(database_url) as conn:
        first = create_export(conn, _new("k1"), fingerprint=request_fingerprint(body))
        again = create_export(conn, _new("k1"), fingerprint=request_fingerprint(body))
        conn.commit()
    assert first.created
    assert not again.created
    assert again.row["id"] == first.row["id"]


def test_same_key_with_a_different_body_is_refused(database_url: str) -> None:
    _add_user(database_url)
    with connect(database_url) as conn:
        create_export(conn, _new("k2"), fingerprint=request_fingerprint({"format": "csv"}))
        with pytest.raises(IdempotencyConflictError):
            create_export(
                conn, _new("k2", "xml"), fingerprint=request_fingerprint({"format": "xml"})
            )


def test_audit_entries_come_back_in_order(database_url: str) -> None:
    _add_user(database_url)
    with connect(database_url) as conn:
        export_id = str(create_export(conn, _new()).row["id"])
        append_log(
            conn,
            event="export.requested",
            message="asked",
            actor_type="user",
            actor_id=USER,
            export_id=export_id,
            client_ip="127.0.0.1",
        )
        append_log(
            conn,
            event="export.started",
            message="began",
            actor_type="worker",
            export_id=export_id,
            details={"attempt": 1},
        )
        conn.commit()
        entries = export_logs(conn, export_id)
    assert [entry["event"] for entry in entries] == ["export.requested", "export.started"]
    assert entries[1]["details"] == {"attempt": 1}
