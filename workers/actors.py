"""The Dramatiq actors, and the worker entry point: `dramatiq workers.actors --queues ...`.

Dramatiq's CLI imports this module to find the broker and the actors, so this is the one module
that reads the environment at import: it builds the settings, the broker and the process runtime.
Actors are thin: they carry ids, call one job function and map its outcome. Names and queues are
permanent (messages outlive deploys). Permanent errors and lost leases are never retried; a
message that finds its row leased by another worker is retried later, because a redelivery after
a crash can arrive before the dead worker's lease has expired.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

import dramatiq

from pipelines.errors import PermanentError, RetryableError
from pipelines.logs import configure_logging, log_context
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers import dispatch, metrics_server
from workers.attempt import Outcome
from workers.broker import create_broker, log_broker_durability
from workers.bulk import run_plan, run_shard
from workers.config import WorkerSettings
from workers.lost_messages import resend_lost_messages
from workers.maintenance import (
    abort_abandoned_uploads,
    cleanup_exports,
    deliver_webhooks,
    fail_stuck_exports,
    requeue_verifications,
    reverify_stored_exports,
)
from workers.metrics import use_multiprocess_dir
from workers.runtime import Runtime
from workers.state import LeaseLostError
from workers.user_export import run_user_export
from workers.verification import VERIFY_TIME_LIMIT_MS, run_verification

logger = logging.getLogger(__name__)

NOT_RETRIED: Final = (PermanentError, LeaseLostError)
# Longest runs: a user export is capped at EXPORT_MAX_SIZE (minutes); a shard at an hour of work;
# verification reads an export back; sweeps are short. TimeLimit cannot interrupt a blocking
# call, so statement and socket timeouts bound those.
EXPORT_TIME_LIMIT_MS: Final = 30 * 60_000
SHARD_TIME_LIMIT_MS: Final = 2 * 3_600_000
PLAN_TIME_LIMIT_MS: Final = 10 * 60_000
MAINTENANCE_TIME_LIMIT_MS: Final = 10 * 60_000
# Retries of a retryable failure or of a busy lease (5 s to 5 min backoff, about 10 minutes).
JOB_MAX_RETRIES: Final = 6


class LeaseBusyError(RetryableError):
    """Another worker holds the row's lease; try again once it may have expired."""


def _runtime_from_env() -> Runtime:
    environ = os.environ  # noqa: TID251 - the worker process's entry point
    settings = Settings.from_env(environ)
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    # Before anything imports prometheus-client, which picks its value store on import.
    use_multiprocess_dir(environ, environ)
    # Dramatiq's own exposition server would bind 0.0.0.0 by default; ours replaces it, and this
    # keeps Dramatiq's module on loopback too should anything start its server.
    environ.setdefault(metrics_server.HOST_VARIABLE, metrics_server.DEFAULT_HOST)
    broker = create_broker(settings.effective_broker_url, metrics=True)
    log_broker_durability(settings.effective_broker_url)
    dramatiq.set_broker(broker)
    for queue in dispatch.PRIORITY_QUEUES:  # export_user also runs from these
        broker.declare_queue(queue)
    return Runtime(
        settings=settings,
        worker=WorkerSettings.from_settings(settings, environ),
        s3=s3_client_from_settings(settings),
        queue=dispatch.Dispatcher(broker),
    )


RUNTIME: Final = _runtime_from_env()


def _settle(outcome: Outcome, what: str) -> None:
    """Turn a busy lease into a retry; log everything else."""
    if outcome is Outcome.BUSY:
        raise LeaseBusyError(f"{what} is leased by another worker; retrying later")
    logger.info("%s: %s", what, outcome.value)


def _options(queue: str, time_limit: int, **extra: Any) -> dict[str, Any]:
    return {
        "queue_name": queue,
        "time_limit": time_limit,
        "max_retries": JOB_MAX_RETRIES,
        "throws": NOT_RETRIED,
        **extra,
    }


@dramatiq.actor(
    actor_name=dispatch.EXPORT_USER, **_options(dispatch.EXPORTS_QUEUE, EXPORT_TIME_LIMIT_MS)
)
def export_user(export_id: str, request_id: str | None = None) -> None:
    """Export one user's data."""
    with log_context(export_id=export_id, request_id=request_id):
        _settle(run_user_export(RUNTIME, export_id, request_id=request_id), f"export {export_id}")


@dramatiq.actor(
    actor_name=dispatch.PLAN_BULK_EXPORT, **_options(dispatch.BULK_QUEUE, PLAN_TIME_LIMIT_MS)
)
def plan_bulk_export(export_id: str, request_id: str | None = None) -> None:
    """Plan a bulk export's shards on one snapshot and enqueue them."""
    with log_context(export_id=export_id, request_id=request_id):
        outcome, _ = run_plan(RUNTIME, export_id, request_id=request_id)
        _settle(outcome, f"bulk export {export_id}")


@dramatiq.actor(
    actor_name=dispatch.EXPORT_SHARD, **_options(dispatch.BULK_QUEUE, SHARD_TIME_LIMIT_MS)
)
def export_shard(export_id: str, shard_id: str) -> None:
    """Write one shard of a bulk export."""
    with log_context(export_id=export_id):
        _settle(run_shard(RUNTIME, export_id, shard_id), f"shard {shard_id} of {export_id}")


@dramatiq.actor(
    actor_name=dispatch.VERIFY_EXPORT, **_options(dispatch.VERIFY_QUEUE, VERIFY_TIME_LIMIT_MS)
)
def verify_export(export_id: str, request_id: str | None = None) -> None:
    """Verify a completed export and record its analytics."""
    with log_context(export_id=export_id, request_id=request_id):
        run_verification(RUNTIME, export_id)


@dramatiq.actor(
    actor_name=dispatch.CLEANUP_EXPORTS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def cleanup_exports_actor(request_id: str | None = None) -> None:
    """Delete exports past their retention."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d export(s) expired", cleanup_exports(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.ABORT_ABANDONED_UPLOADS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def abort_abandoned_uploads_actor(request_id: str | None = None) -> None:
    """Abort multipart uploads nothing can complete."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d upload(s) aborted", abort_abandoned_uploads(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.FAIL_STUCK_EXPORTS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def fail_stuck_exports_actor(request_id: str | None = None) -> None:
    """Fail jobs whose worker died and that nobody resumed."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d stuck job(s) failed", fail_stuck_exports(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.REQUEUE_VERIFICATIONS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def requeue_verifications_actor(request_id: str | None = None) -> None:
    """Queue verification again where the verifier's message was lost."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d verification(s) queued again", requeue_verifications(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.DELIVER_WEBHOOKS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def deliver_webhooks_actor(request_id: str | None = None) -> None:
    """Send the webhook calls still owed."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d webhook call(s) attempted", deliver_webhooks(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.RESEND_LOST_MESSAGES,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def resend_lost_messages_actor(request_id: str | None = None) -> None:
    """Send again the messages of queued jobs the broker lost."""
    with log_context(request_id=request_id):
        logger.info("cleanup: %d lost message(s) sent again", resend_lost_messages(RUNTIME))


@dramatiq.actor(
    actor_name=dispatch.REVERIFY_STORED_EXPORTS,
    **_options(dispatch.MAINTENANCE_QUEUE, MAINTENANCE_TIME_LIMIT_MS, max_retries=2),
)
def reverify_stored_exports_actor(request_id: str | None = None) -> None:
    """Queue verification again of stored exports verified long ago."""
    with log_context(request_id=request_id):
        queued = reverify_stored_exports(RUNTIME)
        logger.info("cleanup: %d stored export(s) queued for another verification", queued)
