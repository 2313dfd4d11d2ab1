"""The component schemas of the OpenAPI document: exports, pages, problems, health.

Formats, statuses, compressions, page sizes and problem types come from the modules that enforce
them, so the schemas cannot drift from the code on those. The scheduling schemas live in
`api.openapi_scheduling`.
"""

from __future__ import annotations

from api.openapi_responses import Schema, nullable, ref
from api.problems import PROBLEM_BASE_URI
from api.public_text import ERROR_MESSAGES
from api.queries import EXPORT_STATUSES, MAX_LOG_WINDOW, MAX_OFFSET, MAX_PAGE_SIZE
from pipelines.options import COMPRESSIONS, FORMATS


def component_schemas() -> Schema:
    """Return the export, page, problem and health schemas by name."""
    timestamp = {"type": "string", "format": "date-time"}
    opt_time = nullable(timestamp)
    opt_int = nullable({"type": "integer", "minimum": 0})
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
        "sha256": nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "contentSha256": nullable({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        "compressionRatio": nullable({"type": "number"}),
        "error": nullable(
            {
                "type": "object",
                "description": (
                    "Why the export failed: a stable code and a fixed sentence per code saying "
                    "what happened and what to do. The raw cause stays in the workers' log."
                ),
                "properties": {
                    "code": nullable(
                        {
                            "type": "string",
                            "examples": sorted(ERROR_MESSAGES),
                        }
                    ),
                    "message": {"type": "string"},
                },
                "required": ["code", "message"],
            }
        ),
        "verification": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["pending", "passed", "failed", "skipped"]},
                "verifiedAt": opt_time,
                "report": nullable({"type": "object"}),
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
            "message": {
                "type": "string",
                "description": "A fixed sentence per event; the raw detail stays with operators.",
            },
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
    opt_number = nullable({"type": "number"})
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
                    "properties": {
                        "logs": {
                            "type": "array",
                            "items": log_entry,
                            "maxItems": MAX_LOG_WINDOW,
                            "description": "The window `logPage` describes, oldest first.",
                        },
                        "logPage": ref("LogPage"),
                    },
                    "required": ["logs", "logPage"],
                },
            ]
        },
        "LogPage": {
            "type": "object",
            "description": (
                "Which audit entries `logs` lists: at most `limit`, after passing over `offset` "
                "entries counted from the newest; `total` counts every entry of the export."
            ),
            "properties": {
                "total": number,
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_WINDOW},
                "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
            },
            "required": ["total", "limit", "offset"],
        },
        "ExportEnvelope": {
            "type": "object",
            "properties": {"export": ref("Export")},
            "required": ["export"],
        },
        "ExportStatusEnvelope": {
            "type": "object",
            "properties": {"export": ref("ExportStatus")},
            "required": ["export"],
        },
        "ExportList": {
            "type": "object",
            "properties": {
                "exports": {"type": "array", "items": ref("Export")},
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
            "properties": {"user": ref("UserStats"), "system": ref("SystemStats")},
            "required": ["user"],
        },
        "Cleanup": {
            "type": "object",
            "properties": {
                "cleanup": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "queued"},
                        "requestId": nullable({"type": "string"}),
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
