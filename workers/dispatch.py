"""Send job messages to the workers by actor name: what the API and the scheduler call.

Messages carry ids only. The dispatcher names actors and queues instead of importing the actors,
so a producer needs a broker but none of the worker's configuration. The names below are
permanent: messages already queued outlive a deploy.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import dramatiq
from dramatiq import Broker
from dramatiq.errors import DramatiqError
from redis.exceptions import RedisError

from pipelines.errors import RetryableError

logger = logging.getLogger(__name__)

EXPORTS_QUEUE: Final = "exports"
BULK_QUEUE: Final = "bulk"
VERIFY_QUEUE: Final = "verify"
MAINTENANCE_QUEUE: Final = "maintenance"
# User exports by priority, one queue each, so an urgent export never waits behind a backlog of
# routine ones (Dramatiq's own priority only reorders messages a worker already prefetched).
HIGH_EXPORTS_QUEUE: Final = "exports.high"
LOW_EXPORTS_QUEUE: Final = "exports.low"
USER_EXPORT_QUEUES: Final = {
    "high": HIGH_EXPORTS_QUEUE,
    "normal": EXPORTS_QUEUE,
    "low": LOW_EXPORTS_QUEUE,
}
# Queues no actor names as its own: workers declare them so `--queues` can select them.
PRIORITY_QUEUES: Final = (HIGH_EXPORTS_QUEUE, LOW_EXPORTS_QUEUE)

EXPORT_USER: Final = "export_user"
PLAN_BULK_EXPORT: Final = "plan_bulk_export"
EXPORT_SHARD: Final = "export_shard"
VERIFY_EXPORT: Final = "verify_export"
CLEANUP_EXPORTS: Final = "cleanup_exports"
ABORT_ABANDONED_UPLOADS: Final = "abort_abandoned_uploads"
FAIL_STUCK_EXPORTS: Final = "fail_stuck_exports"
REQUEUE_VERIFICATIONS: Final = "requeue_verifications"
DELIVER_WEBHOOKS: Final = "deliver_webhooks"
RESEND_LOST_MESSAGES: Final = "resend_lost_messages"
REVERIFY_STORED_EXPORTS: Final = "reverify_stored_exports"
# A cleanup run, in the order its messages are sent: lost messages first (a resent job is then
# not failed as stuck), expiry after the verifications, owed webhook calls last.
MAINTENANCE_SWEEPS: Final = (
    RESEND_LOST_MESSAGES,
    FAIL_STUCK_EXPORTS,
    REQUEUE_VERIFICATIONS,
    REVERIFY_STORED_EXPORTS,
    ABORT_ABANDONED_UPLOADS,
    CLEANUP_EXPORTS,
    DELIVER_WEBHOOKS,
)


class Dispatcher:
    """Enqueue the workers' messages on a Dramatiq broker."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def enqueue_user_export(
        self, export_id: str, *, request_id: str | None = None, priority: str = "normal"
    ) -> None:
        """Queue the export of one user's data on its priority's queue."""
        queue = USER_EXPORT_QUEUES.get(priority)
        if queue is None:
            raise ValueError(f"unknown priority {priority!r}")
        self._send(queue, EXPORT_USER, export_id, request_id=request_id)

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue the planning of a bulk export."""
        self._send(BULK_QUEUE, PLAN_BULK_EXPORT, export_id, request_id=request_id)

    def enqueue_shard(self, export_id: str, shard_id: str) -> None:
        """Queue one shard of a bulk export."""
        self._send(BULK_QUEUE, EXPORT_SHARD, export_id, shard_id)

    def enqueue_verification(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue a verification run of a completed export."""
        self._send(VERIFY_QUEUE, VERIFY_EXPORT, export_id, request_id=request_id)

    def enqueue_cleanup(self, *, request_id: str | None = None) -> None:
        """Queue a cleanup run: lost messages, stuck jobs, lost verifications, stored exports due
        for another verification, abandoned uploads, expiry, and webhook calls still owed."""
        for sweep in MAINTENANCE_SWEEPS:
            self._send(MAINTENANCE_QUEUE, sweep, request_id=request_id)

    def _send(self, queue: str, actor: str, *args: str, **kwargs: Any) -> None:
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue,
            actor_name=actor,
            args=tuple(args),
            kwargs={name: value for name, value in kwargs.items() if value is not None},
            options={},
        )
        try:
            self._broker.enqueue(message)
        except (DramatiqError, RedisError, OSError) as exc:
            raise RetryableError(f"the broker did not take the {actor} message: {exc}") from exc
        logger.info("enqueued %s %s on %s", actor, " ".join(args), queue)
