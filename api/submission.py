"""Accept an export: authorize, count it against the rate limit, write its row, enqueue it.

The order makes "only accepted exports count" hold: an idempotent retry is answered before any
slot is taken; a slot is reserved before the row is written and released if the row is not
committed or the message cannot be enqueued. The row is committed before its message is sent, so
a worker never receives an id it cannot find. When the broker refuses the message, the committed
row is marked `failed` with a reason (and loses its Idempotency-Key, so the client's retry makes
a fresh attempt) rather than deleted: the audit trail refers to it. A process that dies between
commit and enqueue leaves a `queued` row with no message, which maintenance sends again
(`workers.lost_messages.resend_lost_messages`).
The rate limit is the user's own (`export_permissions.rate_limit_per_hour`) when their grant
has one, else the role's default.

The connection runs in autocommit: the grant is read by one statement, and the row and its
`export.requested` audit entry are written by one more, which has committed when it returns.
Two PostgreSQL round trips in all; a round trip costs more CPU on this path than the SQL does.
A request with an Idempotency-Key runs in a transaction that first takes an advisory lock on
(user, key): concurrent retries of one request wait for the first to commit and replay it,
instead of each taking a rate-limit slot and being refused with 429.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg
from psycopg.rows import dict_row

from api.auth import Principal
from api.database import Database
from api.permissions import Grant, actor_type, authorize_export, load_account_grant
from api.problems import ProblemError
from api.public_text import ENQUEUE_FAILED_CODE, ENQUEUE_FAILED_MESSAGE
from api.ratelimit import RateLimitDecision, Reservation, rate_limited
from pipelines.errors import RetryableError
from pipelines.jobs import (
    AuditEntry,
    IdempotencyConflictError,
    NewExport,
    append_log,
    create_export,
    request_fingerprint,
)
from pipelines.options import ExportOptions

logger = logging.getLogger(__name__)


class Limiter(Protocol):
    """The rate limiter as the API uses it (`api.ratelimit.RateLimiter`)."""

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        """Take a slot if fewer than `limit` (None: the role default) are taken."""

    def release(self, reservation: Reservation) -> bool:
        """Give a slot back."""


@dataclass(frozen=True)
class Origin:
    """Where a request came from, for the audit trail."""

    request_id: str | None
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class Submission:
    """The export a request refers to, whether it was created now, and the rate-limit figures."""

    row: dict[str, Any]
    created: bool
    decision: RateLimitDecision | None


def hold_idempotency_key(conn: psycopg.Connection[Any], user_id: uuid.UUID, key: str) -> None:
    """Wait for, then hold until the transaction ends, the advisory lock of (user, key)."""
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"idempotency-key {user_id} {key}",),
    )


def existing_for_key(
    conn: psycopg.Connection[Any], user_id: uuid.UUID, key: str
) -> dict[str, Any] | None:
    """Return the user's export created with this Idempotency-Key, if any."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT * FROM data_exports WHERE user_id = %s AND idempotency_key = %s",
            (user_id, key),
        )
        return cursor.fetchone()


def _requested(principal: Principal, new: NewExport, origin: Origin) -> AuditEntry:
    """Return the `export.requested` audit entry of an export request."""
    return AuditEntry(
        event="export.requested",
        message=f"{new.export_type} export requested as {new.options.format}",
        actor_type=actor_type(principal),
        actor_id=str(principal.user_id),
        request_id=origin.request_id,
        client_ip=origin.client_ip,
        user_agent=origin.user_agent,
    )


def _replay(row: dict[str, Any], fingerprint: str) -> Submission:
    if row["idempotency_fingerprint"] != fingerprint:
        raise ProblemError("idempotency-key-reused")
    return Submission(row=row, created=False, decision=None)


class ExportSubmitter:
    """Turn a checked export request into an accepted, enqueued export."""

    def __init__(
        self,
        database: Database,
        limiter: Limiter,
        *,
        enqueue_user: Callable[[str, str | None], None],
        enqueue_bulk: Callable[[str, str | None], None],
    ) -> None:
        self._database = database
        self._limiter = limiter
        self._enqueue = {"user": enqueue_user, "bulk": enqueue_bulk}

    def submit(
        self,
        principal: Principal,
        *,
        export_type: Literal["user", "bulk"],
        options: ExportOptions,
        body: dict[str, Any],
        idempotency_key: str | None,
        origin: Origin,
    ) -> Submission:
        """Accept the export or raise the problem that says why not."""
        user_id = principal.user_id
        fingerprint = (
            request_fingerprint({"endpoint": export_type, "body": body})
            if idempotency_key is not None
            else None
        )
        new = NewExport(
            user_id=str(user_id),
            export_type=export_type,
            options=options,
            request_id=origin.request_id,
            idempotency_key=idempotency_key,
        )
        reservation: Reservation | None = None
        # Autocommit: the grant read is one round trip, and the export row with its audit entry
        # is one statement that has committed when it returns (BEGIN and COMMIT would be two
        # more). Nothing is written before the slot is reserved.
        session = (
            self._database.autocommit() if idempotency_key is None else self._database.transaction()
        )
        try:
            with session as conn:
                if idempotency_key is not None:
                    hold_idempotency_key(conn, user_id, idempotency_key)
                grant = load_account_grant(conn, user_id)
                if grant is None:
                    raise ProblemError("forbidden", "This account has no data to export.")
                authorize_export(principal, grant, options, bulk=export_type == "bulk")
                if idempotency_key is not None and fingerprint is not None:
                    earlier = existing_for_key(conn, user_id, idempotency_key)
                    if earlier is not None:
                        return _replay(earlier, fingerprint)
                decision = self._reserve(principal, grant)
                if not decision.allowed or decision.reservation is None:
                    raise rate_limited(decision)
                reservation = decision.reservation
                created = create_export(
                    conn, new, fingerprint=fingerprint, audit=_requested(principal, new, origin)
                )
        except IdempotencyConflictError as exc:
            if reservation is not None:
                self._release(reservation)
            raise ProblemError("idempotency-key-reused") from exc
        except BaseException:
            # Also when the write itself failed: nothing was created, so the slot goes back.
            if reservation is not None:
                self._release(reservation)
            raise
        if not created.created:  # a concurrent request with the same key won the race
            self._release(reservation)
            return Submission(row=created.row, created=False, decision=None)
        self._send(principal, export_type, created.row, origin, reservation)
        return Submission(row=created.row, created=True, decision=decision)

    def _reserve(self, principal: Principal, grant: Grant) -> RateLimitDecision:
        """Take a slot under the user's own limit, or the role default when the grant has none."""
        return self._limiter.reserve(
            principal.user_id, is_admin=principal.is_admin, limit=grant.rate_limit_per_hour
        )

    def _send(
        self,
        principal: Principal,
        export_type: str,
        row: dict[str, Any],
        origin: Origin,
        reservation: Reservation,
    ) -> None:
        export_id = str(row["id"])
        try:
            self._enqueue[export_type](export_id, origin.request_id)
        except Exception as exc:
            # Whatever the broker raised, the export was not queued: fail it and free the slot.
            logger.error("enqueue of export %s failed: %s", export_id, exc, exc_info=exc)
            self._abandon(principal, row, origin)
            self._release(reservation)
            if isinstance(exc, RetryableError):
                raise
            raise RetryableError(f"enqueue failed: {type(exc).__name__}") from exc

    def _abandon(self, principal: Principal, row: dict[str, Any], origin: Origin) -> None:
        """Mark a committed but unqueued export failed, with its reason, in one transaction."""
        export_id = str(row["id"])
        try:
            with self._database.transaction() as conn:
                with conn.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(
                        """
                        UPDATE data_exports
                        SET status = 'failed', error_code = %s, error_message = %s,
                            finished_at = now(), updated_at = now(),
                            idempotency_key = NULL, idempotency_fingerprint = NULL
                        WHERE id = %s AND status = 'queued'
                        RETURNING *
                        """,
                        (ENQUEUE_FAILED_CODE, ENQUEUE_FAILED_MESSAGE, export_id),
                    )
                    updated = cursor.fetchone()
                if updated is not None:
                    self._log_enqueue_failed(conn, principal, updated, origin)
        except RetryableError:
            logger.error(
                "export %s stays queued without a message; cleanup will fail it", export_id
            )

    def _log_enqueue_failed(
        self,
        conn: psycopg.Connection[Any],
        principal: Principal,
        row: dict[str, Any],
        origin: Origin,
    ) -> None:
        append_log(
            conn,
            event="export.enqueue_failed",
            message=ENQUEUE_FAILED_MESSAGE,
            actor_type=actor_type(principal),
            export_id=str(row["id"]),
            actor_id=str(principal.user_id),
            level="error",
            request_id=origin.request_id,
            client_ip=origin.client_ip,
            user_agent=origin.user_agent,
        )

    def _release(self, reservation: Reservation) -> None:
        try:
            self._limiter.release(reservation)
        except RetryableError:
            logger.warning("could not give back a rate-limit slot; it expires with the window")
