"""Every permission decision of the API, made here and nowhere else.

The model: the token's role is the ceiling, an `export_permissions` row narrows it, and token
scopes narrow what one token may do.

1. Role (from the verified token): `admin` in `roles` or `scope` makes an administrator; anyone
   else is a user. Only administrators may start bulk exports, include system fields, run
   cleanup, read system statistics, and view or download exports they do not own.
2. Grant (the user's `export_permissions` row, ignored once `expires_at` has passed): no row
   means the role's defaults (a user exports their own data in any format; an administrator may
   do everything). A row replaces the defaults: `can_export_own`, `can_export_bulk`,
   `can_include_system_fields` and `allowed_formats` can take rights away from anyone, but a row
   never lifts a user above the role: `can_export_bulk = true` on a user's row grants nothing.
   `rate_limit_per_hour` is the user's own export rate limit (NULL: the role's default limit).
3. Scopes: a token that carries any `exports:*` scope is limited to those scopes:
   `exports:read` (status, list, download, own statistics), `exports:write` (create, verify),
   `exports:admin` (bulk, cleanup, system statistics; the admin role is still required).
   A token with no `exports:*` scope may do whatever its role and grant allow.
4. Visibility: a user sees only their own exports; anyone else's export answers 404 exactly as
   a missing one does, so export ids cannot be probed.
5. Accounts: a token whose `sub` is no application user, or a user the application has
   soft-deleted (`users.deleted_at` set), may not start exports (403), as the scheduler does
   not fire their schedules.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from api.auth import Principal
from api.problems import ProblemError
from pipelines.options import FORMATS, ExportOptions

SCOPE_PREFIX = "exports:"


class Action(enum.Enum):
    """What a request wants to do, with the token scope that covers it."""

    READ = "exports:read"
    CREATE = "exports:write"
    VERIFY = "exports:write"
    BULK = "exports:admin"
    CLEANUP = "exports:admin"
    SYSTEM_STATS = "exports:admin"

    @property
    def scope(self) -> str:
        """Return the `exports:*` scope a scoped token needs for this action."""
        return str(self.value)


# Actions only an administrator may take, whatever a grant row says.
ADMIN_ACTIONS = frozenset({Action.BULK, Action.CLEANUP, Action.SYSTEM_STATS})


@dataclass(frozen=True)
class Grant:
    """The rights from a user's `export_permissions` row, or the role defaults without one."""

    can_export_own: bool = True
    can_export_bulk: bool = True
    can_include_system_fields: bool = True
    allowed_formats: frozenset[str] = frozenset(FORMATS)
    # Accepted exports per hour for this user; None means the role's configured default.
    rate_limit_per_hour: int | None = None
    explicit: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Grant:
        """Build the grant from an `export_permissions` row."""
        return cls(
            can_export_own=bool(row["can_export_own"]),
            can_export_bulk=bool(row["can_export_bulk"]),
            can_include_system_fields=bool(row["can_include_system_fields"]),
            allowed_formats=frozenset(row["allowed_formats"]),
            rate_limit_per_hour=row["rate_limit_per_hour"],
            explicit=True,
        )


DEFAULT_GRANT = Grant()


# The grant columns and the "not expired" condition both loaders share.
_GRANT_COLUMNS = (
    "p.can_export_own, p.can_export_bulk, p.can_include_system_fields, p.allowed_formats,"
    " p.rate_limit_per_hour"
)
_ACTIVE = "(p.expires_at IS NULL OR p.expires_at > now())"


def load_grant(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> Grant:
    """Return the user's grant from `export_permissions`, or the defaults (no row or expired)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            f"SELECT {_GRANT_COLUMNS} FROM export_permissions p WHERE p.user_id = %s AND {_ACTIVE}",
            (user_id,),
        )
        row = cursor.fetchone()
    return DEFAULT_GRANT if row is None else Grant.from_row(row)


def load_account_grant(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> Grant | None:
    """Return an application user's grant (as `load_grant`), or None if there is no such user
    or the application has deleted the account."""
    # One round trip for "does the user exist" and "what may they do": this runs on every
    # export request.
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            f"SELECT p.user_id IS NOT NULL AS has_row, {_GRANT_COLUMNS}"
            " FROM users u LEFT JOIN export_permissions p"
            f" ON p.user_id = u.id AND {_ACTIVE} WHERE u.id = %s AND u.deleted_at IS NULL",
            (user_id,),
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Grant.from_row(row) if row["has_row"] else DEFAULT_GRANT


def _forbidden(detail: str) -> ProblemError:
    return ProblemError("forbidden", detail)


def require(principal: Principal, action: Action) -> None:
    """Raise 403 unless the token's role and scopes allow `action` (no database needed)."""
    if action in ADMIN_ACTIONS and not principal.is_admin:
        raise _forbidden("This action is reserved for administrators.")
    scoped = any(scope.startswith(SCOPE_PREFIX) for scope in principal.scopes)
    if scoped and action.scope not in principal.scopes:
        raise _forbidden(f"The token lacks the '{action.scope}' scope.")


def authorize_export(
    principal: Principal, grant: Grant, options: ExportOptions, *, bulk: bool
) -> None:
    """Raise 403 unless this principal with this grant may create an export with `options`."""
    require(principal, Action.BULK if bulk else Action.CREATE)
    if bulk and not grant.can_export_bulk:
        raise _forbidden("Your permissions do not include bulk exports.")
    if not bulk and not grant.can_export_own:
        raise _forbidden("Your permissions do not include exporting your data.")
    if options.include_system_fields and not (
        principal.is_admin and grant.can_include_system_fields
    ):
        raise _forbidden("Only administrators with that right may include system fields.")
    if options.format not in grant.allowed_formats:
        allowed = ", ".join(sorted(grant.allowed_formats)) or "none"
        raise _forbidden(f"Your permissions allow these formats only: {allowed}.")


def can_view(principal: Principal, export: Mapping[str, Any]) -> bool:
    """Return whether the principal may see (and download) this export at all."""
    return principal.is_admin or export["user_id"] == principal.user_id


def actor_type(principal: Principal) -> Literal["user", "admin"]:
    """Return the audit-trail actor type for the principal."""
    return "admin" if principal.is_admin else "user"
