"""One-off scheduled exports: `/api/exports/schedule[/{id}]` creates, lists, shows and cancels.

Each owner sees only their own requests (anyone else's answers 404). Permissions and the rate limit
are checked here at creation and by the scheduler again when the request fires. An
Idempotency-Key works as on `POST /api/exports/user`: a retry with the same key and body answers
200 with the first request, the same key with another body 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import falcon
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.auth import Principal
from api.database import Database
from api.payloads import idempotency_key, read_json_object
from api.permissions import Action, actor_type, require
from api.problems import ProblemError, invalid_request
from api.resources.common import origin_of, principal_of, send_json, send_page
from api.resources.exports import REPLAYED_HEADER
from api.resources.schedule_shared import (
    NOT_FOUND,
    ExportCreation,
    iso_time,
    page_params,
    parse_id,
    stored_options,
)
from api.schedule_policy import PENDING_REQUESTS_HELD
from api.submission import Origin, hold_idempotency_key
from pipelines.jobs import append_log, request_fingerprint
from pipelines.options import ExportOptions

SCHEDULE_PATH: Final = "/api/exports/schedule"
# A one-off request at most a year ahead: further than that it is a schedule, not a request.
MAX_LEAD: Final = timedelta(days=366)
ONE_OFF_FIELDS: Final = frozenset({"exportType", "format", "options", "scheduledAt", "priority"})
# What a request's fingerprint says it was sent to, beside its body (as exports say their type).
FINGERPRINT_ENDPOINT: Final = "schedule"


def request_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return the public view of one `export_requests` row (with `export_id` joined)."""
    request_id = str(row["id"])
    export_id = row.get("export_id")
    return {
        "id": request_id,
        "exportType": "bulk" if row["export_type"] == "bulk" else "user_data",
        "format": row["format"],
        "compression": row["compression"],
        "options": row["options"],
        "priority": row["priority"],
        "scheduledAt": iso_time(row["scheduled_at"]),
        "status": row["status"],
        "statusReason": row["status_reason"],
        "exportId": str(export_id) if export_id else None,
        "createdAt": iso_time(row["created_at"]),
        "enqueuedAt": iso_time(row["enqueued_at"]),
        "cancelledAt": iso_time(row["cancelled_at"]),
        "links": {
            "self": f"{SCHEDULE_PATH}/{request_id}",
            "export": f"/api/exports/{export_id}/status" if export_id else None,
        },
    }


class ScheduleRequestsResource(ExportCreation):
    """POST a one-off export at a future time; GET the caller's requests."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a one-off scheduled export: 201 with the request, 200 for an idempotent retry."""
        principal = principal_of(req)
        key = idempotency_key(req)
        body = read_json_object(req)
        problems = {name: "unknown field" for name in sorted(set(body) - ONE_OFF_FIELDS)}
        export_type, options, priority = self.checked(body, problems, None)
        require(principal, Action.BULK if export_type == "bulk" else Action.CREATE)
        scheduled_at = _scheduled_at(body.get("scheduledAt"), problems)
        if key is None and scheduled_at is not None:
            # Named with the body's other problems; with a key, only once it is known that
            # this is no replay (a replay is answered even once its time has passed).
            problems.update(_lead_problems(scheduled_at))
        if problems or options is None or scheduled_at is None:
            raise invalid_request(problems)
        fingerprint = (
            request_fingerprint({"endpoint": FINGERPRINT_ENDPOINT, "body": body})
            if key is not None
            else None
        )
        origin = origin_of(req)
        with self._database.transaction() as conn:
            if key is not None:
                # Concurrent retries of one request wait here for the first, then replay it.
                hold_idempotency_key(conn, principal.user_id, key)
            permit = self.permit(conn, principal, options, bulk=export_type == "bulk")
            earlier = _existing_for_key(conn, principal, key) if key is not None else None
            if earlier is not None:
                if earlier["idempotency_fingerprint"] != fingerprint:
                    raise ProblemError("idempotency-key-reused")
                row = earlier
            else:
                lead = _lead_problems(scheduled_at)
                if lead:
                    raise invalid_request(lead)
                self.make_room(conn, principal, permit, PENDING_REQUESTS_HELD)
                row = _insert(
                    conn,
                    principal,
                    _NewRequest(export_type, options, body, priority, scheduled_at),
                    origin,
                    key=key,
                    fingerprint=fingerprint,
                )
        document = request_document(row)
        resp.set_header("Location", document["links"]["self"])
        if earlier is not None:
            resp.set_header(REPLAYED_HEADER, "true")
            send_json(resp, {"request": document}, status=200)
        else:
            send_json(resp, {"request": document}, status=201)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List the caller's one-off requests, newest first."""
        principal = principal_of(req)
        require(principal, Action.READ)
        limit, offset = page_params(req)
        with self._database.transaction() as conn, conn.cursor(row_factory=dict_row) as cursor:
            # Counted on its own: a window count has no row to ride on past the last page.
            cursor.execute(
                "SELECT count(*) AS total FROM export_requests WHERE user_id = %s",
                (principal.user_id,),
            )
            counted = cursor.fetchone()
            cursor.execute(
                "SELECT r.*, e.id AS export_id FROM export_requests r"
                " LEFT JOIN data_exports e ON e.export_request_id = r.id WHERE r.user_id = %s"
                " ORDER BY r.created_at DESC, r.id DESC LIMIT %s OFFSET %s",
                (principal.user_id, limit, offset),
            )
            rows = cursor.fetchall()
        documents = [request_document(row) for row in rows]
        total = int(counted["total"]) if counted else 0
        send_page(resp, "requests", documents, total=total, limit=limit, offset=offset)


class ScheduleRequestResource:
    """GET or DELETE (cancel) one of the caller's one-off requests."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def _load(self, conn: psycopg.Connection[Any], principal: Principal, raw: str) -> Any:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                "SELECT r.*, e.id AS export_id FROM export_requests r"
                " LEFT JOIN data_exports e ON e.export_request_id = r.id"
                " WHERE r.id = %s AND r.user_id = %s FOR NO KEY UPDATE OF r",
                (parse_id(raw), principal.user_id),
            )
            row = cursor.fetchone()
        if row is None:
            raise ProblemError("not-found", NOT_FOUND)
        return row

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """Answer the request, or 404."""
        principal = principal_of(req)
        require(principal, Action.READ)
        with self._database.transaction() as conn:
            row = self._load(conn, principal, request_id)
        send_json(resp, {"request": request_document(row)})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        """Cancel a pending request: 200; 409 once it has fired."""
        principal = principal_of(req)
        require(principal, Action.CREATE)
        origin = origin_of(req)
        with self._database.transaction() as conn:
            # Waits for a scheduler holding the row, then sees whether it fired.
            row = self._load(conn, principal, request_id)
            if row["status"] != "pending":
                raise ProblemError("conflict", f"The request is already {row['status']}.")
            with conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(
                    "UPDATE export_requests SET status = 'cancelled', cancelled_at = now(),"
                    " updated_at = now() WHERE id = %s RETURNING *, NULL AS export_id",
                    (row["id"],),
                )
                row = cursor.fetchone()
            append_log(
                conn,
                event="schedule.request_cancelled",
                message="scheduled export cancelled before it fired",
                actor_type=actor_type(principal),
                actor_id=str(principal.user_id),
                export_request_id=str(row["id"]),
                request_id=origin.request_id,
                client_ip=origin.client_ip,
                user_agent=origin.user_agent,
            )
        send_json(resp, {"request": request_document(row)})


def _scheduled_at(value: object, problems: dict[str, str]) -> datetime | None:
    if not isinstance(value, str):
        problems["scheduledAt"] = "is required: an ISO 8601 date-time with offset"
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        problems["scheduledAt"] = "must be an ISO 8601 date-time with offset"
        return None
    if moment.tzinfo is None:
        problems["scheduledAt"] = "needs a UTC offset, e.g. 2030-01-31T02:00:00+01:00"
        return None
    return moment


def _lead_problems(moment: datetime) -> dict[str, str]:
    """Return the problem of a new request's time unless it lies in the future, within MAX_LEAD."""
    now = datetime.now(UTC)
    if moment <= now:
        return {"scheduledAt": "must be in the future"}
    if moment > now + MAX_LEAD:
        return {"scheduledAt": "must be within a year; use a recurring schedule"}
    return {}


@dataclass(frozen=True)
class _NewRequest:
    """A checked one-off request, ready to be written."""

    export_type: str
    options: ExportOptions
    body: dict[str, Any]
    priority: str
    scheduled_at: datetime


def _existing_for_key(
    conn: psycopg.Connection[Any], principal: Principal, key: str
) -> dict[str, Any] | None:
    """Return the user's request created with this Idempotency-Key, if any."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT r.*, e.id AS export_id FROM export_requests r"
            " LEFT JOIN data_exports e ON e.export_request_id = r.id"
            " WHERE r.user_id = %s AND r.idempotency_key = %s",
            (principal.user_id, key),
        )
        return cursor.fetchone()


def _insert(
    conn: psycopg.Connection[Any],
    principal: Principal,
    new: _NewRequest,
    origin: Origin,
    *,
    key: str | None,
    fingerprint: str | None,
) -> dict[str, Any]:
    """Write the request and its `schedule.request_created` audit entry; return the row."""
    options = new.options
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "INSERT INTO export_requests (user_id, export_type, format, compression, options,"
            " priority, scheduled_at, request_id, idempotency_key, idempotency_fingerprint)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *, NULL AS export_id",
            (
                principal.user_id, new.export_type, options.format, options.compression,
                Jsonb(stored_options(new.body.get("options"), options.compression)),
                new.priority, new.scheduled_at, origin.request_id, key, fingerprint,
            ),
        )  # fmt: skip
        row = cursor.fetchone()
    assert row is not None
    append_log(
        conn,
        event="schedule.request_created",
        message=f"{new.export_type} export scheduled for {new.scheduled_at.isoformat()}",
        actor_type=actor_type(principal),
        actor_id=str(principal.user_id),
        export_request_id=str(row["id"]),
        request_id=origin.request_id,
        client_ip=origin.client_ip,
        user_agent=origin.user_agent,
    )
    return row
