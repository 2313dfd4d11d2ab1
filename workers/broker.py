"""Build the Dramatiq broker from a URL: Redis by default, RabbitMQ for amqp:// URLs.

The middleware is explicit: retries with backoff and jitter (permanent errors are never retried,
see each actor's `throws`), time and age limits, shutdown notices, callbacks and the current
message. Prefetch is Dramatiq's `dramatiq_queue_prefetch` environment variable, which Dramatiq
reads when it is imported: run workers with it equal to `--threads` (long jobs must not wait
behind a prefetched message). Worker processes add Dramatiq's Prometheus middleware, exposed by
the project's own server on 127.0.0.1 (`workers.metrics_server`); producers (the API, the
scheduler) do not. Workers also read a Redis broker's configuration at start and log what in it
can lose queued messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import redis
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

logger = logging.getLogger(__name__)

# Default retries of a retryable failure: with 5 s → 5 min exponential backoff, 5 retries ride
# out a restart of PostgreSQL, Redis or the bucket without piling up retries for hours.
MAX_RETRIES: Final = 5
MIN_BACKOFF_MS: Final = 5_000
MAX_BACKOFF_MS: Final = 300_000
# Longest an actor may run unless it says otherwise: an hour covers a large shard.
TIME_LIMIT_MS: Final = 3_600_000
# A message older than a day is stale (the export it names has been failed by maintenance).
MAX_AGE_MS: Final = 86_400_000


def build_middleware() -> list[Middleware]:
    """Return the middleware every worker and producer shares."""
    return [
        AgeLimit(max_age=MAX_AGE_MS),
        TimeLimit(time_limit=TIME_LIMIT_MS),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=MAX_RETRIES, min_backoff=MIN_BACKOFF_MS, max_backoff=MAX_BACKOFF_MS),
        CurrentMessage(),
    ]


def worker_metrics() -> Middleware:
    """Return Dramatiq's Prometheus middleware, served by the project's loopback server."""
    # Imported here: the module creates its metrics folder on import, which producers skip.
    from dramatiq.middleware.prometheus import Prometheus

    from workers.metrics_server import serve

    class WorkerMetrics(Prometheus):
        """Dramatiq's message metrics, exposed with the project's own by `serve`."""

        @property
        def forks(self) -> list[Callable[[], int]]:
            return [serve]

    return WorkerMetrics()


def create_broker(url: str, *, metrics: bool = False) -> Broker:
    """Return a Redis or RabbitMQ broker for `url` with the project's middleware."""
    middleware = build_middleware()
    if metrics:
        middleware.append(worker_metrics())
    if url.startswith(("amqp://", "amqps://")):
        # Publisher confirms: an enqueue returns only once RabbitMQ has taken the message.
        return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    return RedisBroker(url=url, middleware=middleware)  # type: ignore[no-untyped-call]


def redis_durability_problems(client: redis.Redis) -> list[str]:
    """Return what in a Redis broker's configuration can lose queued messages (empty: nothing
    seen, or CONFIG is not allowed, as on some managed services)."""
    try:
        policy = _config(client, "maxmemory-policy")
        appendonly = _config(client, "appendonly")
    except redis.ResponseError:
        return []
    problems = []
    # Dramatiq's keys carry no expiry, so only the allkeys-* policies can evict them.
    if policy.startswith("allkeys"):
        problems.append(
            f"maxmemory-policy is {policy}: Redis evicts queued messages when memory runs short; "
            "set it to noeviction"
        )
    if appendonly == "no":
        problems.append(
            "appendonly is no: a Redis restart loses the messages queued since its last "
            "snapshot; set appendonly yes"
        )
    return problems


def log_broker_durability(url: str) -> None:
    """Log each setting of a Redis broker at `url` that can lose queued messages."""
    if url.startswith(("amqp://", "amqps://")):
        return
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        for problem in redis_durability_problems(client):
            logger.error("broker: %s (maintenance resends lost messages, but not promptly)",
                         problem)  # fmt: skip
    except redis.RedisError as exc:
        logger.warning("broker: could not read its configuration: %s", exc)
    finally:
        client.close()


def _config(client: redis.Redis, name: str) -> str:
    value = client.config_get(name).get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)
