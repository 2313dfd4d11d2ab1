"""The backlog gauges of the API's /metrics against a real Redis broker and PostgreSQL.

Queue depth, in flight and dead letters per queue, the age of the oldest waiting message, and
the bytes of completed exports, as the dashboard and the alerts read them.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import api.app
from api.database import ThreadLocalDatabase
from api.metrics import ApiMetrics, BacklogCollector, storage_used_bytes
from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from workers.broker import create_broker
from workers.dispatch import Dispatcher
from workers.queue_stats import queue_reader

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """Put back the root logger's handlers, which `get_app` replaces with its own."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture
def app_databases(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ThreadLocalDatabase]]:
    """Record the databases `get_app` opens, and close their connections afterwards."""
    opened: list[ThreadLocalDatabase] = []

    class Recorded(ThreadLocalDatabase):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            opened.append(self)

    monkeypatch.setattr(api.app, "ThreadLocalDatabase", Recorded)
    try:
        yield opened
    finally:
        for database in opened:
            database.close()


def _samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _queue(samples: Samples, name: str, queue: str) -> float:
    return samples[(name, (("queue", queue),))]


def _enqueue(url: str, *, normal: int, high: int = 0, verify: int = 0) -> Dispatcher:
    dispatcher = Dispatcher(create_broker(url))
    for number in range(normal):
        dispatcher.enqueue_user_export(f"normal-{number}")
    for number in range(high):
        dispatcher.enqueue_user_export(f"high-{number}", priority="high")
    for number in range(verify):
        dispatcher.enqueue_verification(f"verify-{number}")
    return dispatcher


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _add_export(conn: Any, user_id: str, *, status: str, size: int | None) -> None:
    options = parse_options("json", {"compression": "zstd"}, default_compression="zstd")
    created = create_export(conn, NewExport(user_id, "user", options))
    fields = {
        "completed": (
            "status = 'completed', object_key = 'k', content_size_bytes = %(size)s,"
            " record_count = 1, sha256 = repeat('a', 64), content_sha256 = repeat('b', 64),"
            " finished_at = now()"
        ),
        "expired": (
            "status = 'expired', object_key = 'k', content_size_bytes = %(size)s,"
            " record_count = 1, sha256 = repeat('a', 64), content_sha256 = repeat('b', 64),"
            " finished_at = now(), purged_at = now()"
        ),
        "failed": "status = 'failed', error_message = 'broken', finished_at = now()",
        "queued": "status = 'queued'",
    }[status]
    conn.execute(
        f"UPDATE data_exports SET size_bytes = %(size)s, {fields} WHERE id = %(id)s",
        {"size": size, "id": created.row["id"]},
    )


def test_api_metrics_report_queue_depth_dead_letters_and_stored_bytes(
    settings_env: dict[str, str],
    broker_url: str,
    keep_logging: None,
    app_databases: list[ThreadLocalDatabase],
) -> None:
    env = {**settings_env, "REDIS_URL": broker_url}
    env.pop("BROKER_URL", None)
    with connect(env["DATABASE_URL"]) as conn:
        seed_database(conn, users=3, max_files=2, files=3, seed=7)
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        user_id = str(user[0])
        for status, size in [
            ("completed", 1_000),
            ("completed", 234_567),
            ("expired", 50_000),
            ("failed", 7),
            ("queued", None),
        ]:
            _add_export(conn, user_id, status=status, size=size)
        conn.commit()
    _enqueue(broker_url, normal=4, high=1, verify=2)
    broker = create_broker(broker_url)
    broker.declare_queue("exports")
    consumer = broker.consume("exports", prefetch=2, timeout=1000)
    taken = [next(consumer), next(consumer)]
    assert taken[0] is not None
    assert taken[1] is not None
    consumer.nack(taken[0])  # failed for good: a dead letter; the other one stays in flight

    text = falcon.testing.TestClient(api.app.get_app(env)).simulate_get("/metrics").text

    samples = _samples(text)
    assert samples[("data_export_broker_up", ())] == 1
    assert _queue(samples, "data_export_queue_messages", "exports") == 2
    assert _queue(samples, "data_export_queue_in_flight_messages", "exports") == 1
    assert _queue(samples, "data_export_queue_dead_messages", "exports") == 1
    assert _queue(samples, "data_export_queue_messages", "exports.high") == 1
    assert _queue(samples, "data_export_queue_messages", "verify") == 2
    assert _queue(samples, "data_export_queue_messages", "bulk") == 0
    assert _queue(samples, "data_export_queue_oldest_message_age_seconds", "exports") > 0
    assert _queue(samples, "data_export_queue_oldest_message_age_seconds", "bulk") == 0
    assert samples[("data_export_storage_used_bytes", ())] == 1_000 + 234_567
    assert len(app_databases) == 1
    consumer.close()


def _render(collector: BacklogCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    return _samples(generate_latest(registry).decode())


def test_oldest_message_age_grows_while_the_message_waits(broker_url: str) -> None:
    _enqueue(broker_url, normal=1)
    collector = BacklogCollector(queue_reader(broker_url), cache_seconds=0)
    age = "data_export_queue_oldest_message_age_seconds"

    first = _queue(_render(collector), age, "exports")
    time.sleep(0.3)
    later = _queue(_render(collector), age, "exports")

    assert 0 <= first < later < 60
    assert later - first >= 0.25


def test_a_reading_is_reused_for_the_cache_interval_then_taken_again(broker_url: str) -> None:
    now = [1000.0]
    collector = BacklogCollector(queue_reader(broker_url), cache_seconds=5, clock=lambda: now[0])
    _enqueue(broker_url, normal=2)
    assert _queue(_render(collector), "data_export_queue_messages", "exports") == 2

    _enqueue(broker_url, normal=3)
    now[0] += 4.9
    assert _queue(_render(collector), "data_export_queue_messages", "exports") == 2
    now[0] += 0.2
    assert _queue(_render(collector), "data_export_queue_messages", "exports") == 5


def test_an_unreachable_broker_is_reported_and_the_stored_bytes_still_are(
    database_url: str,
) -> None:
    database = ThreadLocalDatabase(database_url)

    def read_storage() -> int:
        with database.transaction() as conn:
            return storage_used_bytes(conn)

    down = queue_reader(f"redis://127.0.0.1:{_closed_port()}/0")
    started = time.monotonic()
    samples = _samples(ApiMetrics(read_queues=down, read_storage=read_storage).render().decode())
    database.close()

    assert time.monotonic() - started < 5
    assert samples[("data_export_broker_up", ())] == 0
    assert not any(name == "data_export_queue_messages" for name, _ in samples)
    assert samples[("data_export_storage_used_bytes", ())] == 0
