"""Recurring export schedules: `/api/exports/schedules[/{id}[/pause|/resume]]`.

Creates, lists, shows (with recent runs), deletes, pauses and resumes cron schedules; each owner
sees only their own (anyone else's answers 404). Permissions and the rate limit are checked here at
creation and by the scheduler again when an export fires. One-off requests live in
`api.resources.schedule_requests`, the internal trigger in `api.resources.scheduler_trigger`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import falcon
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from api.auth import Principal
from api.database import Database
from api.payloads import read_json_object
from api.permissions import Action, actor_type, require
from api.problems import ProblemError, invalid_request
from api.resources.common import origin_of, principal_of, send_json, send_page
from api.resources.schedule_shared import (
    NOT_FOUND,
    ExportCreation,
    iso_time,
    page_params,
    parse_id,
    stored_options,
)
from api.schedule_policy import SCHEDULES_HELD
from pipelines.jobs import append_log
from workers.scheduling.cron import CronError, parse_cron
from workers.scheduling.occurrences import (
    ZoneError,
    check_recurrence,
    checked_zone,
    next_after,
    zone_for,
)

SCHEDULES_PATH: Final = "/api/exports/schedules"
# Runs shown with a schedule: enough to see the last few weeks of a daily schedule.
RECENT_RUNS: Final = 20
RECURRING_FIELDS: Final = frozenset(
    {"name", "exportType", "format", "options", "priority", "cron", "timezone", "templateId",
     "retention"}
)  # fmt: skip
# Schedule names are labels in lists and audit lines, not documents.
MAX_NAME_CHARS: Final = 200


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
        "pausedAt": iso_time(row["paused_at"]),
        "nextRunAt": iso_time(row["next_run_at"]),
        "lastRunAt": iso_time(row["last_run_at"]),
        "createdAt": iso_time(row["created_at"]),
        "links": {"self": f"{SCHEDULES_PATH}/{schedule_id}"},
    }
    if runs is not None:
        document["runs"] = [
            {
                "occurrence": iso_time(run["occurrence_at"]),
                "status": run["status"],
                "reason": run["reason"],
                "exportId": str(run["export_id"]) if run["export_id"] else None,
            }
            for run in runs
        ]
    return document


class SchedulesResource(ExportCreation):
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
            self.authorize(
                conn, principal, options, bulk=export_type == "bulk", held=SCHEDULES_HELD
            )
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
                        Jsonb(stored_options(body.get("options", template and template["options"]),
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
        limit, offset = page_params(req)
        with self._database.transaction() as conn, conn.cursor(row_factory=dict_row) as cursor:
            # Counted on its own: a window count has no row to ride on past the last page.
            cursor.execute(
                "SELECT count(*) AS total FROM export_schedules WHERE user_id = %s",
                (principal.user_id,),
            )
            counted = cursor.fetchone()
            cursor.execute(
                "SELECT * FROM export_schedules WHERE user_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
                (principal.user_id, limit, offset),
            )
            rows = cursor.fetchall()
        documents = [schedule_document(row) for row in rows]
        total = int(counted["total"]) if counted else 0
        send_page(resp, "schedules", documents, total=total, limit=limit, offset=offset)


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
            (parse_id(raw), principal.user_id),
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


def _first_run(cron: object, timezone: object, problems: dict[str, str]) -> datetime | None:
    zone = None
    if not isinstance(timezone, str):
        problems["timezone"] = "must be an IANA time zone name"
    else:
        try:
            zone = checked_zone(timezone)
        except ZoneError as exc:
            problems["timezone"] = str(exc)
    if not isinstance(cron, str):
        problems["cron"] = "is required: five cron fields or a macro such as @daily"
        return None
    try:
        spec = parse_cron(cron)
        # The scheduler looks for each run's successor within a window (see occurrences): an
        # expression that fires too rarely would stop after a run.
        check_recurrence(spec)
        if zone is None:
            return None
        first = next_after(spec, zone, datetime.now(UTC))
        next_after(spec, zone, first)
    except CronError as exc:
        problems["cron"] = str(exc)
        return None
    return first


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
