"""The scheduling part of the OpenAPI document: one-off requests, schedules, the internal trigger.

Kept beside `api.openapi` (which merges it in) so that module stays about exports; it uses the
same helpers, so responses and problem types are described the same way.
"""

from __future__ import annotations

from typing import Any

from api.payloads import IDEMPOTENCY_HEADER
from api.resources.exports import REPLAYED_HEADER
from api.resources.schedule_shared import MAX_PAGE_SIZE, PRIORITIES
from api.schedule_policy import (
    MAX_PENDING_REQUESTS_PER_ADMIN,
    MAX_PENDING_REQUESTS_PER_USER,
    MAX_SCHEDULES_PER_ADMIN,
    MAX_SCHEDULES_PER_USER,
)
from pipelines.options import COMPRESSIONS, FORMATS
from workers.scheduling.occurrences import MAX_GAP_DAYS

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def scheduling_schemas() -> Schema:
    """Return the component schemas of the scheduling endpoints."""
    timestamp = {"type": "string", "format": "date-time"}
    opt_time = _nullable(timestamp)
    uuid_ = {"type": "string", "format": "uuid"}
    export_type = {"type": "string", "enum": ["user_data", "bulk"], "default": "user_data"}
    priority = {"type": "string", "enum": list(PRIORITIES), "default": "normal"}
    options = {"type": "object", "description": "Export options, as for POST /api/exports/user."}
    common = {
        "exportType": export_type,
        "format": {"type": "string", "enum": list(FORMATS)},
        "compression": {"type": "string", "enum": list(COMPRESSIONS)},
        "options": {"type": "object"},
        "priority": priority,
        "createdAt": timestamp,
    }
    page = {
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "total": {"type": "integer"},
    }
    return {
        "ScheduleRequestBody": {
            "type": "object",
            "properties": {
                "exportType": export_type,
                "format": {"type": "string", "enum": list(FORMATS)},
                "scheduledAt": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When to export: in the future, within a year, with offset.",
                },
                "options": options,
                "priority": priority,
            },
            "required": ["format", "scheduledAt"],
            "additionalProperties": False,
        },
        "ScheduledRequest": {
            "type": "object",
            "properties": {
                "id": uuid_,
                **common,
                "scheduledAt": timestamp,
                "status": {
                    "type": "string",
                    "enum": ["pending", "enqueued", "cancelled", "skipped", "failed"],
                },
                "statusReason": _nullable({"type": "string"}),
                "exportId": _nullable(uuid_),
                "enqueuedAt": opt_time,
                "cancelledAt": opt_time,
                "links": {"type": "object"},
            },
            "required": ["id", "status", "scheduledAt", "exportId"],
        },
        "ScheduledRequestEnvelope": {
            "type": "object",
            "properties": {"request": _ref("ScheduledRequest")},
            "required": ["request"],
        },
        "ScheduledRequestList": {
            "type": "object",
            "properties": {
                "requests": {"type": "array", "items": _ref("ScheduledRequest")},
                **page,
            },
            "required": ["requests", "total", "limit", "offset"],
        },
        "ScheduleBody": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "cron": {
                    "type": "string",
                    "description": "Five cron fields or @yearly/@monthly/@weekly/@daily/@hourly,"
                    f" in ASCII; it must fire at least once every {MAX_GAP_DAYS} days.",
                },
                "timezone": {
                    "type": "string",
                    "default": "UTC",
                    "description": "IANA zone name such as Europe/Berlin (not `localtime`,"
                    " `Factory`, `posix/...` or `right/...`).",
                },
                "templateId": uuid_,
                "exportType": export_type,
                "format": {"type": "string", "enum": list(FORMATS)},
                "options": options,
                "priority": priority,
                "retention": {
                    "type": "object",
                    "properties": {
                        "keepLast": {"type": "integer", "minimum": 1, "maximum": 100000},
                        "days": {"type": "integer", "minimum": 1, "maximum": 100000},
                    },
                    "additionalProperties": False,
                },
            },
            "required": ["name", "cron"],
            "additionalProperties": False,
        },
        "Schedule": {
            "type": "object",
            "properties": {
                "id": uuid_,
                "name": {"type": "string"},
                **common,
                "cron": {"type": "string"},
                "timezone": {"type": "string"},
                "templateId": _nullable(uuid_),
                "retention": {"type": "object"},
                "paused": {"type": "boolean"},
                "pausedAt": opt_time,
                "nextRunAt": opt_time,
                "lastRunAt": opt_time,
                "links": {"type": "object"},
                "runs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "occurrence": timestamp,
                            "status": {"type": "string", "enum": ["enqueued", "skipped", "failed"]},
                            "reason": _nullable({"type": "string"}),
                            "exportId": _nullable(uuid_),
                        },
                    },
                },
            },
            "required": ["id", "name", "cron", "timezone", "paused", "nextRunAt"],
        },
        "ScheduleEnvelope": {
            "type": "object",
            "properties": {"schedule": _ref("Schedule")},
            "required": ["schedule"],
        },
        "ScheduleList": {
            "type": "object",
            "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}, **page},
            "required": ["schedules", "total", "limit", "offset"],
        },
        "SchedulingPass": {
            "type": "object",
            "properties": {
                "now": timestamp,
                "enqueued": {"type": "integer", "minimum": 0},
                "maintenanceEnqueued": {"type": "boolean"},
                "fired": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "kind": {"type": "string", "enum": ["request", "schedule"]},
                            "id": uuid_,
                            "status": {"type": "string", "enum": ["enqueued", "skipped", "failed"]},
                            "exportId": _nullable(uuid_),
                            "occurrence": opt_time,
                            "reason": _nullable({"type": "string"}),
                            "missedOccurrences": {"type": "integer", "minimum": 0},
                            "resent": {"type": "boolean"},
                        },
                    },
                },
            },
            "required": ["now", "enqueued", "fired", "maintenanceEnqueued"],
        },
    }


def scheduling_paths(
    *, json: Any, problem: Any, common: Schema, body_errors: Schema, rate_headers: Schema
) -> Schema:
    """Return the scheduling paths, built with `api.openapi`'s response helpers."""
    not_found = problem("No such scheduled export (or not yours).")
    location = {"Location": {"schema": {"type": "string"}, "description": "The new resource."}}
    paging = [
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}},
        {"name": "offset", "in": "query",
         "schema": {"type": "integer", "minimum": 0, "maximum": 100000}},
    ]  # fmt: skip

    def ident(name: str) -> Schema:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    def create(summary: str, body: str, answer: str, *, held: str, idempotent: bool) -> Schema:
        operation: Schema = {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": {
                "201": json("Created.", _ref(answer), headers=location),
                "400": problem("Invalid body; `errors` names each bad field."),
                "403": problem("Not allowed: role, permissions (scheduling, format, bulk); bulk"
                               " and system fields need an administrator token and account."),
                "409": problem(f"The caller already has as many {held} as allowed (`conflict`,"
                               " with the number in `limit`)."),
                "429": problem("The hourly limit of accepted exports is reached.",
                               headers=rate_headers),
                **body_errors,
                **common,
            },
        }  # fmt: skip
        if idempotent:
            operation["parameters"] = [
                {
                    "name": IDEMPOTENCY_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Retrying with the same key and body returns the same"
                    " request (200).",
                    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                }
            ]
            operation["responses"]["200"] = json(
                "An idempotent retry: the request created by the first attempt.",
                _ref(answer),
                headers={**location, REPLAYED_HEADER: {"schema": {"const": "true"}}},
            )
            operation["responses"]["422"] = problem(
                "The Idempotency-Key was used with a different body."
            )
        return operation

    def state(summary: str) -> Schema:
        return {
            "summary": summary,
            "parameters": [ident("scheduleId")],
            "requestBody": {
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "additionalProperties": False}
                    }
                },
            },
            "responses": {
                "200": json("The schedule.", _ref("ScheduleEnvelope")),
                "400": problem("A body with fields was sent."),
                "403": problem("The token may not change schedules."),
                "404": not_found,
                **body_errors,
                **common,
            },
        }

    listing = {"400": problem("A bad query parameter."), "403": problem("No read scope."), **common}
    return {
        "/api/exports/schedule": {
            "post": create(
                "Schedule a one-off export at a future time.",
                "ScheduleRequestBody",
                "ScheduledRequestEnvelope",
                held=f"pending one-off requests ({MAX_PENDING_REQUESTS_PER_USER}; administrators"
                f" {MAX_PENDING_REQUESTS_PER_ADMIN})",
                idempotent=True,
            ),
            "get": {
                "summary": "List the caller's one-off scheduled exports, newest first.",
                "parameters": paging,
                "responses": {"200": json("A page.", _ref("ScheduledRequestList")), **listing},
            },
        },
        "/api/exports/schedule/{requestId}": {
            "get": {
                "summary": "One of the caller's scheduled exports.",
                "parameters": [ident("requestId")],
                "responses": {
                    "200": json("The request.", _ref("ScheduledRequestEnvelope")),
                    "403": problem("No read scope."),
                    "404": not_found,
                    **common,
                },
            },
            "delete": {
                "summary": "Cancel a scheduled export that has not fired yet.",
                "parameters": [ident("requestId")],
                "responses": {
                    "200": json("Cancelled.", _ref("ScheduledRequestEnvelope")),
                    "403": problem("The token may not change scheduled exports."),
                    "404": not_found,
                    "409": problem("It already fired, or was cancelled or skipped."),
                    **common,
                },
            },
        },
        "/api/exports/schedules": {
            "post": create(
                "Create a recurring export (cron expression in an IANA time zone).",
                "ScheduleBody",
                "ScheduleEnvelope",
                held=f"schedules ({MAX_SCHEDULES_PER_USER}; administrators"
                f" {MAX_SCHEDULES_PER_ADMIN})",
                idempotent=False,
            ),
            "get": {
                "summary": "List the caller's recurring schedules, newest first.",
                "parameters": paging,
                "responses": {"200": json("A page.", _ref("ScheduleList")), **listing},
            },
        },
        "/api/exports/schedules/{scheduleId}": {
            "get": {
                "summary": "One of the caller's schedules, with its latest runs.",
                "parameters": [ident("scheduleId")],
                "responses": {
                    "200": json("The schedule.", _ref("ScheduleEnvelope")),
                    "403": problem("No read scope."),
                    "404": not_found,
                    **common,
                },
            },
            "delete": {
                "summary": "Delete a schedule (its exports stay until they expire).",
                "parameters": [ident("scheduleId")],
                "responses": {
                    "204": {"description": "Deleted."},
                    "403": problem("The token may not change schedules."),
                    "404": not_found,
                    **common,
                },
            },
        },
        "/api/exports/schedules/{scheduleId}/pause": {"post": state("Pause a schedule.")},
        "/api/exports/schedules/{scheduleId}/resume": {
            "post": state("Resume a schedule from its next occurrence after now.")
        },
        "/api/exports/process-scheduled": {
            "post": {
                "summary": "Run one scheduling pass (for an external cron; internal credential).",
                "security": [{"internal": []}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "additionalProperties": False}
                        }
                    },
                },
                "responses": {
                    "200": json("What the pass fired.", _ref("SchedulingPass")),
                    "400": problem("A body with fields was sent."),
                    **body_errors,
                    **common,
                },
            }
        },
    }
