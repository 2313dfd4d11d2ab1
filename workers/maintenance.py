"""Maintenance: fail stuck jobs, abort abandoned multipart uploads, delete expired exports.

Each function is one idempotent sweep that any number of maintenance workers may run at once.
A job is stuck when its lease expired longer ago than a redelivered message needs to resume it;
an upload is abandoned when nothing running can still complete it. Every change says why.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.storage.s3_errors import translate_s3_error
from workers.fanin import finalize_if_done
from workers.rows import audit
from workers.runtime import Runtime
from workers.state import fail_unleased

logger = logging.getLogger(__name__)

# A dead worker's message comes back after Dramatiq's 60 s heartbeat plus retry backoff: give a
# resume 15 minutes before calling the job stuck.
STUCK_GRACE_SECONDS: Final = 15 * 60
# A queued export whose message never ran within a day (the broker's age limit) never will.
QUEUED_MAX_SECONDS: Final = 24 * 3600
# An upload nobody references is aborted after a day; one a running job may resume is kept.
ABANDONED_UPLOAD_SECONDS: Final = 24 * 3600
# Rows handled per sweep, so one run stays short; the next run takes the rest.
SWEEP_ROWS: Final = 500


def fail_stuck_exports(runtime: Runtime) -> int:
    """Fail exports and shards whose lease expired long ago or that were never picked up."""
    failed = 0
    with runtime.connect() as conn:
        for kind, table in (("shard", "export_shards"), ("export", "data_exports")):
            rows = conn.execute(
                f"SELECT id::text, lease_owner, lease_expires_at, status FROM {table}"
                " WHERE (status = 'running'"
                " AND lease_expires_at < now() - make_interval(secs => %s))"
                " OR (status = 'queued' AND created_at < now() - make_interval(secs => %s))"
                " ORDER BY id LIMIT %s",
                (STUCK_GRACE_SECONDS, QUEUED_MAX_SECONDS, SWEEP_ROWS),
            ).fetchall()
            for row_id, owner, expired, status in rows:
                if status == "running":
                    reason = (
                        f"the worker {owner} stopped renewing its lease at {expired.isoformat()} "
                        f"and no worker resumed it within {STUCK_GRACE_SECONDS} s; "
                        "check that workers are running, then start the export again"
                    )
                else:
                    reason = (
                        f"no worker picked it up within {QUEUED_MAX_SECONDS} s; check that "
                        "workers consume the queue, then start the export again"
                    )
                if not fail_unleased(conn, kind, row_id, code="stuck", message=reason):  # type: ignore[arg-type]
                    continue
                failed += 1
                export_id = row_id if kind == "export" else _export_of(conn, row_id)
                shard_id = row_id if kind == "shard" else None
                audit(conn, export_id, "export.stuck", reason, level="error", shard_id=shard_id)
                if kind == "shard":
                    finalize_if_done(runtime, conn, export_id)
    return failed


def abort_abandoned_uploads(runtime: Runtime) -> int:
    """Abort multipart uploads under the export prefix that no running job can complete."""
    settings = runtime.settings
    aborted = 0
    cutoff = datetime.now(UTC) - timedelta(seconds=ABANDONED_UPLOAD_SECONDS)
    with runtime.connect() as conn:
        live = {
            str(upload)
            for (upload,) in conn.execute(
                "SELECT multipart_upload_id FROM data_exports WHERE status IN ('queued', 'running')"
                " AND multipart_upload_id IS NOT NULL UNION SELECT multipart_upload_id"
                " FROM export_shards WHERE status IN ('queued', 'running')"
                " AND multipart_upload_id IS NOT NULL"
            )
        }
        for key, upload_id, initiated in _list_uploads(runtime):
            if upload_id in live or initiated > cutoff:
                continue
            try:
                runtime.s3.abort_multipart_upload(
                    Bucket=settings.s3_bucket, Key=key, UploadId=upload_id
                )
            except (BotoCoreError, ClientError) as exc:
                raise translate_s3_error(exc, f"AbortMultipartUpload {key}") from exc
            aborted += 1
            logger.info("aborted abandoned upload %s of %s", upload_id, key)
        for table in ("data_exports", "export_shards"):
            conn.execute(
                f"UPDATE {table} SET multipart_upload_id = NULL, updated_at = now()"
                " WHERE multipart_upload_id IS NOT NULL"
                " AND status NOT IN ('queued', 'running')"
            )
    return aborted


def cleanup_exports(runtime: Runtime) -> int:
    """Delete the objects of exports past their retention and mark them expired."""
    expired = 0
    with runtime.connect() as conn:
        rows = conn.execute(
            "SELECT id::text FROM data_exports WHERE status = 'completed' AND expires_at < now()"
            " ORDER BY expires_at LIMIT %s",
            (SWEEP_ROWS,),
        ).fetchall()
        for (export_id,) in rows:
            deleted = _delete_prefix(runtime, runtime.prefix(export_id))
            changed = conn.execute(
                "UPDATE data_exports SET status = 'expired', purged_at = now(), updated_at = now()"
                " WHERE id = %s AND status = 'completed'",
                (export_id,),
            ).rowcount
            if changed:
                expired += 1
                audit(
                    conn,
                    export_id,
                    "export.expired",
                    f"retention passed: {deleted} object(s) deleted from the bucket",
                )
    return expired


def _export_of(conn: psycopg.Connection[Any], shard_id: str) -> str:
    row = conn.execute(
        "SELECT export_id::text FROM export_shards WHERE id = %s", (shard_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _list_uploads(runtime: Runtime) -> list[tuple[str, str, datetime]]:
    """Return (key, upload id, initiated) of open uploads under the export prefix."""
    settings = runtime.settings
    found: list[tuple[str, str, datetime]] = []
    try:
        paginator = runtime.s3.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=settings.s3_bucket, Prefix=settings.s3_export_prefix):
            for upload in page.get("Uploads", []):
                found.append((upload["Key"], upload["UploadId"], upload["Initiated"]))
    except (BotoCoreError, ClientError) as exc:
        raise translate_s3_error(exc, "ListMultipartUploads") from exc
    return found


def _delete_prefix(runtime: Runtime, prefix: str) -> int:
    """Delete every object under `prefix`, a page (at most 1,000 keys) at a time."""
    bucket = runtime.settings.s3_bucket
    deleted = 0
    try:
        paginator = runtime.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                runtime.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]
                deleted += len(keys)
    except (BotoCoreError, ClientError) as exc:
        raise translate_s3_error(exc, f"DeleteObjects {prefix}") from exc
    return deleted
