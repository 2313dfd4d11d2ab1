"""Bulk exports across many workers: plan shards on one snapshot, run each shard, fan in.

The planner claims the export, exports a PostgreSQL snapshot on a connection it hands to a
`SnapshotHolder` thread (see `workers.snapshot_holder` for how long it is held and what happens
when its process dies), splits all users into user-id ranges sized by rows, writes one shard row
each and enqueues one message per shard. A shard claims its own lease, adopts the snapshot, writes
one object (resuming a recorded upload after a crash) and calls the database fan-in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
from dramatiq.middleware import Interrupt

from pipelines.errors import PermanentError
from pipelines.records import SourceBatch
from pipelines.runner import shard_name, snapshot_time
from pipelines.sharding import plan_shards
from pipelines.sources import (
    SourcePosition,
    UserRange,
    begin_snapshot,
    export_snapshot,
    iter_shard_batches,
)
from workers.attempt import Attempt, Outcome, settle_failure, write_with_resume
from workers.fanin import finalize_if_done
from workers.heartbeat import LeaseKeeper
from workers.resume import ObjectJob
from workers.rows import (
    audit,
    compression_level,
    header_from_row,
    options_from_row,
    part_size_for,
    result_fields,
)
from workers.runtime import Runtime
from workers.snapshot_holder import SnapshotHolder
from workers.state import ClaimOutcome, claim, complete, fail, lease_owner_name, set_fields

logger = logging.getLogger(__name__)

# Shard columns a completed shard records (data_exports has a few more).
SHARD_RESULT_FIELDS = (
    "object_key",
    "part_size_bytes",
    "size_bytes",
    "content_size_bytes",
    "record_count",
    "user_count",
    "file_count",
    "sha256",
    "content_sha256",
)


def run_plan(
    runtime: Runtime, export_id: str, *, request_id: str | None = None
) -> tuple[Outcome, SnapshotHolder | None]:
    """Plan a bulk export and start holding its snapshot; return the holder thread."""
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
            return Outcome.BUSY, None
        if claimed.outcome is ClaimOutcome.FINISHED:
            return Outcome.SKIPPED, None
        if claimed.lease is None:
            audit(conn, export_id, "export.failed", claimed.reason, level="error")
            return Outcome.FAILED, None
        lease = claimed.lease
        attempt = Attempt(runtime, conn, lease, claimed.row, export_id, None, request_id)
        if claimed.row["shard_count"] is not None:
            message = (
                "the worker holding this bulk export's snapshot stopped after its shards were "
                "planned; a bulk export cannot switch snapshots midway, so start a new one"
            )
            fail(conn, lease, code="snapshot_lost", message=message)
            attempt.audit("export.failed", message, level="error")
            return Outcome.FAILED, None
        holder_conn = runtime.connect()
        try:
            shards = _plan(attempt, holder_conn)
        except (Exception, Interrupt) as error:
            holder_conn.close()
            if settle_failure(attempt, error) or isinstance(error, Interrupt):
                raise  # Dramatiq retries, or handles its interrupt as it always has
            return Outcome.FAILED, None
        holder = SnapshotHolder(runtime, holder_conn, lease)
        holder.start()
        for shard_id in shards:
            runtime.queue.enqueue_shard(export_id, shard_id)
    return Outcome.COMPLETED, holder


def _plan(attempt: Attempt, holder: psycopg.Connection[Any]) -> list[str]:
    """Export the snapshot, plan ranges on it, and record the shards; return their ids."""
    runtime, conn = attempt.runtime, attempt.conn
    snapshot_id = export_snapshot(holder)
    moment = snapshot_time(holder)
    ranges = plan_shards(holder, target_rows=runtime.worker.target_shard_rows)
    part_size = part_size_for(runtime.settings, runtime.settings.export_bulk_max_size)
    with conn.transaction():
        set_fields(
            conn,
            attempt.lease,
            {
                "snapshot_id": snapshot_id,
                "snapshot_at": moment,
                "shard_count": len(ranges),
                "part_size_bytes": part_size,
            },
        )
        ids = []
        for number, users in enumerate(ranges, start=1):
            row = conn.execute(
                "INSERT INTO export_shards (export_id, shard_index, user_id_from, user_id_to,"
                " part_size_bytes) VALUES (%s, %s, %s, %s, %s) RETURNING id::text",
                (attempt.export_id, number, users.low, users.high, part_size),
            ).fetchone()
            assert row is not None
            ids.append(str(row[0]))
        attempt.audit(
            "export.planned",
            f"{len(ranges)} shards planned on snapshot {snapshot_id} taken at {moment.isoformat()}",
            details={"snapshot_id": snapshot_id, "shards": len(ranges)},
        )
    return ids


def run_shard(runtime: Runtime, export_id: str, shard_id: str) -> Outcome:
    """Write one shard of a bulk export from the export's snapshot, then fan in."""
    worker = runtime.worker
    with runtime.connect() as conn:
        claimed = claim(
            conn,
            "shard",
            shard_id,
            owner=lease_owner_name(),
            lease_seconds=worker.lease_seconds,
            max_attempts=worker.max_attempts,
        )
        if claimed.outcome is ClaimOutcome.BUSY:
            return Outcome.BUSY
        if claimed.outcome is ClaimOutcome.FINISHED:
            finalize_if_done(runtime, conn, export_id)
            return Outcome.SKIPPED
        if claimed.lease is None:
            audit(conn, export_id, "shard.failed", claimed.reason, shard_id=shard_id, level="error")
            finalize_if_done(runtime, conn, export_id)
            return Outcome.FAILED
        attempt = Attempt(runtime, conn, claimed.lease, claimed.row, export_id, shard_id)
        try:
            _export_shard(attempt)
        except (Exception, Interrupt) as error:
            retried = settle_failure(attempt, error)
            if not retried:
                finalize_if_done(runtime, conn, export_id)
            if retried or isinstance(error, Interrupt):
                raise  # Dramatiq retries, or handles its interrupt as it always has
            return Outcome.FAILED
        finalize_if_done(runtime, conn, export_id)
    return Outcome.COMPLETED


def _export_shard(attempt: Attempt) -> None:
    runtime, shard, lease = attempt.runtime, attempt.row, attempt.lease
    with attempt.conn.cursor() as cursor:
        cursor.execute("SELECT * FROM data_exports WHERE id = %s", (attempt.export_id,))
        names = [column.name for column in cursor.description or ()]
        found = cursor.fetchone()
    if found is None:
        raise PermanentError(f"bulk export {attempt.export_id} does not exist")
    export = dict(zip(names, found, strict=True))
    number = int(shard["shard_index"])
    if export["status"] != "running":
        raise PermanentError(f"the bulk export is {export['status']}; shard {number} not run")
    options = options_from_row(export)
    users = UserRange(_text(shard["user_id_from"]), _text(shard["user_id_to"]))
    store = runtime.store(attempt.export_id)
    job = ObjectJob(
        name=shard_name(number, options),
        options=options,
        header=header_from_row(export, options),
        store=store,
        s3=runtime.s3,
        part_size=int(shard["part_size_bytes"] or export["part_size_bytes"]),
        max_size=runtime.settings.export_bulk_max_size,
        level=compression_level(runtime.settings, options.compression),
    )
    attempt.audit("shard.started", f"shard {number} attempt {lease.attempts} by {lease.owner}")
    with (
        LeaseKeeper(runtime.connect, lease, lease_seconds=runtime.worker.lease_seconds) as keeper,
        runtime.connect(autocommit=False) as reader,
    ):
        try:
            begin_snapshot(reader, snapshot_id=export["snapshot_id"])
        except (PermanentError, psycopg.errors.UndefinedObject) as exc:
            # PostgreSQL answers undefined_object for a snapshot whose exporter has ended.
            raise PermanentError(
                f"snapshot holder ended before shard {number} started: {exc}"
            ) from exc

        def open_batches(after: SourcePosition | None) -> Iterator[SourceBatch]:
            return iter_shard_batches(reader, users=users, options=options, after=after)

        written = write_with_resume(attempt, keeper, job, open_batches)
        reader.rollback()
        keeper.check()
    fields = result_fields(written, object_key=store.key(written.name))
    complete(attempt.conn, lease, {name: fields[name] for name in SHARD_RESULT_FIELDS})
    attempt.audit(
        "shard.completed",
        f"shard {number} wrote {written.name}: {fields['size_bytes']} bytes, "
        f"{fields['record_count']} records",
        details={"sha256": fields["sha256"]},
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)
