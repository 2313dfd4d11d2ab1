"""Send again the message of each queued job the broker no longer holds (a maintenance sweep).

A queued export or bulk shard runs when a worker takes its message. Redis can lose messages (a
crash inside its fsync interval, a failover to a replica that lagged, a flush), and a process
can die between committing a row and sending its message (the API, the scheduler, a bulk
planner). Either leaves a row `queued` that nothing will run.

Dramatiq's Redis broker keeps every live message (waiting, delayed for a retry, or being worked
on) in the `<queue>.msgs` and `<queue>.DQ.msgs` hashes until a worker acknowledges it, and a
worker acknowledges a job's message only after the job has claimed its row. So a row still
queued well after its message was sent, whose message is in neither hash, was lost; sending it
again is safe, because a duplicate finds its row claimed or ended and does nothing. RabbitMQ
keeps its messages to itself: there, nothing is read and nothing is resent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psycopg
import redis

from pipelines.errors import RetryableError
from workers import dispatch, metrics
from workers.queue_stats import (
    DELAY_SUFFIX,
    NAMESPACE,
    READ_TIMEOUT_SECONDS,
    REDIS_SCHEMES,
    message,
)
from workers.rows import audit

if TYPE_CHECKING:
    from workers.runtime import Runtime

logger = logging.getLogger(__name__)

# Messages read per HSCAN step: one round trip per 500 live messages.
SCAN_COUNT: Final = 500
# A queued job is looked up in the broker only this long after it was queued or last sent: the
# gap between committing a row and sending its message is milliseconds, so this is generous.
LOST_MESSAGE_GRACE_SECONDS: Final = 5 * 60
# Times one job's message is sent again; a job that keeps losing it is left to the stuck sweep.
MAX_RESENDS: Final = 3
RESENT_EVENT: Final = "export.message_resent"
# Queued exports, and queued shards, looked at per sweep; the next sweep takes the rest.
SWEEP_ROWS: Final = 500


@dataclass(frozen=True)
class Job:
    """What a message runs: the actor's name and its arguments (ids only)."""

    actor: str
    args: tuple[str, ...]


JobFinder = Callable[[Collection[Job]], set[Job]]


def present_jobs(client: redis.Redis, queues: Iterable[str], wanted: Collection[Job]) -> set[Job]:
    """Return which of `wanted` have a live message in `queues`, reading their messages in steps."""
    found: set[Job] = set()
    if not wanted:
        return found
    for queue in queues:
        for key in (f"{NAMESPACE}:{queue}.msgs", f"{NAMESPACE}:{queue}{DELAY_SUFFIX}.msgs"):
            for _, raw in client.hscan_iter(key, count=SCAN_COUNT):
                decoded = message(raw)
                args = decoded.get("args")
                job = Job(
                    str(decoded.get("actor_name")),
                    tuple(str(arg) for arg in args) if isinstance(args, list) else (),
                )
                if job in wanted:
                    found.add(job)
    return found


def job_finder(broker_url: str, queues: Iterable[str]) -> JobFinder | None:
    """Return a finder of live jobs on the Redis broker at `broker_url` (None if not Redis)."""
    if not broker_url.startswith(REDIS_SCHEMES):
        return None
    client = redis.Redis.from_url(
        broker_url, socket_timeout=READ_TIMEOUT_SECONDS, socket_connect_timeout=READ_TIMEOUT_SECONDS
    )
    names = tuple(queues)

    def find(wanted: Collection[Job]) -> set[Job]:
        try:
            return present_jobs(client, names, wanted)
        except redis.RedisError as exc:
            raise RetryableError(f"the broker did not answer: {type(exc).__name__}") from exc

    return find


@dataclass(frozen=True)
class _QueuedJob:
    """A job queued long enough that its message should be in the broker."""

    job: Job
    export_type: str  # "user", "bulk" (planning) or "shard"
    priority: str
    request_id: str | None
    resends: int

    @property
    def export_id(self) -> str:
        return self.job.args[0]

    @property
    def shard_id(self) -> str | None:
        return self.job.args[1] if len(self.job.args) > 1 else None


def resend_lost_messages(
    runtime: Runtime,
    *,
    grace_seconds: int = LOST_MESSAGE_GRACE_SECONDS,
    max_resends: int = MAX_RESENDS,
) -> int:
    """Send again the message of each queued export or shard the broker no longer holds.

    Each resend is audited (`export.message_resent`) and counted; after `max_resends` a job is
    left to `fail_stuck_exports`. Returns how many messages were sent again.
    """
    if runtime.live_jobs is None:
        return 0  # the broker is not Redis: its messages cannot be read
    resent = 0
    with runtime.connect() as conn:
        queued = {entry.job: entry for entry in _queued_jobs(conn, grace_seconds)}
        if not queued:
            return 0
        present = runtime.live_jobs(queued.keys())
        for entry in queued.values():
            if entry.job in present:
                continue
            what = "shard" if entry.shard_id else "export"
            if entry.resends >= max_resends:
                logger.warning(
                    "%s %s: message lost again after %d resends; left to the stuck-job sweep",
                    what, entry.shard_id or entry.export_id, entry.resends,
                )  # fmt: skip
                continue
            table = "export_shards" if entry.shard_id else "data_exports"
            still_queued = conn.execute(
                f"UPDATE {table} SET updated_at = now() WHERE id = %s AND status = 'queued'"
                " RETURNING id",
                (entry.shard_id or entry.export_id,),
            ).fetchone()
            if still_queued is None:
                continue  # a worker took it since it was read: its message was not lost
            _resend(runtime, entry)
            metrics.message_resent(kind=what)
            audit(
                conn,
                entry.export_id,
                RESENT_EVENT,
                f"the {what} was queued over {grace_seconds} s and the broker no longer held its "
                f"message; sent again ({entry.resends + 1} of {max_resends})",
                level="warning",
                shard_id=entry.shard_id,
            )
            resent += 1
    return resent


def _queued_jobs(conn: psycopg.Connection[Any], grace_seconds: int) -> list[_QueuedJob]:
    """Return the exports and shards queued for over `grace_seconds`, oldest first."""
    exports = conn.execute(
        "SELECT e.id::text, e.export_type, e.priority, e.request_id,"
        " (SELECT count(*) FROM export_logs l WHERE l.export_id = e.id"
        "  AND l.shard_id IS NULL AND l.event = %s)"
        " FROM data_exports e WHERE e.status = 'queued'"
        " AND e.updated_at < now() - make_interval(secs => %s)"
        " ORDER BY e.updated_at LIMIT %s",
        (RESENT_EVENT, grace_seconds, SWEEP_ROWS),
    ).fetchall()
    shards = conn.execute(
        "SELECT s.export_id::text, s.id::text,"
        " (SELECT count(*) FROM export_logs l WHERE l.export_id = s.export_id"
        "  AND l.shard_id = s.id AND l.event = %s)"
        " FROM export_shards s JOIN data_exports e ON e.id = s.export_id"
        " WHERE s.status = 'queued' AND e.status = 'running'"
        " AND s.updated_at < now() - make_interval(secs => %s)"
        " ORDER BY s.updated_at LIMIT %s",
        (RESENT_EVENT, grace_seconds, SWEEP_ROWS),
    ).fetchall()
    jobs = [
        _QueuedJob(
            Job(dispatch.EXPORT_USER if kind == "user" else dispatch.PLAN_BULK_EXPORT, (row_id,)),
            kind,
            priority,
            request_id,
            int(resends),
        )
        for row_id, kind, priority, request_id, resends in exports
    ]
    jobs += [
        _QueuedJob(
            Job(dispatch.EXPORT_SHARD, (export_id, shard_id)), "shard", "normal", None, int(resends)
        )
        for export_id, shard_id, resends in shards
    ]
    return jobs


def _resend(runtime: Runtime, entry: _QueuedJob) -> None:
    """Send one lost job's message again, as its first sender did."""
    queue = runtime.queue
    if entry.shard_id is not None:
        queue.enqueue_shard(entry.export_id, entry.shard_id)
    elif entry.export_type == "user":
        queue.enqueue_user_export(
            entry.export_id, request_id=entry.request_id, priority=entry.priority
        )
    else:
        queue.enqueue_bulk_export(entry.export_id, request_id=entry.request_id)
