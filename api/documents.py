"""JSON documents the API answers with, built from database rows.

One place decides which columns a client sees and how they are named (camelCase, ISO 8601
times, ids as strings). Internal columns (leases, fencing tokens, upload ids, idempotency
fingerprints, audit details) never leave the server, nor does the raw text of a failure:
clients read the fixed wording of `api.public_text`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from api.public_text import error_message, event_message

EXPORTS_PATH = "/api/exports"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: Any) -> Any:
    return None if value is None else value


def export_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return the public view of one `data_exports` row."""
    export_id = str(row["id"])
    failed = row["error_message"] is not None or row["error_code"] is not None
    return {
        "id": export_id,
        "type": row["export_type"],
        "userId": str(row["user_id"]),
        "status": row["status"],
        "progress": row["progress"],
        "format": row["format"],
        "compression": row["compression"],
        "priority": row["priority"],
        "options": row["options"],
        "createdAt": _time(row["created_at"]),
        "startedAt": _time(row["started_at"]),
        "finishedAt": _time(row["finished_at"]),
        "expiresAt": _time(row["expires_at"]),
        "sizeBytes": _number(row["size_bytes"]),
        "contentSizeBytes": _number(row["content_size_bytes"]),
        "recordCount": _number(row["record_count"]),
        "userCount": _number(row["user_count"]),
        "fileCount": _number(row["file_count"]),
        "sha256": row["sha256"],
        "contentSha256": row["content_sha256"],
        "compressionRatio": _number(row["compression_ratio"]),
        "error": (
            {"code": row["error_code"], "message": error_message(row["error_code"])}
            if failed
            else None
        ),
        "verification": {
            "status": row["verification_status"],
            "verifiedAt": _time(row["verified_at"]),
        },
        "links": {
            "status": f"{EXPORTS_PATH}/{export_id}/status",
            "download": f"{EXPORTS_PATH}/{export_id}/download",
        },
    }


def status_document(
    row: Mapping[str, Any],
    logs: Iterable[Mapping[str, Any]],
    *,
    log_total: int,
    log_limit: int,
    log_offset: int,
) -> dict[str, Any]:
    """Return the export with its verification report and a window of audit entries, for `/status`.

    `logs` is the window, oldest first; `logPage` says how many entries the export has in all and
    which window this is (`offset` counted from the newest entry).
    """
    document = export_document(row)
    document["verification"]["report"] = row["verification_report"]
    document["logs"] = [
        {
            "at": _time(entry["created_at"]),
            "event": entry["event"],
            "level": entry["level"],
            "message": event_message(entry["event"]),
            "actorType": entry["actor_type"],
        }
        for entry in logs
    ]
    document["logPage"] = {"total": log_total, "limit": log_limit, "offset": log_offset}
    return document


def user_stats_document(row: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a user's statistics from `user_export_summary` (zeros when they have none)."""
    row = row or {}
    return {
        "totalExports": int(row.get("total_exports") or 0),
        "completedExports": int(row.get("completed_exports") or 0),
        "failedExports": int(row.get("failed_exports") or 0),
        "activeExports": int(row.get("active_exports") or 0),
        "verifiedExports": int(row.get("verified_exports") or 0),
        "completedSizeBytes": int(row.get("completed_size_bytes") or 0),
        "lastExportAt": _time(row.get("last_export_at")),
        "lastCompletedAt": _time(row.get("last_completed_at")),
    }


def summary_document(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return `export_summary` rows as documents."""
    return [
        {
            "type": row["export_type"],
            "format": row["format"],
            "status": row["status"],
            "exportCount": int(row["export_count"]),
            "totalSizeBytes": int(row["total_size_bytes"]),
            "totalContentSizeBytes": int(row["total_content_size_bytes"]),
            "totalRecords": int(row["total_records"]),
            "avgCompressionRatio": row["avg_compression_ratio"],
            "avgDurationSeconds": row["avg_duration_seconds"],
            "firstCreatedAt": _time(row["first_created_at"]),
            "lastCreatedAt": _time(row["last_created_at"]),
        }
        for row in rows
    ]


# export_health_metrics columns and their document names, in the view's order.
HEALTH_FIELDS = (
    ("queued_count", "queuedCount"),
    ("running_count", "runningCount"),
    ("stuck_count", "stuckCount"),
    ("stuck_shard_count", "stuckShardCount"),
    ("completed_last_24h", "completedLast24h"),
    ("failed_last_24h", "failedLast24h"),
    ("success_rate_24h", "successRate24h"),
    ("awaiting_verification", "awaitingVerification"),
    ("verification_failed_last_24h", "verificationFailedLast24h"),
    ("awaiting_cleanup", "awaitingCleanup"),
    ("abandoned_uploads", "abandonedUploads"),
    ("oldest_queued_age_seconds", "oldestQueuedAgeSeconds"),
    ("avg_duration_seconds_24h", "avgDurationSeconds24h"),
    ("overdue_scheduled_count", "overdueScheduledCount"),
    ("oldest_due_age_seconds", "oldestDueAgeSeconds"),
    ("oldest_awaiting_cleanup_age_seconds", "oldestAwaitingCleanupAgeSeconds"),
)


def health_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return the `export_health_metrics` row as a document."""
    return {name: row.get(column) for column, name in HEALTH_FIELDS}
