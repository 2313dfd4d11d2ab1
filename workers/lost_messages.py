"""Find which queued jobs still have a message in the broker, so maintenance can resend the rest.

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

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

import redis

from pipelines.errors import RetryableError
from workers.queue_stats import (
    DELAY_SUFFIX,
    NAMESPACE,
    READ_TIMEOUT_SECONDS,
    REDIS_SCHEMES,
    message,
)

# Messages read per HSCAN step: one round trip per 500 live messages.
SCAN_COUNT: Final = 500


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
