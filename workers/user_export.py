"""Run one user export job: claim its row, write the object, publish the manifest, complete.

`queued → running → completed | failed`, every step in the audit trail, then a message to the
verifier. A duplicate delivery finds the row leased or finished and does nothing. An attempt
after a crash starts again from scratch on a fresh snapshot (aborting the old upload): the first
attempt's snapshot died with its worker, and resuming the tail from a newer one would mix two
points in time in one file. User exports are small (EXPORT_MAX_SIZE), so this costs little;
bulk shards resume instead, because they re-adopt the snapshot their export holds. The manifest
is written and the row completed under the row's lock, fenced by the lease, so a worker fenced
out by a successor never publishes over the successor's manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
from dramatiq.middleware import Interrupt

from pipelines.export import user_object_name
from pipelines.jobs import get_export
from pipelines.records import SourceBatch
from pipelines.runner import publish_manifest, snapshot_time
from pipelines.sources import SourcePosition, begin_snapshot, iter_user_batches
from workers import metrics
from workers.attempt import Attempt, Outcome, abort_quietly, settle_failure, write_with_resume
from workers.heartbeat import LeaseKeeper
from workers.resume import ObjectJob
from workers.rows import (
    audit,
    compression_level,
    expiry,
    header_from_row,
    options_from_row,
    part_size_for,
    result_fields,
)
from workers.runtime import Runtime
from workers.state import (
    ClaimOutcome,
    claim,
    complete,
    forget_upload,
    lease_owner_name,
    locked_lease,
    set_fields,
)

logger = logging.getLogger(__name__)


def run_user_export(runtime: Runtime, export_id: str, *, request_id: str | None = None) -> Outcome:
    """Export one user's data for the export row `export_id`."""
    worker = runtime.worker
    with runtime.connect() as conn:
        claimed = claim(
            conn,
            "export",
            export_id,
            owner=lease_owner_name(),
            lease_seconds=worker.lease_seconds,
            max_attempts=worker.max_attempts,
        )
        if claimed.outcome is ClaimOutcome.BUSY:
            return Outcome.BUSY
        if claimed.outcome is ClaimOutcome.FINISHED:
            return Outcome.SKIPPED
        if claimed.outcome is ClaimOutcome.EXHAUSTED or claimed.lease is None:
            audit(conn, export_id, "export.failed", claimed.reason, level="error")
            metrics.export_row_ended(claimed.row)
            runtime.webhooks.wake()
            return Outcome.FAILED
        attempt = Attempt(runtime, conn, claimed.lease, claimed.row, export_id, None, request_id)
        attempt.audit(
            "export.started",
            f"attempt {claimed.lease.attempts} started by {claimed.lease.owner}",
            details={"took_over": claimed.took_over},
        )
        try:
            _export(attempt)
        except (Exception, Interrupt) as error:
            retried = settle_failure(attempt, error)
            if not retried:
                _count_ended(runtime, conn, export_id)
            if retried or isinstance(error, Interrupt):
                raise  # Dramatiq retries, or handles its interrupt as it always has
            return Outcome.FAILED
        _count_ended(runtime, conn, export_id)
    runtime.queue.enqueue_verification(export_id)
    return Outcome.COMPLETED


def _count_ended(runtime: Runtime, conn: psycopg.Connection[Any], export_id: str) -> None:
    """Count the export in the metrics as its row now stands; send its webhook call if it failed."""
    row = get_export(conn, export_id)
    if row is not None and row["status"] in ("completed", "failed"):
        metrics.export_row_ended(row)
    if row is not None and row["status"] == "failed":
        runtime.webhooks.wake()


def _export(attempt: Attempt) -> None:
    runtime, row, lease = attempt.runtime, attempt.row, attempt.lease
    settings = runtime.settings
    options = options_from_row(row)
    part_size = row["part_size_bytes"] or part_size_for(settings, settings.export_max_size)
    store = runtime.store(attempt.export_id)
    user_id = str(row["user_id"])
    with (
        LeaseKeeper(runtime.connect, lease, lease_seconds=runtime.worker.lease_seconds) as keeper,
        runtime.connect(autocommit=False) as reader,
    ):
        begin_snapshot(reader)
        # Every attempt reads its own snapshot and names its time in the header.
        row = {**row, "snapshot_at": snapshot_time(reader), "part_size_bytes": part_size}
        header = header_from_row(row, options)
        job = ObjectJob(
            name=user_object_name(options),
            options=options,
            header=header,
            store=store,
            s3=runtime.s3,
            part_size=part_size,
            max_size=settings.export_max_size,
            level=compression_level(settings, options.compression),
        )
        _restart(attempt, job)
        set_fields(
            attempt.conn,
            lease,
            {"snapshot_at": row["snapshot_at"], "part_size_bytes": part_size},
        )
        attempt = replace(attempt, row={**row, "multipart_upload_id": None})

        def open_batches(after: SourcePosition | None) -> Iterator[SourceBatch]:
            return iter_user_batches(reader, user_id=user_id, options=options, after=after)

        written = write_with_resume(attempt, keeper, job, open_batches)
        reader.rollback()
        keeper.check()
    fields = result_fields(written, object_key=store.key(written.name))
    fields["progress"] = 100
    # The row stays locked, fenced by the token, from before the manifest is written until the
    # export is completed: a worker that stalled past its lease finds it taken and writes
    # nothing, and a successor's claim waits, then finds the export completed.
    with locked_lease(attempt.conn, lease):
        fields["expires_at"] = expiry(attempt.conn, row, settings)
        publish_manifest(header, options, store, [written.manifest_entry()])
        complete(attempt.conn, lease, fields)
        attempt.audit(
            "export.completed",
            f"wrote {written.name}: {fields['size_bytes']} bytes, {fields['record_count']} records",
            details={"sha256": fields["sha256"], "seconds": round(written.seconds, 3)},
        )


def _restart(attempt: Attempt, job: ObjectJob) -> None:
    """Abort the upload an earlier attempt left, so this attempt writes one point in time."""
    upload_id = attempt.row.get("multipart_upload_id")
    if not upload_id:
        return
    abort_quietly(job, upload_id)
    forget_upload(attempt.conn, attempt.lease, upload_id)
    attempt.audit(
        "export.restarted",
        f"attempt {attempt.lease.attempts} starts again on a fresh snapshot instead of resuming "
        f"upload {upload_id}: the earlier attempt's snapshot ended with its worker, and a user "
        "export must be one point in time",
        details={"upload_id": upload_id, "reason": "snapshot_lost"},
    )
