"""What one-off requests and recurring schedules share: limits, paging, ids, creation checks.

Both kinds of scheduled export validate type, format, options and priority the same way and are
authorized, capped and rate-limited at creation by `ExportCreation`; this module holds no routes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import falcon
import psycopg

from api.auth import Principal
from api.database import Database
from api.payloads import WindowSpec, window_query
from api.permissions import Grant
from api.problems import ProblemError
from api.queries import MAX_OFFSET
from api.schedule_policy import (
    HoldingLimit,
    authorize_new_scheduled_export,
    check_rate_limit,
    check_room,
)
from api.submission import Limiter
from pipelines.options import InvalidOptionsError, parse_options
from pipelines.settings import Settings

EXPORT_TYPES: Final[dict[str, Literal["user", "bulk"]]] = {"user_data": "user", "bulk": "bulk"}
PRIORITIES: Final = ("low", "normal", "high")
PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
SCHEDULE_PAGE: Final = WindowSpec("limit", "offset", PAGE_SIZE, MAX_PAGE_SIZE, MAX_OFFSET)
NOT_FOUND: Final = "No scheduled export with this id."


def iso_time(value: datetime | None) -> str | None:
    """Return the ISO 8601 text of a timestamp, or None."""
    return value.isoformat() if value is not None else None


def parse_id(raw: str) -> uuid.UUID:
    """Return the id from a path segment; a malformed one answers 404 like an unknown one."""
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise ProblemError("not-found", NOT_FOUND) from exc


@dataclass(frozen=True)
class Permit:
    """What creation was allowed with: the grant, and the owner as the scheduler sees them."""

    grant: Grant
    owner: Principal


class ExportCreation:
    """What both kinds of creation share: type, options, priority, authorization."""

    def __init__(self, database: Database, limiter: Limiter, settings: Settings) -> None:
        self._database = database
        self._limiter = limiter
        self._settings = settings

    def checked(
        self, body: dict[str, Any], problems: dict[str, str], template: Mapping[str, Any] | None
    ) -> tuple[Literal["user", "bulk"], Any, str]:
        """Return (export type, options, priority) from the body, recording problems."""
        raw_type = body.get("exportType", "user_data")
        export_type = EXPORT_TYPES.get(raw_type) if isinstance(raw_type, str) else None
        if export_type is None:
            problems["exportType"] = "must be user_data or bulk"
        priority = body.get("priority", "normal")
        if priority not in PRIORITIES:
            problems["priority"] = f"must be one of {', '.join(PRIORITIES)}"
        fmt = body.get("format", template["format"] if template else None)
        raw_options = body.get("options")
        if raw_options is None and template is not None:
            raw_options = {**template["options"], "compression": template["compression"]}
        options = None
        try:
            options = parse_options(
                fmt,
                raw_options,
                default_compression=self._settings.export_default_compression,
                compression_enabled=self._settings.export_compression_enabled,
            )
        except InvalidOptionsError as exc:
            problems.update(exc.problems)
        return export_type or "user", options, str(priority)

    def permit(
        self, conn: psycopg.Connection[Any], principal: Principal, options: Any, *, bulk: bool
    ) -> Permit:
        """Raise 403 unless the principal may schedule this export (now and when it fires)."""
        grant, owner = authorize_new_scheduled_export(conn, principal, options, bulk=bulk)
        return Permit(grant=grant, owner=owner)

    def make_room(
        self,
        conn: psycopg.Connection[Any],
        principal: Principal,
        permit: Permit,
        held: HoldingLimit,
    ) -> None:
        """Raise 409 if the user holds as many such items as allowed, 429 without a slot now."""
        check_room(conn, principal, permit.owner, held)
        check_rate_limit(self._limiter, principal, permit.grant)

    def authorize(
        self,
        conn: psycopg.Connection[Any],
        principal: Principal,
        options: Any,
        *,
        bulk: bool,
        held: HoldingLimit,
    ) -> None:
        """Raise 403, 409 or 429 unless the principal may schedule one more such export now."""
        permit = self.permit(conn, principal, options, bulk=bulk)
        self.make_room(conn, principal, permit, held)


def stored_options(body_options: Any, compression: str) -> dict[str, Any]:
    """Return the options as stored: the body's own, with the effective compression."""
    stored = dict(body_options) if isinstance(body_options, Mapping) else {}
    stored["compression"] = compression
    return stored


def page_params(req: falcon.Request) -> tuple[int, int]:
    """Return (limit, offset) from the query string, or raise 400."""
    return window_query(req, SCHEDULE_PAGE)
