"""Leases and fencing for running exports and shards: claim, renew, record, complete, fail.

Dramatiq delivers at least once, so a message can run twice at the same time. Whoever runs a row
first claims it: the row becomes `running` with a lease (owner, expiry) and a fencing token one
higher than before. Every later write by the holder names that token in its WHERE clause, so a
worker that lost its lease (it stalled past the expiry and another took over) changes nothing.
An expired lease means the holder died; the next claim takes over and counts an attempt, and a
row whose attempts reached the cap is failed with the reason instead (kill -9 bypasses Dramatiq's
own retry count). The caller passes an autocommit connection; each function is one transaction,
except `locked_lease`, which holds the row locked while the last writes of an attempt happen.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pipelines.errors import ExportError, PermanentError

logger = logging.getLogger(__name__)

Kind = Literal["export", "shard"]
TABLES: Final[dict[str, str]] = {"export": "data_exports", "shard": "export_shards"}
# Error messages are shown to people; longer texts are cut so a traceback never fills the row.
MAX_ERROR_CHARS: Final = 2000
# A claim holds a row's lock for one short transaction, so a longer wait means something is stuck.
LOCK_WAIT_MS: Final = 5_000
# What runs under `locked_lease` is a few small PUTs (boto3 bounds each); a transaction idle this
# long is stuck on the bucket, and PostgreSQL ends its session so the lock cannot outlive it.
LOCKED_IDLE_MS: Final = 60_000


class LeaseLostError(ExportError):
    """Another worker holds the lease now; this one must stop writing."""


class ClaimOutcome(Enum):
    """What a claim found."""

    CLAIMED = "claimed"
    BUSY = "busy"
    FINISHED = "finished"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Lease:
    """The right to work on one row, proven by its fencing token."""

    kind: Kind
    row_id: str
    owner: str
    token: int
    attempts: int

    @property
    def table(self) -> sql.Identifier:
        """Return the table the row lives in."""
        return sql.Identifier(TABLES[self.kind])


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim, the lease when granted, and the row as it stood."""

    outcome: ClaimOutcome
    row: dict[str, Any]
    lease: Lease | None = None
    took_over: bool = False
    reason: str = ""


def lease_owner_name() -> str:
    """Return a name for a lease holder: host, process and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(
    conn: psycopg.Connection[Any],
    kind: Kind,
    row_id: str,
    *,
    owner: str,
    lease_seconds: int,
    max_attempts: int,
) -> Claim:
    """Take the lease on a queued row or on a running row whose lease expired."""
    table = sql.Identifier(TABLES[kind])
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            sql.SQL(
                "SELECT *, lease_expires_at > now() AS lease_live FROM {} WHERE id = %s FOR UPDATE"
            ).format(table),
            (row_id,),
        )
        row = cursor.fetchone()
        if row is None:
            raise PermanentError(f"{kind} {row_id} does not exist")
        if row["status"] not in ("queued", "running"):
            return Claim(ClaimOutcome.FINISHED, row)
        if row["status"] == "running" and row["lease_live"]:
            return Claim(ClaimOutcome.BUSY, row)
        took_over = row["status"] == "running"
        if row["attempts"] >= max_attempts:
            reason = (
                f"gave up after {row['attempts']} attempts: the worker running it stopped "
                f"without finishing each time (last lease holder {row['lease_owner']}); "
                "look for crashes or out-of-memory kills in that worker's log"
            )
            cursor.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'failed', error_code = 'attempts_exhausted',"
                    " error_message = %s, lease_owner = NULL, lease_expires_at = NULL,"
                    " finished_at = now(), updated_at = now() WHERE id = %s RETURNING *"
                ).format(table),
                (reason, row_id),
            )
            failed = cursor.fetchone()
            assert failed is not None
            return Claim(ClaimOutcome.EXHAUSTED, failed, took_over=took_over, reason=reason)
        cursor.execute(
            sql.SQL(
                "UPDATE {} SET status = 'running', lease_owner = %s,"
                " lease_expires_at = now() + make_interval(secs => %s),"
                " fencing_token = fencing_token + 1, attempts = attempts + 1,"
                " started_at = coalesce(started_at, now()), updated_at = now()"
                " WHERE id = %s RETURNING *"
            ).format(table),
            (owner, lease_seconds, row_id),
        )
        claimed = cursor.fetchone()
        assert claimed is not None
    lease = Lease(kind, row_id, owner, claimed["fencing_token"], claimed["attempts"])
    return Claim(ClaimOutcome.CLAIMED, claimed, lease, took_over=took_over)


def renew(conn: psycopg.Connection[Any], lease: Lease, *, lease_seconds: int) -> None:
    """Extend the lease, raising LeaseLostError when another worker has taken the row."""
    extend = sql.SQL("lease_expires_at = now() + make_interval(secs => %s)")
    _fenced_update(conn, lease, extend, [lease_seconds])


def release(conn: psycopg.Connection[Any], lease: Lease) -> None:
    """Let the lease lapse now so a retry can claim the row at once; the upload was aborted."""
    _fenced_update(conn, lease, sql.SQL("lease_expires_at = now(), multipart_upload_id = NULL"), [])


def forget_upload(conn: psycopg.Connection[Any], lease: Lease, upload_id: str) -> None:
    """Clear an upload that no longer exists from the leased row and delete its recorded parts."""
    with conn.transaction():
        _fenced_update(conn, lease, sql.SQL("multipart_upload_id = NULL"), [])
        conn.execute("DELETE FROM export_upload_parts WHERE upload_id = %s", (upload_id,))


@contextmanager
def locked_lease(conn: psycopg.Connection[Any], lease: Lease) -> Iterator[None]:
    """Hold the leased row locked FOR UPDATE, fenced by the token, for one transaction.

    Raises LeaseLostError when another worker holds the row. A successor's claim waits for the
    lock and then sees what this transaction committed (the row completed), so whatever runs
    inside, such as publishing the manifest and completing, is done by one worker only.
    """
    with conn.transaction():
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true),"
            " set_config('idle_in_transaction_session_timeout', %s, true)",
            (f"{LOCK_WAIT_MS}ms", f"{LOCKED_IDLE_MS}ms"),
        )
        held = conn.execute(
            sql.SQL(
                "SELECT 1 FROM {} WHERE id = %s AND fencing_token = %s AND status = 'running'"
                " FOR UPDATE"
            ).format(lease.table),
            (lease.row_id, lease.token),
        ).fetchone()
        if held is None:
            raise _lost(lease)
        yield


def set_fields(conn: psycopg.Connection[Any], lease: Lease, fields: Mapping[str, Any]) -> None:
    """Write columns of the leased row (progress, upload id, snapshot...), fenced by the token."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(name)) for name in fields
    )
    _fenced_update(conn, lease, assignments, [_adapt(value) for value in fields.values()])


def complete(conn: psycopg.Connection[Any], lease: Lease, fields: Mapping[str, Any]) -> None:
    """Mark the row completed with its results and release the lease, fenced by the token."""
    done = dict(fields)
    done.update(status="completed", lease_owner=None, lease_expires_at=None)
    done.setdefault("multipart_upload_id", None)
    assignments = sql.SQL(", ").join(
        [sql.SQL("{} = %s").format(sql.Identifier(name)) for name in done]
        + [sql.SQL("finished_at = now()")]
    )
    _fenced_update(conn, lease, assignments, [_adapt(value) for value in done.values()])


def fail(conn: psycopg.Connection[Any], lease: Lease, *, code: str, message: str) -> None:
    """Mark the row failed with a reason a person can act on, fenced by the token."""
    _fenced_update(
        conn,
        lease,
        sql.SQL(
            "status = 'failed', error_code = %s, error_message = %s, lease_owner = NULL,"
            " lease_expires_at = NULL, finished_at = now()"
        ),
        [code, message[:MAX_ERROR_CHARS]],
    )


def fail_unleased(
    conn: psycopg.Connection[Any], kind: Kind, row_id: str, *, code: str, message: str
) -> bool:
    """Fail a row that is not running under a live lease; return whether it changed."""
    table = sql.Identifier(TABLES[kind])
    result = conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'failed', error_code = %s, error_message = %s,"
            " lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()"
            " WHERE id = %s AND (status = 'queued'"
            " OR (status = 'running' AND lease_expires_at <= now()))"
        ).format(table),
        (code, message[:MAX_ERROR_CHARS], row_id),
    )
    return result.rowcount == 1


def record_part(
    conn: psycopg.Connection[Any],
    lease: Lease,
    *,
    export_id: str,
    shard_id: str | None,
    upload_id: str,
    number: int,
    size: int,
    content_size: int,
    records: int,
    sha256: str,
    etag: str,
    resume: Mapping[str, Any],
    lease_seconds: int,
) -> None:
    """Record one stored part and renew the lease, in one transaction fenced by the token."""
    with conn.transaction():
        renew(conn, lease, lease_seconds=lease_seconds)
        conn.execute(
            "INSERT INTO export_upload_parts (upload_id, part_number, export_id, shard_id,"
            " size_bytes, content_size_bytes, record_count, sha256, etag, resume_cursor)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (upload_id, part_number) DO UPDATE SET size_bytes = EXCLUDED.size_bytes,"
            " content_size_bytes = EXCLUDED.content_size_bytes,"
            " record_count = EXCLUDED.record_count, sha256 = EXCLUDED.sha256,"
            " etag = EXCLUDED.etag, resume_cursor = EXCLUDED.resume_cursor",
            (
                upload_id,
                number,
                export_id,
                shard_id,
                size,
                content_size,
                records,
                sha256,
                etag,
                Jsonb(dict(resume)),
            ),
        )


def _fenced_update(
    conn: psycopg.Connection[Any],
    lease: Lease,
    assignments: sql.Composable,
    params: list[Any],
) -> None:
    """Run an UPDATE of the leased row that only applies while the token still holds."""
    result = conn.execute(
        sql.SQL(
            "UPDATE {} SET {}, updated_at = now()"
            " WHERE id = %s AND fencing_token = %s AND status = 'running'"
        ).format(lease.table, assignments),
        [*params, lease.row_id, lease.token],
    )
    if result.rowcount != 1:
        raise _lost(lease)


def _lost(lease: Lease) -> LeaseLostError:
    return LeaseLostError(
        f"{lease.kind} {lease.row_id}: fencing token {lease.token} no longer holds the lease"
    )


def _adapt(value: Any) -> Any:
    """Wrap dicts as jsonb; pass everything else to psycopg as is."""
    return Jsonb(value) if isinstance(value, dict) else value
