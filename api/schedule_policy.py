"""Permission and rate-limit decisions for scheduled exports, when created and when they fire.

Built on `api.permissions` (role, grant and scope rules) plus the grant's `can_schedule` right,
and on the same rate limiter as direct exports. At creation the limit is only checked (a slot is
taken and given back at once); the slot is counted when the export is actually created, at
firing time. At firing there is no token: the owner's role comes from the `users` row, and the
token scopes that were checked at creation are not checked again.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from api.auth import Principal
from api.permissions import Grant, authorize_export, load_grant
from api.problems import ProblemError
from api.ratelimit import RateLimitDecision, rate_limited
from api.submission import Limiter
from pipelines.database import connect
from pipelines.errors import RetryableError
from pipelines.options import ExportOptions
from pipelines.settings import Settings
from workers.scheduling.contracts import Admission, ExportQueue, Firing, PassConfig
from workers.scheduling.firing import Scheduler

logger = logging.getLogger(__name__)

SCHEDULER_APPLICATION_NAME = "data-export-scheduler"
NO_SCHEDULE_RIGHT = "Your permissions do not include scheduling exports."


def may_schedule(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> bool:
    """Return the grant's `can_schedule` right (true without a current grant row)."""
    row = conn.execute(
        "SELECT can_schedule FROM export_permissions WHERE user_id = %s"
        " AND (expires_at IS NULL OR expires_at > now())",
        (user_id,),
    ).fetchone()
    return True if row is None else bool(row[0])


def authorize_scheduled_export(
    conn: psycopg.Connection[Any], principal: Principal, options: ExportOptions, *, bulk: bool
) -> Grant:
    """Raise the 403 problem unless this principal may have this export on a schedule."""
    grant = load_grant(conn, principal.user_id)
    authorize_export(principal, grant, options, bulk=bulk)
    if not may_schedule(conn, principal.user_id):
        raise ProblemError("forbidden", NO_SCHEDULE_RIGHT)
    return grant


def reserve_slot(limiter: Limiter, principal: Principal, grant: Grant) -> RateLimitDecision:
    """Take a slot under the user's own limit, or the role default when the grant has none."""
    return limiter.reserve(
        principal.user_id, is_admin=principal.is_admin, limit=grant.rate_limit_per_hour
    )


def check_rate_limit(limiter: Limiter, principal: Principal, grant: Grant) -> None:
    """Raise 429 if the principal has no free slot now (the slot is not kept)."""
    decision = reserve_slot(limiter, principal, grant)
    if not decision.allowed or decision.reservation is None:
        raise rate_limited(decision)
    limiter.release(decision.reservation)


def owner_principal(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> Principal | None:
    """Return the owner as a principal from the `users` row, or None if the account is gone."""
    row = conn.execute(
        "SELECT role FROM users WHERE id = %s AND deleted_at IS NULL", (user_id,)
    ).fetchone()
    if row is None:
        return None
    return Principal(user_id=user_id, is_admin=row[0] == "admin", scopes=frozenset())


class ScheduledExportPolicy:
    """Admit a due export if its owner still may have it and has a rate-limit slot."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def admit(self, conn: psycopg.Connection[Any], firing: Firing) -> Admission:
        """Return an admission holding a rate-limit slot, or the reason to skip."""
        principal = owner_principal(conn, uuid.UUID(firing.user_id))
        if principal is None:
            return Admission(reason="the owner's account no longer exists or is deleted")
        try:
            grant = authorize_scheduled_export(
                conn, principal, firing.options, bulk=firing.export_type == "bulk"
            )
        except ProblemError as exc:
            return Admission(reason=f"permission lost: {exc.description}")
        decision = reserve_slot(self._limiter, principal, grant)
        reservation = decision.reservation
        if not decision.allowed or reservation is None:
            return Admission(
                reason=f"rate limit reached: {decision.limit} accepted exports per hour"
            )

        def release() -> None:
            try:
                self._limiter.release(reservation)
            except RetryableError:
                logger.warning("could not give back a rate-limit slot; it expires with the window")

        return Admission(release=release)


def scheduler_for(settings: Settings, *, queue: ExportQueue, limiter: Limiter) -> Scheduler:
    """Return the production scheduler: this policy, the queue, one connection per role."""

    def connect_database() -> psycopg.Connection[Any]:
        return connect(
            settings.database_url,
            statement_timeout_ms=settings.statement_timeout_ms,
            application_name=SCHEDULER_APPLICATION_NAME,
        )

    return Scheduler(
        connect_database,
        ScheduledExportPolicy(limiter),
        queue,
        config=PassConfig(compression_enabled=settings.export_compression_enabled),
    )
