"""Maintenance: fail stuck jobs, abort abandoned uploads, delete expired exports, re-verify (lost
verifier messages, and stored exports due for another check), send the webhook calls a dead
process left owed. Lost job messages are sent again by `workers.lost_messages`.

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

from pipelines.errors import ExportError
from pipelines.jobs import get_export
from pipelines.storage.s3_errors import translate_s3_error
from workers import metrics
from workers.fanin import finalize_if_done
from workers.rows import audit
from workers.runtime import Runtime
from workers.state import fail_unleased
from workers.verification import VERIFY_TIME_LIMIT_MS
from workers.webhook_outbox import prune_deliveries

logger = logging.getLogger(__name__)

# A dead worker's message comes back after Dramatiq's 60 s heartbeat plus retry backoff: give a
# resume 15 minutes before calling the job stuck.
STUCK_GRACE_SECONDS: Final = 15 * 60
# A queued export whose message never ran within a day (the broker's age limit) never will.
QUEUED_MAX_SECONDS: Final = 24 * 3600
# An upload nobody references is aborted after a day; one a running job may resume is kept.
ABANDONED_UPLOAD_SECONDS: Final = 24 * 3600
# A completed export still unverified this long after finishing lost its verifier message (the
# broker was down when it was sent): a verification takes minutes at most, so 10 is generous.
VERIFY_GRACE_SECONDS: Final = 10 * 60
# A verification queued again (or asked for through the API) may wait in the queue and then run
# up to the verify actor's time limit; only after that is its message taken to be lost too.
VERIFY_REQUEUE_SECONDS: Final = VERIFY_TIME_LIMIT_MS // 1000
VERIFY_QUEUED_EVENTS: Final = ("verification.requeued", "verification.requested")
# Stored exports queued for another verification per sweep: a sweep runs every 5 minutes, so 50
# re-verify 14,400 a day without flooding the verifiers.
REVERIFY_BATCH: Final = 50
REVERIFY_EVENT: Final = "verification.reverify_queued"
# Rows handled per sweep, so one run stays short; the next run takes the rest.
SWEEP_ROWS: Final = 500
# Webhook calls one sweep sends itself: each may take the request timeout (5 s), so 60 stay well
# inside the maintenance time limit; the process's sender thread takes the rest.
SWEEP_WEBHOOK_CALLS: Final = 60


def fail_stuck_exports(
    runtime: Runtime,
    *,
    grace_seconds: int = STUCK_GRACE_SECONDS,
    queued_max_seconds: int = QUEUED_MAX_SECONDS,
) -> int:
    """Fail exports and shards whose lease expired long ago or that were never picked up."""
    failed = 0
    with runtime.connect() as conn:
        for kind, table in (("shard", "export_shards"), ("export", "data_exports")):
            rows = conn.execute(
                f"SELECT id::text, lease_owner, lease_expires_at, status, multipart_upload_id"
                f" FROM {table} WHERE (status = 'running'"
                " AND lease_expires_at < now() - make_interval(secs => %s))"
                " OR (status = 'queued' AND created_at < now() - make_interval(secs => %s))"
                " ORDER BY id LIMIT %s",
                (grace_seconds, queued_max_seconds, SWEEP_ROWS),
            ).fetchall()
            for row_id, owner, expired, status, upload_id in rows:
                if status == "running":
                    reason = (
                        f"the worker {owner} stopped renewing its lease at {expired.isoformat()} "
                        f"and no worker resumed it within {grace_seconds} s; "
                        "check that workers are running, then start the export again"
                    )
                else:
                    reason = (
                        f"no worker picked it up within {queued_max_seconds} s; check that "
                        "workers consume the queue, then start the export again"
                    )
                if not fail_unleased(conn, kind, row_id, code="stuck", message=reason):  # type: ignore[arg-type]
                    continue
                failed += 1
                export_id = row_id if kind == "export" else _export_of(conn, row_id)
                shard_id = row_id if kind == "shard" else None
                audit(conn, export_id, "export.stuck", reason, level="error", shard_id=shard_id)
                if kind == "export" and (ended := get_export(conn, row_id)) is not None:
                    # Counted as a worker counts its failures; a shard counts with its bulk
                    # export, when the fan-in fails that.
                    metrics.export_row_ended(ended)
                if upload_id:
                    _abort_failed_upload(
                        runtime, conn, table, row_id, export_id=export_id, upload_id=str(upload_id)
                    )
                if kind == "shard":
                    finalize_if_done(runtime, conn, export_id)
    if failed:
        runtime.webhooks.wake()
    return failed


def abort_abandoned_uploads(
    runtime: Runtime, *, older_than_seconds: int = ABANDONED_UPLOAD_SECONDS
) -> int:
    """Abort multipart uploads under the export prefix that no running job can complete.

    An upload is kept while a queued or running row names it (a running row whose lease expired
    is resumed by its redelivered message until the stuck sweep fails it) and while it is younger
    than `older_than_seconds` (its row may not have recorded it yet).
    """
    settings = runtime.settings
    aborted = 0
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
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
        for key, upload_id, initiated in _list_uploads(runtime, settings.s3_export_prefix):
            if upload_id in live or initiated > cutoff:
                continue
            _abort(runtime, key, upload_id)
            aborted += 1
        for table in ("data_exports", "export_shards"):
            conn.execute(
                f"UPDATE {table} SET multipart_upload_id = NULL, updated_at = now()"
                " WHERE multipart_upload_id IS NOT NULL"
                " AND status NOT IN ('queued', 'running')"
            )
    return aborted


def cleanup_exports(runtime: Runtime) -> int:
    """Delete the objects of exports past their retention and mark them; return how many.

    Retention is the export's `expires_at` (set at completion from its template's
    `retention_days` or EXPORT_RETENTION_DAYS); an export finished without one (failed, or
    completed before retention was recorded) expires that many days after it finished. A
    completed export becomes `expired`; a failed or cancelled one keeps its status. Both get
    `purged_at`, and every object under the export's prefix is deleted: data objects, manifest,
    SHA256SUMS and sidecars, including the shards a failed bulk export left.
    """
    expired = 0
    with runtime.connect() as conn:
        rows = conn.execute(
            "SELECT e.id::text, e.status FROM data_exports e"
            " LEFT JOIN export_templates t ON t.id = e.template_id"
            " WHERE e.purged_at IS NULL AND e.status IN ('completed', 'failed', 'cancelled')"
            " AND coalesce(e.expires_at, e.finished_at"
            " + make_interval(days => coalesce(t.retention_days, %s))) < now()"
            " ORDER BY e.id LIMIT %s",
            (runtime.settings.export_retention_days, SWEEP_ROWS),
        ).fetchall()
        for export_id, status in rows:
            deleted = _delete_prefix(runtime, runtime.prefix(export_id))
            changed = conn.execute(
                "UPDATE data_exports SET status = CASE WHEN status = 'completed' THEN 'expired'"
                " ELSE status END, purged_at = now(), updated_at = now()"
                " WHERE id = %s AND status = %s AND purged_at IS NULL",
                (export_id, status),
            ).rowcount
            if changed:
                expired += 1
                audit(
                    conn,
                    export_id,
                    "export.expired" if status == "completed" else "export.purged",
                    f"retention passed: {deleted} object(s) deleted from the bucket",
                    details={"objects_deleted": deleted},
                )
    return expired


def requeue_verifications(
    runtime: Runtime,
    *,
    older_than_seconds: int = VERIFY_GRACE_SECONDS,
    queued_within_seconds: int = VERIFY_REQUEUE_SECONDS,
) -> int:
    """Queue verification again for completed exports left unverified long after finishing,
    unless one was queued again or requested within `queued_within_seconds` (it may still be
    waiting or running). Returns how many."""
    with runtime.connect() as conn:
        rows = conn.execute(
            "SELECT e.id::text FROM data_exports e WHERE e.status = 'completed'"
            " AND e.verification_status = 'pending'"
            " AND e.finished_at < now() - make_interval(secs => %s)"
            " AND NOT EXISTS (SELECT 1 FROM export_logs l WHERE l.export_id = e.id"
            "  AND l.event = ANY(%s) AND l.created_at > now() - make_interval(secs => %s))"
            " ORDER BY e.finished_at LIMIT %s",
            (older_than_seconds, list(VERIFY_QUEUED_EVENTS), queued_within_seconds, SWEEP_ROWS),
        ).fetchall()
        for (export_id,) in rows:
            runtime.queue.enqueue_verification(export_id)
            audit(
                conn,
                export_id,
                "verification.requeued",
                f"still unverified {older_than_seconds} s after completing; verification queued",
            )
    return len(rows)


def reverify_stored_exports(
    runtime: Runtime, *, every_days: int | None = None, limit: int = REVERIFY_BATCH
) -> int:
    """Queue verification again for completed exports that passed it `every_days` (default
    EXPORT_REVERIFY_DAYS) or more ago, so an object lost or changed in the bucket is found while
    the export is still kept, not on the day it is needed. An export about to expire is skipped;
    one queued in the last day and not verified since is not queued twice. Returns how many."""
    days = runtime.settings.export_reverify_days if every_days is None else every_days
    if days <= 0:
        return 0
    with runtime.connect() as conn:
        rows = conn.execute(
            "SELECT e.id::text, e.verified_at FROM data_exports e"
            " WHERE e.status = 'completed' AND e.verification_status = 'passed'"
            " AND e.purged_at IS NULL"
            " AND e.verified_at < now() - make_interval(days => %s)"
            " AND (e.expires_at IS NULL OR e.expires_at > now() + interval '1 hour')"
            " AND NOT EXISTS (SELECT 1 FROM export_logs l WHERE l.export_id = e.id"
            "  AND l.event = %s AND l.created_at > e.verified_at"
            "  AND l.created_at > now() - interval '1 day')"
            " ORDER BY e.verified_at LIMIT %s",
            (days, REVERIFY_EVENT, limit),
        ).fetchall()
        for export_id, verified_at in rows:
            runtime.queue.enqueue_verification(export_id)
            audit(
                conn,
                export_id,
                REVERIFY_EVENT,
                f"last verified {verified_at.isoformat()}, {days} or more days ago; "
                "verification queued again",
            )
    return len(rows)


def deliver_webhooks(runtime: Runtime, *, limit: int = SWEEP_WEBHOOK_CALLS) -> int:
    """Send the webhook calls that are due (a process that owed them may have died); prune old
    ones. Return how many calls were attempted."""
    with runtime.connect() as conn:
        pruned = prune_deliveries(conn)
    if pruned:
        logger.info("webhooks: %d call(s) past retention deleted", pruned)
    attempted = runtime.webhooks.deliver_due(limit)
    if attempted >= limit:
        runtime.webhooks.wake()  # more may be due: the sender thread goes on
    return attempted


def _export_of(conn: psycopg.Connection[Any], shard_id: str) -> str:
    row = conn.execute(
        "SELECT export_id::text FROM export_shards WHERE id = %s", (shard_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def _list_uploads(runtime: Runtime, prefix: str) -> list[tuple[str, str, datetime]]:
    """Return (key, upload id, initiated) of open uploads under `prefix`."""
    settings = runtime.settings
    found: list[tuple[str, str, datetime]] = []
    try:
        paginator = runtime.s3.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=settings.s3_bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                found.append((upload["Key"], upload["UploadId"], upload["Initiated"]))
    except (BotoCoreError, ClientError) as exc:
        raise translate_s3_error(exc, "ListMultipartUploads") from exc
    return found


def _abort_failed_upload(
    runtime: Runtime,
    conn: psycopg.Connection[Any],
    table: str,
    row_id: str,
    *,
    export_id: str,
    upload_id: str,
) -> None:
    """Abort the upload of a row just failed: failed is final, nothing will resume it."""
    try:
        _abort_listed(runtime, runtime.prefix(export_id), {upload_id})
    except ExportError:
        logger.warning(
            "export %s: upload %s not aborted; the upload sweep will", export_id, upload_id
        )
        return
    conn.execute(f"UPDATE {table} SET multipart_upload_id = NULL WHERE id = %s", (row_id,))


def _abort_listed(runtime: Runtime, prefix: str, upload_ids: set[str]) -> None:
    """Abort the open uploads under `prefix` whose ids are in `upload_ids`."""
    for key, upload_id, _ in _list_uploads(runtime, prefix):
        if upload_id in upload_ids:
            _abort(runtime, key, upload_id)


def _abort(runtime: Runtime, key: str, upload_id: str) -> None:
    """Abort one multipart upload; an upload already gone counts as aborted."""
    try:
        runtime.s3.abort_multipart_upload(
            Bucket=runtime.settings.s3_bucket, Key=key, UploadId=upload_id
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise translate_s3_error(exc, f"AbortMultipartUpload {key}") from exc
    except BotoCoreError as exc:
        raise translate_s3_error(exc, f"AbortMultipartUpload {key}") from exc
    logger.info("aborted multipart upload %s of %s", upload_id, key)


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
