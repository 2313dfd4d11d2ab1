"""`exportctl queues [--requeue-dead [QUEUE ...]]`: the broker's queues as Dramatiq keeps them.

The figures come from `workers.queue_stats` (ready, in flight, delayed and dead messages of a
Redis broker, and the oldest ready message). `--requeue-dead` moves dead letters back to their
queue with a fresh retry budget, each move one MULTI transaction so a message is never lost or
doubled. RabbitMQ keeps these in its own queues: use its management tools.
"""

from __future__ import annotations

import argparse
import uuid

import orjson
import redis

from exportctl.environment import load_settings
from exportctl.output import Table, print_table
from pipelines.errors import PermanentError, RetryableError
from workers.queue_stats import (
    NAMESPACE,
    REDIS_SCHEMES,
    all_queues,
    inspect_queues,
    message,
    text,
)

__all__ = ["all_queues", "inspect_queues", "register", "requeue_dead", "run"]

# Seconds Redis may take to answer before the command says so.
REDIS_TIMEOUT_SECONDS = 5.0


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
    if not url.startswith(REDIS_SCHEMES):
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


def requeue_dead(client: redis.Redis, queue: str) -> int:
    """Move every dead letter of `queue` back onto it with its retry count reset."""
    dead_key = f"{NAMESPACE}:{queue}.XQ"
    moved = 0
    for member in client.zrange(dead_key, 0, -1):
        raw_id = text(member)
        raw = client.hget(f"{dead_key}.msgs", raw_id)
        pipe = client.pipeline(transaction=True)
        pipe.zrem(dead_key, raw_id)
        pipe.hdel(f"{dead_key}.msgs", raw_id)
        if raw is not None:
            dead = message(raw)
            new_id = str(uuid.uuid4())
            options = {**dead.get("options", {}), "redis_message_id": new_id, "retries": 0}
            options.pop("traceback", None)
            revived = {**dead, "queue_name": queue, "options": options}
            pipe.hset(f"{NAMESPACE}:{queue}.msgs", new_id, orjson.dumps(revived))
            pipe.rpush(f"{NAMESPACE}:{queue}", new_id)
            moved += 1
        pipe.execute()
    return moved


def _safe(url: str) -> str:
    """Return the URL without its password."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('://', 1)[0]}://***@{tail}" if at else url
