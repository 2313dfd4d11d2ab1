"""The OpenAPI 3.1 description of the API: the export paths and `build_spec`, which assembles it.

Component schemas come from `api.openapi_schemas`, shared response pieces from
`api.openapi_responses`, the scheduling part from `api.openapi_scheduling`. Every operation lists
every response it can give; every error is `application/problem+json`.
"""

from __future__ import annotations

from typing import Any

from api.openapi_responses import (
    BODY_ERRORS,
    COMMON_ERRORS,
    LOCATION,
    RATE_LIMIT_HEADERS,
    RETRY_AFTER,
    URI_TOO_LONG,
    Schema,
    json_response,
    problem_response,
    ref,
)
from api.openapi_scheduling import scheduling_paths, scheduling_schemas
from api.openapi_schemas import component_schemas
from api.payloads import IDEMPOTENCY_HEADER
from api.queries import (
    DEFAULT_LOG_WINDOW,
    DEFAULT_PAGE_SIZE,
    EXPORT_STATUSES,
    MAX_LOG_WINDOW,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
)
from pipelines.manifest import content_type
from pipelines.options import COMPRESSIONS, FORMATS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"


def _export_id() -> Schema:
    return {
        "name": "exportId",
        "in": "path",
        "required": True,
        "description": "The export's id; someone else's export answers 404 like a missing one.",
        "schema": {"type": "string", "format": "uuid"},
    }


def _range_headers() -> list[Schema]:
    return [
        {
            "name": "Range",
            "in": "header",
            "required": False,
            "description": "One byte range of the object (streamed downloads).",
            "schema": {"type": "string"},
        },
        {
            "name": "If-Range",
            "in": "header",
            "required": False,
            "description": "Send the range only if the object's ETag is still this one.",
            "schema": {"type": "string"},
        },
    ]


def _stream_headers() -> dict[str, Schema]:
    return {
        "Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}},
        "ETag": {"schema": {"type": "string"}},
    }


def _export_bytes() -> Schema:
    """Every Content-Type a data object is served with: its format's, or its compression's.

    No schema: the body is the export file itself, whatever its format (`docs/formats.md`).
    """
    served = sorted({content_type(name, kind) for name in FORMATS for kind in COMPRESSIONS})
    return {media_type: {} for media_type in served}


def _idempotency() -> Schema:
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": "Retrying with the same key and body returns the same export (200).",
        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
    }


def _log_window() -> list[Schema]:
    return [
        {
            "name": "log_limit",
            "in": "query",
            "description": "The most entries `logs` lists, the newest after `log_offset`.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LOG_WINDOW,
                "default": DEFAULT_LOG_WINDOW,
            },
        },
        {
            "name": "log_offset",
            "in": "query",
            "description": (
                "How many entries to pass over, counted from the newest: with the default "
                f"`log_limit`, {DEFAULT_LOG_WINDOW} lists the {DEFAULT_LOG_WINDOW} entries before "
                f"the newest {DEFAULT_LOG_WINDOW}."
            ),
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        },
    ]


def _create(summary: str, *, admin: bool) -> Schema:
    responses: Schema = {
        "200": json_response(
            "An idempotent retry: the export created by the first request.",
            ref("ExportEnvelope"),
            headers={**LOCATION, "Idempotent-Replayed": {"schema": {"const": "true"}}},
        ),
        "202": json_response(
            "Accepted and queued.",
            ref("ExportEnvelope"),
            headers={**LOCATION, **RATE_LIMIT_HEADERS},
        ),
        "400": problem_response("Invalid body or header; `errors` names each bad field."),
        "403": problem_response(
            "Not allowed: "
            + ("not an administrator, or " if admin else "")
            + "a permission, format or system-field restriction."
        ),
        "422": problem_response("The Idempotency-Key was used with a different body."),
        "429": problem_response(
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
            "content": {"application/json": {"schema": ref("ExportRequest")}},
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
    not_found = problem_response("No such export (or not yours).")
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
                    "200": json_response("One page of exports and the total.", ref("ExportList")),
                    "400": problem_response("A bad query parameter, named in `errors`."),
                    "403": problem_response("The token lacks the exports:read scope."),
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/{exportId}/status": {
            "get": {
                "summary": "An export's metadata, progress, verification and newest audit entries.",
                "description": (
                    "`logs` lists a window of the audit entries, oldest first: by default the "
                    f"newest {DEFAULT_LOG_WINDOW}. `log_limit` and `log_offset` choose the window, "
                    "counted from the newest entry; `logPage.total` counts every entry."
                ),
                "parameters": [_export_id(), *_log_window()],
                "responses": {
                    "200": json_response("The export.", ref("ExportStatusEnvelope")),
                    "400": problem_response("A bad query parameter, named in `errors`."),
                    "403": problem_response("The token lacks the exports:read scope."),
                    "404": not_found,
                    **COMMON_ERRORS,
                },
            }
        },
        "/api/exports/{exportId}/download": {
            "get": {
                "summary": "Download a completed export (audited).",
                "description": (
                    "With presigning off the object is streamed through the API, which honours "
                    "one byte range (`Range: bytes=first-last`, `bytes=first-` or `bytes=-count`) "
                    "so a broken download resumes; `If-Range` with the ETag of the first answer "
                    "sends the whole object instead if it changed. Other Range headers are "
                    "ignored and the whole object is sent. A presigned URL gets the same from "
                    "the bucket."
                ),
                "parameters": [_export_id(), *_range_headers()],
                "responses": {
                    "200": {
                        "description": "The export's bytes, streamed (presigning off).",
                        "headers": _stream_headers(),
                        "content": _export_bytes(),
                    },
                    "206": {
                        "description": "The requested range of the export's bytes, streamed.",
                        "headers": {
                            **_stream_headers(),
                            "Content-Range": {
                                "schema": {
                                    "type": "string",
                                    "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$",
                                },
                                "required": True,
                            },
                        },
                        "content": _export_bytes(),
                    },
                    "302": {
                        "description": "Redirect to a short-lived presigned URL.",
                        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
                    },
                    "403": problem_response("The token lacks the exports:read scope."),
                    "404": not_found,
                    "409": problem_response("The export is not completed."),
                    "410": problem_response("The export has expired and its data is deleted."),
                    "416": problem_response(
                        "The byte range lies outside the object.",
                        headers={
                            "Content-Range": {
                                "schema": {"type": "string", "pattern": "^bytes \\*/[0-9]+$"},
                                "required": True,
                            }
                        },
                    ),
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
                    "202": json_response(
                        "Verification queued.", ref("ExportEnvelope"), headers=LOCATION
                    ),
                    "400": problem_response("A body with fields was sent."),
                    "403": problem_response("The token lacks the exports:write scope."),
                    "404": not_found,
                    "409": problem_response("The export is not completed."),
                    "410": problem_response("The export has expired."),
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
                    "202": json_response("Cleanup queued.", ref("Cleanup")),
                    "400": problem_response("A body with fields was sent."),
                    "403": problem_response("Not an administrator."),
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
                    "200": json_response("Statistics.", ref("Stats")),
                    "400": problem_response("A bad query parameter."),
                    "403": problem_response("System statistics are for administrators."),
                    **COMMON_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive.",
                "security": [],
                "responses": {
                    "200": json_response("Alive.", ref("Health")),
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
                    "200": json_response("Ready.", ref("Ready")),
                    "405": COMMON_ERRORS["405"],
                    "414": URI_TOO_LONG,
                    "500": COMMON_ERRORS["500"],
                    "503": problem_response(
                        "Not ready; `checks` names each service.", headers=RETRY_AFTER
                    ),
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
                    "200": json_response("The OpenAPI document.", {"type": "object"}),
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
                json=json_response,
                problem=problem_response,
                common=COMMON_ERRORS,
                body_errors=BODY_ERRORS,
                rate_headers={**RATE_LIMIT_HEADERS, **RETRY_AFTER},
            ),
        },
        "components": {
            "schemas": {**component_schemas(), **scheduling_schemas()},
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
