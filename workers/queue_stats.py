"""Read the broker's queues as Dramatiq's Redis broker keeps them: depth, in flight, delayed, dead.

Keys under `dramatiq:`: `<queue>` (ready ids, oldest first), `<queue>.msgs` (every live message),
`<queue>.DQ` (delayed retries), `<queue>.XQ` (dead letters), `__heartbeats__` (every worker id)
and `__acks__.<worker>.<queue>` (in flight). Shared by `exportctl queues` and the API's gauges;
it only reads, and never walks the keyspace for the project's own queues. RabbitMQ keeps these
figures in its own queues: read them with its management tools.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis

from pipelines.errors import RetryableError
from workers import dispatch

NAMESPACE: Final = "dramatiq"  # Dramatiq's RedisBroker default
KNOWN_QUEUES: Final = (
    dispatch.HIGH_EXPORTS_QUEUE,
    dispatch.EXPORTS_QUEUE,
    dispatch.LOW_EXPORTS_QUEUE,
    dispatch.BULK_QUEUE,
    dispatch.VERIFY_QUEUE,
    dispatch.MAINTENANCE_QUEUE,
)
# Keys per SCAN step when looking for queues the project does not name: a broker holds a few
# keys per queue, so one or two steps do.
SCAN_COUNT: Final = 500
# Seconds Redis may take to answer a reading before the reader says the broker is down: a
# scrape must answer well within Prometheus's 10 s default scrape timeout.
READ_TIMEOUT_SECONDS: Final = 2.0
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
DELAY_SUFFIX: Final = ".DQ"
DEAD_SUFFIX: Final = ".XQ"


@dataclass(frozen=True)
class QueueStats:
    """One queue: ready, in flight, delayed and dead messages, and its oldest ready message."""

    name: str
    ready: int
    in_flight: int
    delayed: int
    dead: int
    oldest_ready_seconds: float | None


def queue_reader(url: str) -> Callable[[], list[QueueStats]] | None:
    """Return a reader of the project's queues on the Redis broker at `url` (None if not Redis)."""
    if not url.startswith(REDIS_SCHEMES):
        return None
    client = redis.Redis.from_url(
        url, socket_timeout=READ_TIMEOUT_SECONDS, socket_connect_timeout=READ_TIMEOUT_SECONDS
    )

    def read() -> list[QueueStats]:
        try:
            return inspect_queues(client, KNOWN_QUEUES)
        except redis.RedisError as exc:
            raise RetryableError(f"the broker did not answer: {type(exc).__name__}") from exc

    return read


def all_queues(client: redis.Redis) -> list[str]:
    """Return the project's queues and any other queue that holds messages, in a stable order."""
    found = set()
    for key in client.scan_iter(match=f"{NAMESPACE}:*.msgs", count=SCAN_COUNT):
        name = text(key)[len(NAMESPACE) + 1 : -len(".msgs")]
        for suffix in (DEAD_SUFFIX, DELAY_SUFFIX):
            name = name.removesuffix(suffix)
        if not name.startswith("__"):
            found.add(name)
    return [*KNOWN_QUEUES, *sorted(found - set(KNOWN_QUEUES))]


def inspect_queues(
    client: redis.Redis, queues: Sequence[str], *, now: float | None = None
) -> list[QueueStats]:
    """Return the figures of each queue, read in two pipelined round trips."""
    now_ms = (time.time() if now is None else now) * 1000
    first = client.pipeline(transaction=False)
    first.zrange(f"{NAMESPACE}:__heartbeats__", 0, -1)
    for queue in queues:
        key = f"{NAMESPACE}:{queue}"
        first.llen(key)
        first.llen(key + DELAY_SUFFIX)
        first.zcard(key + DEAD_SUFFIX)
        first.lindex(key, 0)
    workers, *counts = first.execute()
    heads = [counts[index * 4 : index * 4 + 4] for index in range(len(queues))]

    # Every ack set belongs to a worker in the heartbeat set: Dramatiq drops a worker from it
    # only once its ack sets are gone.
    second = client.pipeline(transaction=False)
    for queue, (_, _, _, head) in zip(queues, heads, strict=True):
        if head is not None:
            second.hget(f"{NAMESPACE}:{queue}.msgs", head)
    for worker in workers:
        for queue in queues:
            acks = f"{NAMESPACE}:__acks__.{text(worker)}.{queue}"
            second.scard(acks)
            second.scard(acks + DELAY_SUFFIX)
    answers = iter(second.execute())

    oldest = {
        queue: _age_seconds(next(answers), now_ms)
        for queue, (_, _, _, head) in zip(queues, heads, strict=True)
        if head is not None
    }
    flying = dict.fromkeys(queues, 0)
    for _ in workers:
        for queue in queues:
            flying[queue] += int(next(answers)) + int(next(answers))
    return [
        QueueStats(queue, int(ready), flying[queue], int(delayed), int(dead), oldest.get(queue))
        for queue, (ready, delayed, dead, _) in zip(queues, heads, strict=True)
    ]


def message(raw: Any) -> dict[str, Any]:
    """Decode a stored message, or return an empty one when it is not a JSON object."""
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def text(key: Any) -> str:
    """Return a Redis key or member as text."""
    return key.decode() if isinstance(key, bytes) else str(key)


def _age_seconds(raw: Any, now_ms: float) -> float | None:
    """Return how long ago a stored message was first enqueued, when it says."""
    timestamp = message(raw).get("message_timestamp") if raw else None
    if isinstance(timestamp, int | float):
        return max(0.0, (now_ms - timestamp) / 1000)
    return None
