"""Hold a bulk export's exported snapshot open for as long as its shards may need it.

`pg_export_snapshot()` names a snapshot only while the transaction that exported it stays open.
The planner exports it on a dedicated connection and hands that connection to a `SnapshotHolder`
thread in the same worker process; the planner's message is then acknowledged and its worker
thread freed (a holder blocking a worker thread could starve the shards it waits for).

The holder keeps the transaction open until every shard has ended (completed or failed), not
merely started: a shard whose worker is killed mid-upload resumes by adopting the same snapshot
again, which must still exist. Holding it costs little more than the running shards' own
REPEATABLE READ transactions, which hold the same xmin horizon. While it holds, the holder renews
the export's lease, updates its progress and runs the fan-in, so the export finishes even if the
last shard's own fan-in call failed. It lets go when the export has ended, when its lease is
lost, or after `BULK_SNAPSHOT_HOLD_SECONDS` (the export is then failed with that reason).

If the holder's process dies, the snapshot dies with it: a shard that starts (or resumes) later
cannot adopt it and fails with "snapshot holder ended before shard N started", the fan-in fails
the export naming those shards, and the export's expired lease lets maintenance fail it if no
shard is left to notice. Nothing waits for a snapshot that no longer exists.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import psycopg

from pipelines.errors import ExportError
from workers.fanin import finalize_if_done
from workers.rows import audit
from workers.runtime import Runtime
from workers.state import Lease, LeaseLostError, fail, renew, set_fields

logger = logging.getLogger(__name__)

# Seconds between looks at the shards: cheap (one indexed query) and quick to notice the end.
POLL_SECONDS: Final = 1.0


class SnapshotHolder(threading.Thread):
    """Own the snapshot's connection and the export's lease until the bulk export ends."""

    def __init__(self, runtime: Runtime, holder: psycopg.Connection[Any], lease: Lease) -> None:
        super().__init__(name=f"snapshot-{lease.row_id}", daemon=True)
        self._runtime = runtime
        self._holder = holder
        self._lease = lease
        self._quit = threading.Event()

    def stop(self) -> None:
        """Ask the holder to let go at its next poll."""
        self._quit.set()

    def run(self) -> None:
        """Hold the snapshot, renew the lease and fan in until the export ends."""
        export_id = self._lease.row_id
        reason = "the export ended"
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._runtime.connect()
            reason = self._hold(conn)
        except (ExportError, psycopg.Error) as exc:
            reason = f"the holder stopped on an error: {exc}"
            logger.exception("bulk export %s: snapshot holder failed", export_id)
        finally:
            self._holder.close()  # ends the transaction: the snapshot is gone from here on
            if conn is not None:
                try:
                    audit(conn, export_id, "export.snapshot_released", f"released: {reason}")
                except psycopg.Error:
                    logger.warning("bulk export %s: could not log the release", export_id)
                conn.close()
        logger.info("bulk export %s: snapshot released (%s)", export_id, reason)

    def _hold(self, conn: psycopg.Connection[Any]) -> str:
        worker = self._runtime.worker
        export_id = self._lease.row_id
        deadline = time.monotonic() + worker.snapshot_hold_seconds
        next_renewal = time.monotonic() + worker.lease_seconds / 3
        shown = -1
        while not self._quit.wait(POLL_SECONDS):
            if finalize_if_done(self._runtime, conn, export_id):
                return "every shard has ended"
            done, total, status = _shard_progress(conn, export_id)
            if status != "running":
                return f"the export is {status}"
            try:
                progress = min(99, done * 100 // total) if total else 0
                if progress != shown:
                    set_fields(conn, self._lease, {"progress": progress})
                    shown = progress
                if time.monotonic() >= next_renewal:
                    renew(conn, self._lease, lease_seconds=worker.lease_seconds)
                    next_renewal = time.monotonic() + worker.lease_seconds / 3
                if time.monotonic() >= deadline:
                    message = (
                        f"the bulk export did not finish within BULK_SNAPSHOT_HOLD_SECONDS "
                        f"({worker.snapshot_hold_seconds} s); {done} of {total} shards ended"
                    )
                    fail(conn, self._lease, code="snapshot_timeout", message=message)
                    audit(conn, export_id, "export.failed", message, level="error")
                    return message
            except LeaseLostError:
                return "the export's lease was taken over"
        return "the worker is shutting down"


def _shard_progress(conn: psycopg.Connection[Any], export_id: str) -> tuple[int, int, str]:
    """Return ended shards, all shards and the export's status."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE s.status NOT IN ('queued', 'running')), count(s.id),"
        " e.status FROM data_exports e LEFT JOIN export_shards s ON s.export_id = e.id"
        " WHERE e.id = %s GROUP BY e.status",
        (export_id,),
    ).fetchone()
    if row is None:
        return 0, 0, "gone"
    return int(row[0]), int(row[1]), str(row[2])
