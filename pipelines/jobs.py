"""Export job rows: creating an export, reading it back, and appending to its audit trail.

Shared by the API (which creates exports) and the scheduler and workers (which create and run
them). State transitions of a running export (leases, progress, completion) live with the workers;
this module only creates, reads and logs. Every function takes the caller's connection and leaves
the transaction to the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pipelines.errors import PermanentError
from pipelines.options import ExportOptions

ActorType = Literal["user", "admin", "worker", "scheduler", "system"]


class IdempotencyConflictError(PermanentError):
    """An Idempotency-Key was reused with a different request body."""


@dataclass(frozen=True)
class NewExport:
    """What a caller asks for when creating an export."""

    user_id: str
    export_type: Literal["user", "bulk"]
    options: ExportOptions
    priority: Literal["low", "normal", "high"] = "normal"
    request_id: str | None = None
    idempotency_key: str | None = None
    template_id: str | None = None
    export_request_id: str | None = None
    schedule_id: str | None = None


@dataclass(frozen=True)
class CreatedExport:
    """The export row created, or the existing one an idempotent retry refers to."""

    row: dict[str, Any]
    created: bool


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """Return a stable SHA-256 of a request body, to tell a retry from a different request."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """An audit-trail entry written together with a new export (see `create_export`)."""

    event: str
    message: str
    actor_type: ActorType
    actor_id: str | None = None
    level: Literal["debug", "info", "warning", "error"] = "info"
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


_INSERT_EXPORT = """
    INSERT INTO data_exports (
        user_id, export_type, format, compression, options, priority, request_id,
        idempotency_key, idempotency_fingerprint, template_id, export_request_id,
        schedule_id)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (user_id, idempotency_key) DO NOTHING
    RETURNING *
"""
# The same insert with its audit entry: one statement, so one round trip and one atomic write
# (in autocommit, one transaction). The entry is written only when the row was created.
_INSERT_AUDITED_EXPORT = f"""
    WITH created AS ({_INSERT_EXPORT}),
    logged AS (
        INSERT INTO export_logs (
            event, level, message, export_id, actor_type, actor_id, client_ip, user_agent,
            request_id)
        SELECT %s::text, %s::text, %s::text, created.id, %s::text, %s::uuid, %s::inet,
            %s::text, %s::text
        FROM created
    )
    SELECT * FROM created
"""


def _insert_params(new: NewExport, fingerprint: str | None) -> tuple[Any, ...]:
    options = new.options
    return (
        new.user_id,
        new.export_type,
        options.format,
        options.compression,
        Jsonb(options.as_json()),
        new.priority,
        new.request_id,
        new.idempotency_key,
        fingerprint,
        new.template_id,
        new.export_request_id,
        new.schedule_id,
    )


def _audit_params(audit: AuditEntry) -> tuple[Any, ...]:
    return (
        audit.event,
        audit.level,
        audit.message,
        audit.actor_type,
        audit.actor_id,
        audit.client_ip,
        audit.user_agent,
        audit.request_id,
    )


def create_export(
    conn: psycopg.Connection[Any],
    new: NewExport,
    *,
    fingerprint: str | None = None,
    audit: AuditEntry | None = None,
) -> CreatedExport:
    """Insert a queued export; with an idempotency key, return the earlier export instead.

    With `audit`, the entry is appended to the new export's audit trail in the same statement
    (nothing is appended when an earlier export is returned).
    """
    if (new.idempotency_key is None) != (fingerprint is None):
        raise ValueError("an idempotency key needs the request fingerprint, and only then")
    params = _insert_params(new, fingerprint)
    with conn.cursor(row_factory=dict_row) as cursor:
        if audit is None:
            cursor.execute(_INSERT_EXPORT, params)
        else:
            cursor.execute(_INSERT_AUDITED_EXPORT, params + _audit_params(audit))
        row = cursor.fetchone()
        if row is not None:
            return CreatedExport(row=row, created=True)
        cursor.execute(
            "SELECT * FROM data_exports WHERE user_id = %s AND idempotency_key = %s",
            (new.user_id, new.idempotency_key),
        )
        existing = cursor.fetchone()
    if existing is None:  # the conflicting row was deleted between the two statements
        raise PermanentError("the export for this Idempotency-Key vanished; retry the request")
    if existing["idempotency_fingerprint"] != fingerprint:
        raise IdempotencyConflictError(
            "this Idempotency-Key was already used with a different request body"
        )
    return CreatedExport(row=existing, created=False)


def get_export(conn: psycopg.Connection[Any], export_id: str) -> dict[str, Any] | None:
    """Return one export row as a dict, or None."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM data_exports WHERE id = %s", (export_id,))
        return cursor.fetchone()


def append_log(
    conn: psycopg.Connection[Any],
    *,
    event: str,
    message: str,
    actor_type: ActorType,
    export_id: str | None = None,
    shard_id: str | None = None,
    actor_id: str | None = None,
    actor_name: str | None = None,
    level: Literal["debug", "info", "warning", "error"] = "info",
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
    details: Mapping[str, Any] | None = None,
    export_request_id: str | None = None,
    schedule_id: str | None = None,
) -> None:
    """Append one entry to the audit trail (`export_logs` accepts inserts only)."""
    conn.execute(
        """
        INSERT INTO export_logs (
            event, level, message, export_id, shard_id, export_request_id, schedule_id,
            actor_type, actor_id, actor_name, client_ip, user_agent, request_id, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (
            event,
            level,
            message,
            export_id,
            shard_id,
            export_request_id,
            schedule_id,
            actor_type,
            actor_id,
            actor_name,
            client_ip,
            user_agent,
            request_id,
            Jsonb(dict(details or {})),
        ),
    )


def export_logs(conn: psycopg.Connection[Any], export_id: str) -> list[dict[str, Any]]:
    """Return an export's audit entries, oldest first: tens for a user export, two or three per
    shard for a bulk export."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT created_at, event, level, message, actor_type, details"
            " FROM export_logs WHERE export_id = %s ORDER BY id",
            (export_id,),
        )
        return cursor.fetchall()


def as_timestamp(value: datetime | None) -> str | None:
    """Return an ISO 8601 string for a database timestamp, or None."""
    return value.isoformat() if value is not None else None
