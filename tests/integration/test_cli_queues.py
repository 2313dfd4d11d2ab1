"""`exportctl queues` against a real Redis broker: depth, in flight, dead letters, requeue."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis

from exportctl.cli import main
from exportctl.commands.queues import inspect_queues, requeue_dead
from workers.broker import create_broker
from workers.dispatch import Dispatcher

if TYPE_CHECKING:
    from exportctl.devstack import StackEndpoints


@pytest.fixture
def broker_url(redis_url: str) -> Iterator[str]:
    url = f"{redis_url.rsplit('/', 1)[0]}/{random.randint(1, 15)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def _by_name(client: redis.Redis, *names: str) -> dict[str, Any]:
    return {stats.name: stats for stats in inspect_queues(client, names)}


def test_queues_count_ready_in_flight_and_dead_and_requeue_dead_letters(broker_url: str) -> None:
    broker = create_broker(broker_url)
    for queue in ("exports.high", "exports", "verify"):
        broker.declare_queue(queue)
    dispatcher = Dispatcher(broker)
    for number in range(4):
        dispatcher.enqueue_user_export(f"export-{number}")
    dispatcher.enqueue_verification("export-0")
    consumer = broker.consume("exports", prefetch=2, timeout=1000)
    taken = [next(consumer), next(consumer)]
    assert all(message is not None for message in taken)
    consumer.nack(taken[0])  # failed for good: a dead letter

    client = redis.Redis.from_url(broker_url)
    stats = _by_name(client, "exports", "verify", "exports.high")
    assert (stats["exports"].ready, stats["exports"].in_flight, stats["exports"].dead) == (2, 1, 1)
    assert stats["exports"].oldest_ready_seconds is not None
    assert (stats["verify"].ready, stats["verify"].dead) == (1, 0)
    assert stats["exports.high"].ready == 0
    assert stats["exports.high"].oldest_ready_seconds is None

    assert requeue_dead(client, "exports") == 1
    after = _by_name(client, "exports")["exports"]
    assert (after.ready, after.dead) == (3, 0)
    last_id = client.lindex("dramatiq:exports", -1)
    assert last_id is not None
    message = orjson.loads(client.hget("dramatiq:exports.msgs", last_id) or b"{}")
    assert message["actor_name"] == "export_user"
    assert message["args"] == list(taken[0].args)
    assert message["options"]["retries"] == 0
    consumer.close()
    client.close()


def test_command_prints_every_project_queue(
    stack: StackEndpoints,
    broker_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**stack.as_env(), "REDIS_URL": broker_url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("BROKER_URL", raising=False)
    Dispatcher(create_broker(broker_url)).enqueue_verification("export-9")
    assert main(["queues", "--requeue-dead"]) == 0
    output = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.strip()}
    for queue in ("exports.high", "exports", "exports.low", "bulk", "verify", "maintenance"):
        assert queue in lines, output
    assert lines["verify"][:4] == ["1", "0", "0", "0"]
