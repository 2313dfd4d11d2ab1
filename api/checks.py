"""Readiness checks for the backing services: a trivial round trip each, failing fast.

A check returns None when the service answers and raises `RetryableError` when it does not.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import redis

from pipelines.errors import RetryableError

# Seconds a readiness probe waits for a service: probes run every few seconds, and a service
# slower than this to answer a ping is not ready for traffic.
CHECK_TIMEOUT_SECONDS = 2.0
AMQP_DEFAULT_PORT = 5672
AMQPS_DEFAULT_PORT = 5671


def redis_check(client: redis.Redis) -> Callable[[], None]:
    """Return a check that PINGs Redis."""

    def check() -> None:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise RetryableError(f"redis unavailable: {type(exc).__name__}") from exc

    return check


def tcp_check(host: str, port: int) -> Callable[[], None]:
    """Return a check that opens (and closes) a TCP connection."""

    def check() -> None:
        try:
            with socket.create_connection((host, port), timeout=CHECK_TIMEOUT_SECONDS):
                pass
        except OSError as exc:
            raise RetryableError(f"{host}:{port} unreachable: {exc}") from exc

    return check


def broker_check(url: str) -> Callable[[], None]:
    """Return the check for a Dramatiq broker URL: PING for Redis, a TCP connect for AMQP."""
    parts = urlsplit(url)
    if parts.scheme in {"amqp", "amqps"}:
        default = AMQPS_DEFAULT_PORT if parts.scheme == "amqps" else AMQP_DEFAULT_PORT
        return tcp_check(parts.hostname or "127.0.0.1", parts.port or default)
    return redis_check(
        redis.Redis.from_url(
            url,
            socket_timeout=CHECK_TIMEOUT_SECONDS,
            socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        )
    )
