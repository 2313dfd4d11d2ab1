"""Scheduled exports: one-off requests at a time, recurring cron schedules, the internal trigger.

`/api/exports/schedule[/{id}]` creates, lists, shows and cancels one-off requests;
`/api/exports/schedules[/{id}[/pause|/resume]]` manages recurring schedules; each owner sees only
their own (anyone else's answers 404). Permissions and the rate limit are checked here at
creation and by the scheduler again when an export fires. `/api/exports/process-scheduled` runs
one claiming pass for an external cron and takes the internal credential, never a user token.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import falcon
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.auth import Principal
from api.database import Database
from api.payloads import check_params, int_param, read_json_object
from api.permissions import Action, actor_type, require
from api.problems import ProblemError, invalid_request
from api.queries import user_exists
from api.resources.common import origin_of, principal_of, send_json
from api.schedule_policy import authorize_scheduled_export, check_rate_limit
from api.submission import Limiter
from pipelines.jobs import append_log
from pipelines.options import InvalidOptionsError, parse_options
from pipelines.settings import Settings
from workers.scheduling.cron import CronError, parse_cron
from workers.scheduling.occurrences import next_after, zone_for
from workers.scheduling.process import PassRunner

SCHEDULE_PATH: Final = "/api/exports/schedule"
SCHEDULES_PATH: Final = "/api/exports/schedules"
EXPORT_TYPES: Final[dict[str, Literal["user", "bulk"]]] = {"user_data": "user", "bulk": "bulk"}
PRIORITIES: Final = ("low", "normal", "high")
# A one-off request at most a year ahead: further than that it is a schedule, not a request.
MAX_LEAD: Final = timedelta(days=366)
# Runs shown with a schedule: enough to see the last few weeks of a daily schedule.
RECENT_RUNS: Final = 20
PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200
ONE_OFF_FIELDS: Final = frozenset({"exportType", "format", "options", "scheduledAt", "priority"})
RECURRING_FIELDS: Final = frozenset(
    {"name", "exportType", "format", "options", "priority", "cron", "timezone", "templateId",
     "retention"}
)  # fmt: skip
NOT_FOUND: Final = "No scheduled export with this id."
# Schedule names are labels in lists and audit lines, not documents.
MAX_NAME_CHARS: Final = 200


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
        "scheduledAt": _time(row["scheduled_at"]),
        "status": row["status"],
        "statusReason": row["status_reason"],
        "exportId": str(export_id) if export_id else None,
        "createdAt": _time(row["created_at"]),
        "enqueuedAt": _time(row["enqueued_at"]),
        "cancelledAt": _time(row["cancelled_at"]),
        "links": {
            "self": f"{SCHEDULE_PATH}/{request_id}",
            "export": f"/api/exports/{export_id}/status" if export_id else None,
        },
    }


def schedule_document(
    row: Mapping[str, Any], runs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return the public view of one `export_schedules` row, with recent runs if given."""
    schedule_id = str(row["id"])
    document: dict[str, Any] = {
        "id": schedule_id,
        "name": row["name"],
        "exportType": "bulk" if row["export_type"] == "bulk" else "user_data",
        "format": row["format"],
        "compression": row["compression"],
        "options": row["options"],
        "priority": row["priority"],
        "cron": row["cron_expression"],
        "timezone": row["timezone"],
        "templateId": str(row["template_id"]) if row["template_id"] else None,
        "retention": {"keepLast": row["retention_keep_last"], "days": row["retention_days"]},
        "paused": row["paused"],
        "pausedAt": _time(row["paused_at"]),
        "nextRunAt": _time(row["next_run_at"]),
        "lastRunAt": _time(row["last_run_at"]),
        "createdAt": _time(row["created_at"]),
        "links": {"self": f"{SCHEDULES_PATH}/{schedule_id}"},
    }
    if runs is not None:
        document["runs"] = [
            {
                "occurrence": _time(run["occurrence_at"]),
                "status": run["status"],
                "reason": run["reason"],
                "exportId": str(run["export_id"]) if run["export_id"] else None,
            }
            for run in runs
        ]
    return document


def _uuid(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise ProblemError("not-found", NOT_FOUND) from exc


class _Creation:
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

    def authorize(
        self, conn: psycopg.Connection[Any], principal: Principal, options: Any, *, bulk: bool
    ) -> None:
        """Raise 403 or 429 unless the principal may schedule this export now."""
        if not user_exists(conn, principal.user_id):
            raise ProblemError("forbidden", "This account has no data to export.")
        grant = authorize_scheduled_export(conn, principal, options, bulk=bulk)
        check_rate_limit(self._limiter, principal, grant)


def _stored_options(body_options: Any, compression: str) -> dict[str, Any]:
    stored = dict(body_options) if isinstance(body_options, Mapping) else {}
    stored["compression"] = compression
    return stored


class ScheduleRequestsResource(_Creation):
    """POST a one-off export at a future time; GET the caller's requests."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a one-off scheduled export: 201 with the request."""
        principal = principal_of(req)
        body = read_json_object(req)
        problems = {name: "unknown field" for name in sorted(set(body) - ONE_OFF_FIELDS)}
        export_type, options, priority = self.checked(body, problems, None)
        require(principal, Action.BULK if export_type == "bulk" else Action.CREATE)
        scheduled_at = _scheduled_at(body.get("scheduledAt"), problems)
        if problems or options is None or scheduled_at is None:
            raise invalid_request(problems)
        origin = origin_of(req)
        with self._database.transaction() as conn:
            self.authorize(conn, principal, options, bulk=export_type == "bulk")
            with conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(
                    "INSERT INTO export_requests (user_id, export_type, format, compression,"
                    " options, priority, scheduled_at, request_id)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *, NULL AS export_id",
                    (
                        principal.user_id, export_type, options.format, options.compression,
                        Jsonb(_stored_options(body.get("options"), options.compression)),
                        priority, scheduled_at, origin.request_id,
                    ),
                )  # fmt: skip
                row = cursor.fetchone()
            assert row is not None
            append_log(
                conn,
                event="schedule.request_created",
                message=f"{export_type} export scheduled for {scheduled_at.isoformat()}",
                actor_type=actor_type(principal),
                actor_id=str(principal.user_id),
                export_request_id=str(row["id"]),
                request_id=origin.request_id,
                client_ip=origin.client_ip,
                user_agent=origin.user_agent,
            )
        document = request_document(row)
        resp.set_header("Location", document["links"]["self"])
        send_json(resp, {"request": document}, status=201)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List the caller's one-off requests, newest first."""
        principal = principal_of(req)
        require(principal, Action.READ)
        limit, offset = _page(req)
        with self._database.transaction() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                "SELECT r.*, e.id AS export_id, count(*) OVER () AS total FROM export_requests r"
                " LEFT JOIN data_exports e ON e.export_request_id = r.id WHERE r.user_id = %s"
                " ORDER BY r.created_at DESC, r.id DESC LIMIT %s OFFSET %s",
                (principal.user_id, limit, offset),
            )
            rows = cursor.fetchall()
        send_json(
            resp,
            {
                "requests": [request_document(row) for row in rows],
                "total": rows[0]["total"] if rows else 0,
                "limit": limit,
                "offset": offset,
            },
        )


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
                (_uuid(raw), principal.user_id),
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


class SchedulesResource(_Creation):
    """POST a recurring schedule; GET the caller's schedules."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create a recurring schedule: 201 with its first run time."""
        principal = principal_of(req)
        body = read_json_object(req)
        problems = {name: "unknown field" for name in sorted(set(body) - RECURRING_FIELDS)}
        with self._database.transaction() as conn:
            template = _template(conn, principal, body.get("templateId"), problems)
            export_type, options, priority = self.checked(body, problems, template)
            require(principal, Action.BULK if export_type == "bulk" else Action.CREATE)
            name = body.get("name")
            if (
                not isinstance(name, str)
                or not name.strip()
                or len(name) > MAX_NAME_CHARS
                or any(ord(char) < 0x20 or ord(char) == 0x7F for char in name)
            ):
                problems["name"] = f"is required: 1 to {MAX_NAME_CHARS} printable characters"
            cron, timezone = body.get("cron"), body.get("timezone", "UTC")
            first_run = _first_run(cron, timezone, problems)
            keep_last, days = _retention(body.get("retention"), problems)
            if problems or options is None or first_run is None:
                raise invalid_request(problems)
            self.authorize(conn, principal, options, bulk=export_type == "bulk")
            with conn.cursor(row_factory=dict_row) as cursor, _refused_by_schema():
                cursor.execute(
                    "INSERT INTO export_schedules (user_id, name, template_id, export_type,"
                    " format, compression, options, priority, cron_expression, timezone,"
                    " retention_keep_last, retention_days, next_run_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
                    (
                        principal.user_id, str(name).strip(),
                        template["id"] if template else None, export_type, options.format,
                        options.compression,
                        Jsonb(_stored_options(body.get("options", template and template["options"]),
                                              options.compression)),
                        priority, str(cron).strip(), timezone, keep_last, days, first_run,
                    ),
                )  # fmt: skip
                row = cursor.fetchone()
            assert row is not None
            _audit(conn, req, principal, row, "created")
        document = schedule_document(row, [])
        resp.set_header("Location", document["links"]["self"])
        send_json(resp, {"schedule": document}, status=201)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List the caller's schedules, newest first."""
        principal = principal_of(req)
        require(principal, Action.READ)
        limit, offset = _page(req)
        with self._database.transaction() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                "SELECT *, count(*) OVER () AS total FROM export_schedules WHERE user_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
                (principal.user_id, limit, offset),
            )
            rows = cursor.fetchall()
        send_json(
            resp,
            {
                "schedules": [schedule_document(row) for row in rows],
                "total": rows[0]["total"] if rows else 0,
                "limit": limit,
                "offset": offset,
            },
        )


@contextmanager
def _refused_by_schema() -> Iterator[None]:
    """Turn a schema CHECK the checks above let through (a zone PostgreSQL lacks) into a 400."""
    try:
        yield
    except psycopg.errors.CheckViolation as exc:
        constraint = exc.diag.constraint_name or ""
        field = "timezone" if "timezone" in constraint else "cron" if "cron" in constraint else ""
        raise invalid_request({field: "is not accepted by the database"}) from exc


def _own_schedule(
    conn: psycopg.Connection[Any], principal: Principal, raw: str, *, lock: bool = False
) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT * FROM export_schedules WHERE id = %s AND user_id = %s"
            + (" FOR NO KEY UPDATE" if lock else ""),
            (_uuid(raw), principal.user_id),
        )
        row = cursor.fetchone()
    if row is None:
        raise ProblemError("not-found", NOT_FOUND)
    return row


class ScheduleResource:
    """GET (with recent runs) or DELETE one of the caller's schedules."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def on_get(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        """Answer the schedule with its latest runs, or 404."""
        principal = principal_of(req)
        require(principal, Action.READ)
        with self._database.transaction() as conn:
            row = _own_schedule(conn, principal, schedule_id)
            with conn.cursor(row_factory=dict_row) as cursor:
                cursor.execute(
                    "SELECT * FROM export_schedule_runs WHERE schedule_id = %s"
                    " ORDER BY occurrence_at DESC LIMIT %s",
                    (row["id"], RECENT_RUNS),
                )
                runs = cursor.fetchall()
        send_json(resp, {"schedule": schedule_document(row, runs)})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        """Delete the schedule (its exports stay): 204."""
        principal = principal_of(req)
        require(principal, Action.CREATE)
        with self._database.transaction() as conn:
            row = _own_schedule(conn, principal, schedule_id, lock=True)
            _audit(conn, req, principal, row, "deleted")
            conn.execute("DELETE FROM export_schedules WHERE id = %s", (row["id"],))
        resp.status = 204


class ScheduleStateResource:
    """POST pause or resume of one of the caller's schedules."""

    def __init__(self, database: Database, *, paused: bool) -> None:
        self._database = database
        self._paused = paused

    def on_post(self, req: falcon.Request, resp: falcon.Response, schedule_id: str) -> None:
        """Pause, or resume from the next occurrence after now (missed runs are not made up)."""
        principal = principal_of(req)
        require(principal, Action.CREATE)
        if read_json_object(req):
            raise invalid_request({"": "this request takes no body (or an empty object)"})
        with self._database.transaction() as conn:
            row = _own_schedule(conn, principal, schedule_id, lock=True)
            if row["paused"] != self._paused:
                next_run = row["next_run_at"]
                if not self._paused:
                    spec, zone = parse_cron(row["cron_expression"]), zone_for(row["timezone"])
                    next_run = next_after(spec, zone, datetime.now(UTC))
                with conn.cursor(row_factory=dict_row) as cursor:
                    cursor.execute(
                        "UPDATE export_schedules SET paused = %s,"
                        " paused_at = CASE WHEN %s THEN now() END, next_run_at = %s,"
                        " updated_at = now() WHERE id = %s RETURNING *",
                        (self._paused, self._paused, next_run, row["id"]),
                    )
                    row = cursor.fetchone()
                assert row is not None
                _audit(conn, req, principal, row, "paused" if self._paused else "resumed")
        send_json(resp, {"schedule": schedule_document(row)})


class ProcessScheduledResource:
    """POST one claiming pass (internal credential only), answering what it enqueued."""

    internal_auth = True

    def __init__(self, scheduler: PassRunner | None) -> None:
        self._scheduler = scheduler

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Run a pass now and answer 200 with every item it fired."""
        if read_json_object(req):
            raise invalid_request({"": "this request takes no body (or an empty object)"})
        if self._scheduler is None:
            raise ProblemError("service-unavailable", "Scheduling is not configured here.")
        report = self._scheduler.run_pass()
        send_json(
            resp,
            {
                "now": report.now.isoformat(),
                "enqueued": len(report.enqueued()),
                "fired": [item.as_json() for item in report.fired],
                "maintenanceEnqueued": report.maintenance_enqueued,
            },
        )


def _audit(
    conn: psycopg.Connection[Any],
    req: falcon.Request,
    principal: Principal,
    row: Mapping[str, Any],
    what: str,
) -> None:
    origin = origin_of(req)
    append_log(
        conn,
        event=f"schedule.{what}",
        message=f"schedule {row['name']!r} ({row['cron_expression']}, {row['timezone']}) {what}",
        actor_type=actor_type(principal),
        actor_id=str(principal.user_id),
        schedule_id=str(row["id"]),
        request_id=origin.request_id,
        client_ip=origin.client_ip,
        user_agent=origin.user_agent,
    )


def _page(req: falcon.Request) -> tuple[int, int]:
    params = check_params(req, frozenset({"limit", "offset"}))
    problems: dict[str, str] = {}
    limit = int_param(params, "limit", default=PAGE_SIZE, low=1, high=MAX_PAGE_SIZE,
                      problems=problems)  # fmt: skip
    offset = int_param(params, "offset", default=0, low=0, high=100_000, problems=problems)
    if problems:
        raise invalid_request(problems)
    return limit, offset


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
    now = datetime.now(UTC)
    if moment <= now:
        problems["scheduledAt"] = "must be in the future"
    elif moment > now + MAX_LEAD:
        problems["scheduledAt"] = "must be within a year; use a recurring schedule"
    return moment


def _first_run(cron: object, timezone: object, problems: dict[str, str]) -> datetime | None:
    if not isinstance(cron, str):
        problems["cron"] = "is required: five cron fields or a macro such as @daily"
        return None
    if not isinstance(timezone, str):
        problems["timezone"] = "must be an IANA time zone name"
        return None
    try:
        spec = parse_cron(cron)
    except CronError as exc:
        problems["cron"] = str(exc)
        return None
    try:
        return next_after(spec, zone_for(timezone), datetime.now(UTC))
    except CronError as exc:
        problems["timezone" if "zone" in str(exc) else "cron"] = str(exc)
        return None


def _retention(value: object, problems: dict[str, str]) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    if not isinstance(value, Mapping) or set(value) - {"keepLast", "days"}:
        problems["retention"] = "must be an object with keepLast and/or days"
        return None, None
    result: list[int | None] = []
    for name in ("keepLast", "days"):
        number = value.get(name)
        ok = number is None or (type(number) is int and 0 < number <= 100_000)
        if not ok:
            problems[f"retention.{name}"] = "must be a whole number from 1 to 100000"
        result.append(number if ok else None)
    return result[0], result[1]


def _template(
    conn: psycopg.Connection[Any], principal: Principal, raw: object, problems: dict[str, str]
) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        template_id = uuid.UUID(str(raw)) if isinstance(raw, str) else None
    except ValueError:
        template_id = None
    row = None
    if template_id is not None:
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                "SELECT * FROM export_templates WHERE id = %s"
                " AND (owner_id IS NULL OR owner_id = %s)",
                (template_id, principal.user_id),
            )
            row = cursor.fetchone()
    if row is None:
        problems["templateId"] = "no such template (yours or a system-wide one)"
    return row
