"""`exportctl queues [--requeue-dead [QUEUE ...]]`: the broker's queues as Dramatiq keeps them.

Reads the Redis keys of Dramatiq's Redis broker: `dramatiq:<queue>` (ready ids), `.msgs` (every
live message), `__acks__.<worker>.<queue>` (in flight), `.DQ` (delayed retries) and `.XQ` (dead
letters). `--requeue-dead` moves dead letters back to their queue with a fresh retry budget, each
move one MULTI transaction so a message is never lost or doubled. RabbitMQ keeps these in its own
queues: use its management tools.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from exportctl.environment import load_settings
from exportctl.output import Table, print_table
from pipelines.errors import PermanentError, RetryableError
from workers import dispatch

NAMESPACE = "dramatiq"  # Dramatiq's RedisBroker default
KNOWN_QUEUES = (
    dispatch.HIGH_EXPORTS_QUEUE,
    dispatch.EXPORTS_QUEUE,
    dispatch.LOW_EXPORTS_QUEUE,
    dispatch.BULK_QUEUE,
    dispatch.VERIFY_QUEUE,
    dispatch.MAINTENANCE_QUEUE,
)
# Keys per SCAN step: a broker holds a handful of ack sets per worker, so one or two steps do.
SCAN_COUNT = 500
# Seconds Redis may take to answer before the command says so.
REDIS_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class QueueStats:
    """One queue: ready, in flight, delayed and dead messages, and its oldest ready message."""

    name: str
    ready: int
    in_flight: int
    delayed: int
    dead: int
    oldest_ready_seconds: float | None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl queues`."""
    parser = subparsers.add_parser(
        "queues", help="depth, in flight and dead letters of the broker's queues"
    )
    parser.add_argument(
        "--requeue-dead",
        nargs="*",
        metavar="QUEUE",
        default=None,
        help="move dead letters back to their queue (all queues when none is named)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the queues; move dead letters back first when asked."""
    settings = load_settings()
    url = settings.effective_broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise PermanentError("exportctl queues reads Redis brokers; for RabbitMQ use its tools")
    client = redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        if args.requeue_dead is not None:
            for queue in args.requeue_dead or all_queues(client):
                moved = requeue_dead(client, queue)
                print(f"{queue}: {moved} dead letter(s) queued again")
        rows = [
            (
                stats.name,
                str(stats.ready),
                str(stats.in_flight),
                str(stats.delayed),
                str(stats.dead),
                "-" if stats.oldest_ready_seconds is None else f"{stats.oldest_ready_seconds:.0f}",
            )
            for stats in inspect_queues(client, all_queues(client))
        ]
    except redis.RedisError as exc:
        raise RetryableError(f"the broker at {_safe(url)} did not answer: {exc}") from exc
    columns = ("queue", "ready", "in flight", "delayed", "dead", "oldest ready (s)")
    print_table(Table("Broker queues", columns, rows))
    return 0


def all_queues(client: redis.Redis) -> list[str]:
    """Return the project's queues and any other queue that holds messages, in a stable order."""
    found = set()
    for key in client.scan_iter(match=f"{NAMESPACE}:*.msgs", count=SCAN_COUNT):
        name = _text(key)[len(NAMESPACE) + 1 : -len(".msgs")]
        for suffix in (".XQ", ".DQ"):
            name = name.removesuffix(suffix)
        if not name.startswith("__"):
            found.add(name)
    return [*KNOWN_QUEUES, *sorted(found - set(KNOWN_QUEUES))]


def inspect_queues(client: redis.Redis, queues: Sequence[str]) -> list[QueueStats]:
    """Return the figures of each queue."""
    in_flight = _in_flight(client)
    now_ms = time.time() * 1000
    report = []
    for queue in queues:
        key = f"{NAMESPACE}:{queue}"
        pipe = client.pipeline(transaction=False)
        pipe.llen(key)
        pipe.llen(f"{key}.DQ")
        pipe.zcard(f"{key}.XQ")
        pipe.lindex(key, 0)
        ready, delayed, dead, first = pipe.execute()
        oldest = None
        if first is not None:
            raw = client.hget(f"{key}.msgs", first)
            timestamp = _message(raw).get("message_timestamp") if raw else None
            if isinstance(timestamp, int | float):
                oldest = max(0.0, (now_ms - timestamp) / 1000)
        flying = in_flight.get(queue, 0) + in_flight.get(f"{queue}.DQ", 0)
        report.append(QueueStats(queue, ready, flying, delayed, dead, oldest))
    return report


def requeue_dead(client: redis.Redis, queue: str) -> int:
    """Move every dead letter of `queue` back onto it with its retry count reset."""
    dead_key = f"{NAMESPACE}:{queue}.XQ"
    moved = 0
    for member in client.zrange(dead_key, 0, -1):
        raw_id = _text(member)
        raw = client.hget(f"{dead_key}.msgs", raw_id)
        pipe = client.pipeline(transaction=True)
        pipe.zrem(dead_key, raw_id)
        pipe.hdel(f"{dead_key}.msgs", raw_id)
        if raw is not None:
            message = _message(raw)
            new_id = str(uuid.uuid4())
            options = {**message.get("options", {}), "redis_message_id": new_id, "retries": 0}
            options.pop("traceback", None)
            message = {**message, "queue_name": queue, "options": options}
            pipe.hset(f"{NAMESPACE}:{queue}.msgs", new_id, orjson.dumps(message))
            pipe.rpush(f"{NAMESPACE}:{queue}", new_id)
            moved += 1
        pipe.execute()
    return moved


def _in_flight(client: redis.Redis) -> dict[str, int]:
    """Count unacknowledged messages per queue over every worker's ack sets."""
    prefix = f"{NAMESPACE}:__acks__."
    counts: dict[str, int] = {}
    for key in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
        # `<worker id>.<queue>`: the worker id is a UUID, which holds no dot.
        _, _, queue = _text(key)[len(prefix) :].partition(".")
        if queue:
            counts[queue] = counts.get(queue, 0) + int(client.scard(key))
    return counts


def _message(raw: Any) -> dict[str, Any]:
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)


def _safe(url: str) -> str:
    """Return the URL without its password."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('://', 1)[0]}://***@{tail}" if at else url
