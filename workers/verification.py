"""Verify a completed export where it is stored, and record the outcome and its analytics.

Glue only: `pipelines.verifier.verify_export` does the checking. This writes the report, status
and time on the export row, one `export_analytics` row per run (sizes, ratio, records, durations,
throughput, outcome) and an audit entry. Re-running it (`POST /api/exports/{id}/verify`) adds a
new analytics row and replaces the report.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from psycopg.types.json import Jsonb

from pipelines.file_objects import FileObjectChecker, S3ObjectInspector
from pipelines.jobs import get_export
from pipelines.locations import open_location
from pipelines.verifier import VerificationReport, verify_export
from workers import metrics
from workers.rows import audit
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

# Concurrent HEADs while checking the files' objects: enough to hide latency, few enough that a
# verifier does not crowd out the exports sharing the bucket.
FILE_CHECK_WORKERS: Final = 8
# Longest a verification run may take: it reads the whole export back, up to a bulk export of
# every user. The verify actor's time limit, and how long maintenance waits before taking a
# queued verification's message for lost.
VERIFY_TIME_LIMIT_MS: Final = 2 * 3_600_000


def run_verification(runtime: Runtime, export_id: str) -> VerificationReport | None:
    """Verify export `export_id` and record the result; None when it is not (or no longer)
    completed."""
    with runtime.connect() as conn:
        row = get_export(conn, export_id)
        if row is None or row["status"] != "completed":
            logger.info("export %s: not completed, nothing to verify", export_id)
            return None
        bucket = runtime.settings.s3_bucket
        location = open_location(
            f"s3://{bucket}/{runtime.prefix(export_id)}", s3_client=lambda: runtime.s3
        )

        def checker() -> FileObjectChecker:
            inspector = S3ObjectInspector(runtime.s3, bucket=bucket)
            return FileObjectChecker(inspector, bucket=bucket, workers=FILE_CHECK_WORKERS)

        report = verify_export(location, file_checker=checker)
        status = "passed" if report.passed else "failed"
        problems = len(report.problems) + report.problems_omitted
        with conn.transaction():
            # Only while it is still completed and within its retention: the cleanup sweep
            # deletes the objects of an expired export on purpose (before marking it), and
            # recording that as a failed verification would page the operator.
            recorded = conn.execute(
                "UPDATE data_exports SET verification_status = %s, verification_report = %s,"
                " verified_at = now(), updated_at = now()"
                " WHERE id = %s AND status = 'completed' AND purged_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > now())",
                (status, Jsonb(report.as_json()), export_id),
            ).rowcount
            if not recorded:
                logger.info(
                    "export %s: expired or purged while being verified;"
                    " verification %s not recorded",
                    export_id,
                    status,
                )
                return None
            conn.execute(
                "INSERT INTO export_analytics (export_id, user_id, export_type, format,"
                " compression, size_bytes, content_size_bytes, compression_ratio, record_count,"
                " shard_count, queue_wait_ms, export_duration_ms, verify_duration_ms,"
                " throughput_bytes_per_second, verification_status, problem_count)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                _analytics(row, report, status, problems),
            )
            audit(
                conn,
                export_id,
                f"verification.{status}",
                f"verification {status} with {problems} problem(s)",
                level="info" if report.passed else "error",
                details={"problem_counts": report.problem_counts()},
            )
    metrics.verification_ended(
        outcome=status, export_type=str(row["export_type"]), seconds=report.duration_seconds
    )
    if not report.passed:
        runtime.webhooks.wake()
    return report


def _analytics(
    row: dict[str, Any], report: VerificationReport, status: str, problems: int
) -> tuple[Any, ...]:
    queue_wait = _millis(row["started_at"] - row["created_at"]) if row["started_at"] else None
    duration = (
        _millis(row["finished_at"] - row["started_at"])
        if row["started_at"] and row["finished_at"]
        else None
    )
    throughput = row["size_bytes"] / (duration / 1000) if duration else None
    return (
        row["id"],
        row["user_id"],
        row["export_type"],
        row["format"],
        row["compression"],
        row["size_bytes"],
        row["content_size_bytes"],
        row["compression_ratio"],
        row["record_count"],
        row["shard_count"],
        queue_wait,
        duration,
        round(report.duration_seconds * 1000),
        throughput,
        status,
        problems,
    )


def _millis(delta: Any) -> int:
    return max(0, round(float(delta.total_seconds()) * 1000))
