"""One leased attempt at writing an object: resume an open upload or start fresh; settle failures.

Shared by user exports and bulk shards. A claimed row that still names a multipart upload was
left by a worker that died mid-upload: the attempt continues it from the last recorded resumable
part, or starts the object again when that upload is gone. A failure, Dramatiq's interrupts
(time limit, shutdown) included, is settled by kind: a lost lease changes nothing (the new holder
owns the row), a permanent error fails the row at once, anything else aborts the upload and
releases the lease for Dramatiq's retry unless the attempts are used up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from dramatiq.middleware import Interrupt, Shutdown, TimeLimitExceeded

from pipelines.errors import PermanentError, SizeLimitError
from pipelines.export import WrittenObject
from pipelines.records import SourceBatch
from pipelines.sources import SourcePosition
from pipelines.storage.s3_errors import UploadGoneError, is_upload_gone
from workers.heartbeat import LeaseKeeper
from workers.resume import (
    ObjectJob,
    PartLog,
    load_parts,
    resumable_prefix,
    write_fresh,
    write_resumed,
)
from workers.rows import audit
from workers.runtime import Runtime
from workers.state import Lease, LeaseLostError, fail, forget_upload, release

logger = logging.getLogger(__name__)


class Outcome(Enum):
    """How a job message ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    BUSY = "busy"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Attempt:
    """A row this worker holds the lease on, and where its audit entries go."""

    runtime: Runtime
    conn: psycopg.Connection[Any]
    lease: Lease
    row: dict[str, Any]
    export_id: str
    shard_id: str | None = None
    request_id: str | None = None

    def audit(self, event: str, message: str, **fields: Any) -> None:
        """Append an audit entry for this export (and shard)."""
        audit(
            self.conn,
            self.export_id,
            event,
            message,
            shard_id=self.shard_id,
            request_id=self.request_id,
            **fields,
        )


def write_with_resume(
    attempt: Attempt,
    keeper: LeaseKeeper,
    job: ObjectJob,
    open_batches: Callable[[SourcePosition | None], Iterable[SourceBatch]],
) -> WrittenObject:
    """Write the object, continuing an upload an earlier attempt left open when there is one."""
    log = PartLog(
        attempt.conn,
        attempt.lease,
        keeper,
        export_id=attempt.export_id,
        shard_id=attempt.shard_id,
        lease_seconds=attempt.runtime.worker.lease_seconds,
        delay_seconds=attempt.runtime.worker.test_part_delay_seconds,
    )
    upload_id = attempt.row.get("multipart_upload_id")
    if not upload_id:
        return write_fresh(open_batches(None), job, log)
    kept = resumable_prefix(load_parts(attempt.conn, upload_id))
    if not kept:
        abort_quietly(job, upload_id)
        forget_upload(attempt.conn, attempt.lease, upload_id)
        attempt.audit(
            "export.restarted",
            f"upload {upload_id} had no resumable part; starting the object again",
            details={"upload_id": upload_id},
        )
        return write_fresh(open_batches(None), job, log)
    attempt.audit(
        "export.resumed",
        f"attempt {attempt.lease.attempts} resumes upload {upload_id} after part "
        f"{len(kept)} left by a worker that stopped",
        details={"upload_id": upload_id, "parts_kept": len(kept), "name": job.name},
    )
    try:
        return write_resumed(open_batches, job, log, upload_id=upload_id, kept=kept)
    except UploadGoneError as gone:
        # An earlier attempt aborted it (its sink did, but recording that failed): nothing of
        # this attempt was read or stored, so start the object again.
        forget_upload(attempt.conn, attempt.lease, upload_id)
        attempt.audit(
            "export.restarted",
            f"upload {upload_id} could not be resumed because it no longer exists ({gone}); "
            "starting the object again",
            details={"upload_id": upload_id, "reason": "upload_gone"},
        )
    return write_fresh(open_batches(None), job, log)


def settle_failure(attempt: Attempt, error: BaseException) -> bool:
    """Record a failed attempt; return True when Dramatiq should retry the message.

    Dramatiq's interrupts are settled like any retryable error; the caller re-raises them
    whatever this returns, so Dramatiq handles them as it would have.
    """
    lease = attempt.lease
    where = f"shard {attempt.shard_id} of " if attempt.shard_id else ""
    if isinstance(error, LeaseLostError):
        logger.warning("%sexport %s: %s; stopping", where, attempt.export_id, error)
        return False
    runtime = attempt.runtime
    reason = _reason(error)
    try:
        if isinstance(error, PermanentError) or lease.attempts >= runtime.worker.max_attempts:
            code = _error_code(error)
            message = reason
            if not isinstance(error, PermanentError):
                message = f"gave up after {lease.attempts} attempts; last error: {message}"
            fail(attempt.conn, lease, code=code, message=message)
            event = "shard.failed" if attempt.shard_id else "export.failed"
            attempt.audit(event, message, level="error", details={"code": code})
            return False
        release(attempt.conn, lease)
        attempt.audit(
            "export.retrying",
            f"attempt {lease.attempts} failed and will be retried: {reason}",
            level="warning",
        )
    except (LeaseLostError, psycopg.Error) as exc:
        logger.warning("%sexport %s: failure not recorded: %s", where, attempt.export_id, exc)
    return True


def _reason(error: BaseException) -> str:
    """Say why an attempt stopped, in words for the row and the audit trail."""
    if isinstance(error, TimeLimitExceeded):
        return "the attempt reached its Dramatiq time limit and was interrupted"
    if isinstance(error, Shutdown):
        return "the worker process shut down and interrupted the attempt"
    if isinstance(error, Interrupt):
        return f"the attempt was interrupted by Dramatiq ({type(error).__name__})"
    return str(error) or type(error).__name__


def _error_code(error: BaseException) -> str:
    if isinstance(error, SizeLimitError):
        return "size_limit"
    if isinstance(error, PermanentError):
        return "permanent"
    return "attempts_exhausted"


def abort_quietly(job: ObjectJob, upload_id: str) -> None:
    """Abort an upload nothing will resume; cleanup retries it if this fails."""
    try:
        job.s3.abort_multipart_upload(
            Bucket=job.store.bucket, Key=job.store.key(job.name), UploadId=upload_id
        )
    except (BotoCoreError, ClientError) as exc:
        if is_upload_gone(exc):
            return  # aborted already (by the sink) or completed
        logger.warning("could not abort upload %s; cleanup will", upload_id, exc_info=True)
