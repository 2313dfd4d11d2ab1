"""Permission and rate-limit decisions for scheduled exports, when created and when they fire.

Built on `api.permissions` (role, grant and scope rules) plus the grant's `can_schedule` right,
and on the same rate limiter as direct exports. At creation the limit is only checked (a slot is
taken and given back at once); the slot is counted when the export is actually created, at
firing time. At firing there is no token: the owner's role comes from the `users` row, and the
token scopes that were checked at creation are not checked again. So creation checks both: an
administrator's export needs the token's admin role and `users.role = 'admin'`. As creation
takes no slot, a cap on what one user holds (schedules, pending one-off requests) keeps one
account from filling every pass.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Final

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
NO_ACCOUNT = "This account has no data to export."
ADMIN_ACCOUNT_NEEDED = (
    "Bulk exports and system fields on a schedule need an administrator account, not only an"
    " administrator token: the scheduler checks the account's role when the export fires."
)


@dataclass(frozen=True)
class HoldingLimit:
    """How many scheduled items of one kind a user may hold at once."""

    what: str
    remedy: str
    count_query: str
    per_user: int
    per_admin: int


# Recurring schedules a user may have (paused ones count: resuming takes no new room). Twenty
# covers a daily, weekly and monthly export in each format with room to spare, and keeps what
# one account puts in a scheduling pass small beside everyone else's. Administrators schedule
# bulk exports and exports for operations, so they get ten times as many.
MAX_SCHEDULES_PER_USER: Final = 20
MAX_SCHEDULES_PER_ADMIN: Final = 200
# Pending one-off requests a user may have: a hundred is several a week for the year a request
# may lie ahead; administrators again ten times as many.
MAX_PENDING_REQUESTS_PER_USER: Final = 100
MAX_PENDING_REQUESTS_PER_ADMIN: Final = 1_000
SCHEDULES_HELD: Final = HoldingLimit(
    "schedules",
    "delete one first",
    "SELECT count(*) FROM export_schedules WHERE user_id = %s",
    MAX_SCHEDULES_PER_USER,
    MAX_SCHEDULES_PER_ADMIN,
)
PENDING_REQUESTS_HELD: Final = HoldingLimit(
    "pending scheduled exports",
    "cancel one or wait until one fires",
    "SELECT count(*) FROM export_requests WHERE user_id = %s AND status = 'pending'",
    MAX_PENDING_REQUESTS_PER_USER,
    MAX_PENDING_REQUESTS_PER_ADMIN,
)


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


def authorize_new_scheduled_export(
    conn: psycopg.Connection[Any], principal: Principal, options: ExportOptions, *, bulk: bool
) -> tuple[Grant, Principal]:
    """Raise 403 unless the export may be scheduled and will still be allowed when it fires.

    Returns the grant and the owner as the scheduler will see them (role from `users`).
    """
    owner = owner_principal(conn, principal.user_id)
    if owner is None:
        raise ProblemError("forbidden", NO_ACCOUNT)
    grant = authorize_scheduled_export(conn, principal, options, bulk=bulk)
    if (bulk or options.include_system_fields) and not owner.is_admin:
        raise ProblemError("forbidden", ADMIN_ACCOUNT_NEEDED)
    return grant, owner


def check_room(
    conn: psycopg.Connection[Any], principal: Principal, owner: Principal, held: HoldingLimit
) -> None:
    """Raise 409 if the user already holds as many items of this kind as allowed.

    Takes a transaction-level advisory lock on the user first, so that concurrent creations
    count one after the other and cannot both take the last place.
    """
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"scheduled exports {principal.user_id}",),
    )
    row = conn.execute(held.count_query, (principal.user_id,)).fetchone()
    count = int(row[0]) if row else 0
    limit = held.per_admin if principal.is_admin and owner.is_admin else held.per_user
    if count >= limit:
        raise ProblemError(
            "conflict",
            f"You have {count} {held.what}, the most allowed: {held.remedy}.",
            extensions={"limit": limit},
        )


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
