"""The OpenAPI 3.1 description of the API, built from the same tables the code uses.

Formats, statuses, compressions, page sizes and problem types come from the modules that
enforce them, so the document cannot drift from the code on those. Every operation lists every
response it can give; every error is `application/problem+json`.
"""

from __future__ import annotations

from typing import Any

from api.middleware import MAX_BODY_BYTES
from api.openapi_scheduling import scheduling_paths, scheduling_schemas
from api.payloads import IDEMPOTENCY_HEADER
from api.problems import PROBLEM_BASE_URI, PROBLEM_CONTENT_TYPE
from api.queries import DEFAULT_PAGE_SIZE, EXPORT_STATUSES, MAX_OFFSET, MAX_PAGE_SIZE
from pipelines.options import COMPRESSIONS, FORMATS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _problem(description: str, *, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json(description: str, schema: Schema, *, headers: Schema | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


_INT_HEADER: Schema = {"schema": {"type": "integer", "minimum": 0}}
RATE_LIMIT_HEADERS: Schema = {
    "RateLimit-Limit": {**_INT_HEADER, "description": "Accepted exports allowed per window."},
    "RateLimit-Remaining": {**_INT_HEADER, "description": "Exports left in the window."},
    "RateLimit-Reset": {**_INT_HEADER, "description": "Seconds until a slot frees up."},
}
RETRY_AFTER: Schema = {"Retry-After": {**_INT_HEADER, "description": "Seconds to wait."}}
LOCATION: Schema = {
    "Location": {"schema": {"type": "string"}, "description": "The export's status URL."}
}
WWW_AUTHENTICATE: Schema = {
    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "A Bearer challenge."}
}

# gunicorn answers this itself, as HTML, before the app sees the request.
URI_TOO_LONG: Schema = {
    "description": "The request line is longer than the server accepts (answered by gunicorn).",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
# Errors any authenticated operation can answer.
COMMON_ERRORS: Schema = {
    "414": URI_TOO_LONG,
    "401": _problem("Missing or invalid bearer token.", headers=WWW_AUTHENTICATE),
    "405": _problem("The method is not allowed on this resource."),
    "500": _problem("Unexpected error; nothing internal is revealed."),
    "503": _problem("The database, Redis or the broker is unavailable.", headers=RETRY_AFTER),
}
BODY_ERRORS: Schema = {
    "411": _problem("A body was sent without Content-Length."),
    "413": _problem(f"The body is larger than {MAX_BODY_BYTES} bytes."),
    "415": _problem("The body is not application/json."),
}


def _schemas() -> Schema:
    timestamp = {"type": "string", "format": "date-time"}
    opt_time = _nullable(timestamp)
    opt_int = _nullable({"type": "integer", "minimum": 0})
    day_or_instant = {
        "description": "YYYY-MM-DD (a whole UTC day) or an ISO 8601 date-time with offset.",
        "anyOf": [
            {"type": "string", "format": "date"},
            {"type": "string", "format": "date-time"},
            {"type": "null"},
        ],
    }
    export_properties: Schema = {
        "id": {"type": "string", "format": "uuid"},
        "type": {"type": "string", "enum": ["user", "bulk"]},
        "userId": {"type": "string", "format": "uuid"},
        "status": {"type": "string", "enum": list(EXPORT_STATUSES)},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
        "format": {"type": "string", "enum": list(FORMATS)},
        "compression": {"type": "string", "enum": list(COMPRESSIONS)},
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
        "options": {"type": "object", "description": "The options as recorded."},
        "createdAt": timestamp,
        "startedAt": opt_time,
        "finishedAt": opt_time,
        "expiresAt": opt_time,
        "sizeBytes": opt_int,
        "contentSizeBytes": opt_int,
        "recordCount": opt_int,
        "userCount": opt_int,
        "fileCount": opt_int,
        "sha256": _nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "contentSha256": _nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "compressionRatio": _nullable({"type": "number"}),
        "error": _nullable(
            {
                "type": "object",
                "properties": {
                    "code": _nullable({"type": "string"}),
                    "message": _nullable({"type": "string"}),
                },
                "required": ["code", "message"],
            }
        ),
        "verification": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["pending", "passed", "failed", "skipped"]},
                "verifiedAt": opt_time,
                "report": _nullable({"type": "object"}),
            },
            "required": ["status", "verifiedAt"],
        },
        "links": {
            "type": "object",
            "properties": {"status": {"type": "string"}, "download": {"type": "string"}},
            "required": ["status", "download"],
        },
    }
    export: Schema = {
        "type": "object",
        "properties": export_properties,
        "required": sorted(export_properties),
    }
    log_entry: Schema = {
        "type": "object",
        "properties": {
            "at": timestamp,
            "event": {"type": "string"},
            "level": {"type": "string", "enum": ["debug", "info", "warning", "error"]},
            "message": {"type": "string"},
            "actorType": {
                "type": "string",
                "enum": ["user", "admin", "worker", "scheduler", "system"],
            },
        },
        "required": ["at", "event", "level", "message", "actorType"],
    }
    options: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "includeMetadata": {"type": "boolean", "default": True},
            "includeSystemFields": {
                "type": "boolean",
                "default": False,
                "description": "Administrators with that right only.",
            },
            "compression": {
                "description": "A compression, true for the configured default, false for none.",
                "anyOf": [
                    {"type": "string", "enum": list(COMPRESSIONS)},
                    {"type": "boolean"},
                    {"type": "null"},
                ],
            },
            "dateRange": {
                "description": "Files created from start to end, both inclusive; end after start.",
                "anyOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "properties": {"start": day_or_instant, "end": day_or_instant},
                    },
                    {"type": "null"},
                ],
            },
        },
    }
    number = {"type": "integer", "minimum": 0}
    opt_number = _nullable({"type": "number"})
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "properties": {
                "type": {"type": "string", "description": f"{PROBLEM_BASE_URI}<slug>"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 100, "maximum": 599},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
                "requestId": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "detail": {"type": "string"}},
                        "required": ["field", "detail"],
                    },
                },
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["type", "title", "status", "detail", "instance"],
        },
        "ExportRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["format"],
            "properties": {
                "format": {"type": "string", "enum": list(FORMATS)},
                "options": {"anyOf": [options, {"type": "null"}]},
            },
        },
        "Export": export,
        "ExportStatus": {
            "allOf": [
                export,
                {
                    "type": "object",
                    "properties": {"logs": {"type": "array", "items": log_entry}},
                    "required": ["logs"],
                },
            ]
        },
        "ExportEnvelope": {
            "type": "object",
            "properties": {"export": _ref("Export")},
            "required": ["export"],
        },
        "ExportStatusEnvelope": {
            "type": "object",
            "properties": {"export": _ref("ExportStatus")},
            "required": ["export"],
        },
        "ExportList": {
            "type": "object",
            "properties": {
                "exports": {"type": "array", "items": _ref("Export")},
                "total": number,
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                "offset": number,
            },
            "required": ["exports", "total", "limit", "offset"],
        },
        "UserStats": {
            "type": "object",
            "properties": {
                "totalExports": number,
                "completedExports": number,
                "failedExports": number,
                "activeExports": number,
                "verifiedExports": number,
                "completedSizeBytes": number,
                "lastExportAt": opt_time,
                "lastCompletedAt": opt_time,
            },
            "required": [
                "totalExports",
                "completedExports",
                "failedExports",
                "activeExports",
                "verifiedExports",
                "completedSizeBytes",
                "lastExportAt",
                "lastCompletedAt",
            ],
        },
        "SystemStats": {
            "type": "object",
            "properties": {
                "summary": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "format": {"type": "string"},
                            "status": {"type": "string"},
                            "exportCount": number,
                            "totalSizeBytes": number,
                            "totalContentSizeBytes": number,
                            "totalRecords": number,
                            "avgCompressionRatio": opt_number,
                            "avgDurationSeconds": opt_number,
                            "firstCreatedAt": opt_time,
                            "lastCreatedAt": opt_time,
                        },
                    },
                },
                "health": {"type": "object", "additionalProperties": opt_number},
            },
            "required": ["summary", "health"],
        },
        "Stats": {
            "type": "object",
            "properties": {"user": _ref("UserStats"), "system": _ref("SystemStats")},
            "required": ["user"],
        },
        "Cleanup": {
            "type": "object",
            "properties": {
                "cleanup": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "queued"},
                        "requestId": _nullable({"type": "string"}),
                    },
                    "required": ["status"],
                }
            },
            "required": ["cleanup"],
        },
        "Health": {
            "type": "object",
            "properties": {"status": {"const": "ok"}},
            "required": ["status"],
        },
        "Ready": {
            "type": "object",
            "properties": {
                "status": {"const": "ready"},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["status", "checks"],
        },
    }


def _export_id() -> Schema:
    return {
        "name": "exportId",
        "in": "path",
        "required": True,
        "description": "The export's id; someone else's export answers 404 like a missing one.",
        "schema": {"type": "string", "format": "uuid"},
    }


def _idempotency() -> Schema:
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": "Retrying with the same key and body returns the same export (200).",
        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    }


def _create(summary: str, *, admin: bool) -> Schema:
    responses: Schema = {
        "200": _json(
            "An idempotent retry: the export created by the first request.",
            _ref("ExportEnvelope"),
            headers={**LOCATION, "Idempotent-Replayed": {"schema": {"const": "true"}}},
        ),
        "202": _json(
            "Accepted and queued.",
            _ref("ExportEnvelope"),
            headers={**LOCATION, **RATE_LIMIT_HEADERS},
        ),
        "400": _problem("Invalid body or header; `errors` names each bad field."),
        "403": _problem(
            "Not allowed: "
            + ("not an administrator, or " if admin else "")
            + "a permission, format or system-field restriction."
        ),
        "422": _problem("The Idempotency-Key was used with a different body."),
        "429": _problem(
            "The hourly limit of accepted exports is reached.",
            headers={**RATE_LIMIT_HEADERS, **RETRY_AFTER},
        ),
        **BODY_ERRORS,
        **COMMON_ERRORS,
    }
    return {
        "summary": summary,
        "parameters": [_idempotency()],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("ExportRequest")}},
        },
        "responses": responses,
    }


def _empty_body() -> Schema:
    return {
        "required": False,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": False}}
        },
    }


def _paths() -> Schema:
    not_found = _problem("No such export (or not yours).")
    return {
        "/api/exports/user": {"post": _create("Export the caller's own data.", admin=False)},
        "/api/exports/bulk": {
            "post": _create("Export the whole system (administrators).", admin=True)
        },
        "/api/exports": {
            "get": {
                "summary": "List the caller's exports, newest first.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(EXPORT_STATUSES)},
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(FORMATS)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE_SIZE,
                            "default": DEFAULT_PAGE_SIZE,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_OFFSET,
                            "default": 0,
                        },
                    },
                ],
                "responses": {
                    "200": _json("One page of exports and the total.", _ref("ExportList")),
                    "400": _problem("A bad query parameter, named in `errors`."),
                    "403": _problem("The token lacks the exports:read scope."),
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/{exportId}/status": {
            "get": {
                "summary": "An export's metadata, progress, verification and audit entries.",
                "parameters": [_export_id()],
                "responses": {
                    "200": _json("The export.", _ref("ExportStatusEnvelope")),
                    "403": _problem("The token lacks the exports:read scope."),
                    "404": not_found,
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/{exportId}/download": {
            "get": {
                "summary": "Download a completed export (audited).",
                "parameters": [_export_id()],
                "responses": {
                    "200": {
                        "description": "The export's bytes, streamed (presigning off).",
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            }
                        },
                    },
                    "302": {
                        "description": "Redirect to a short-lived presigned URL.",
                        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
                    },
                    "403": _problem("The token lacks the exports:read scope."),
                    "404": not_found,
                    "409": _problem("The export is not completed."),
                    "410": _problem("The export has expired and its data is deleted."),
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/{exportId}/verify": {
            "post": {
                "summary": "Verify a completed export again.",
                "parameters": [_export_id()],
                "requestBody": _empty_body(),
                "responses": {
                    "202": _json("Verification queued.", _ref("ExportEnvelope"), headers=LOCATION),
                    "400": _problem("A body with fields was sent."),
                    "403": _problem("The token lacks the exports:write scope."),
                    "404": not_found,
                    "409": _problem("The export is not completed."),
                    "410": _problem("The export has expired."),
                    **BODY_ERRORS,
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/cleanup": {
            "post": {
                "summary": "Run cleanup now (administrators).",
                "requestBody": _empty_body(),
                "responses": {
                    "202": _json("Cleanup queued.", _ref("Cleanup")),
                    "400": _problem("A body with fields was sent."),
                    "403": _problem("Not an administrator."),
                    **BODY_ERRORS,
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/stats": {
            "get": {
                "summary": "The caller's statistics; system statistics for administrators.",
                "parameters": [
                    {
                        "name": "include_system",
                        "in": "query",
                        "schema": {"type": "boolean", "default": False},
                    }
                ],
                "responses": {
                    "200": _json("Statistics.", _ref("Stats")),
                    "400": _problem("A bad query parameter."),
                    "403": _problem("System statistics are for administrators."),
                    **COMMON_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive.",
                "security": [],
                "responses": {
                    "200": _json("Alive.", _ref("Health")),
                    "405": COMMON_ERRORS["405"],
                    "414": URI_TOO_LONG,
                    "500": COMMON_ERRORS["500"],
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and the broker answer.",
                "security": [],
                "responses": {
                    "200": _json("Ready.", _ref("Ready")),
                    "405": COMMON_ERRORS["405"],
                    "414": URI_TOO_LONG,
                    "500": COMMON_ERRORS["500"],
                    "503": _problem("Not ready; `checks` names each service.", headers=RETRY_AFTER),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "405": COMMON_ERRORS["405"],
                    "414": URI_TOO_LONG,
                    "500": COMMON_ERRORS["500"],
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": _json("The OpenAPI document.", {"type": "object"}),
                    "405": COMMON_ERRORS["405"],
                    "414": URI_TOO_LONG,
                    "500": COMMON_ERRORS["500"],
                },
            }
        },
    }


def build_spec(*, server_url: str | None = None) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of the API."""
    spec: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Data Export API",
            "version": API_VERSION,
            "description": (
                "Request, follow, verify and download verified, restorable data exports. "
                "Errors are RFC 9457 problem details with a stable `type` URI."
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            **_paths(),
            **scheduling_paths(
                json=_json,
                problem=_problem,
                common=COMMON_ERRORS,
                body_errors=BODY_ERRORS,
                rate_headers={**RATE_LIMIT_HEADERS, **RETRY_AFTER},
            ),
        },
        "components": {
            "schemas": {**_schemas(), **scheduling_schemas()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "internal": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "INTERNAL_API_TOKEN, for other processes; user tokens fail.",
                },
            },
        },
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec
