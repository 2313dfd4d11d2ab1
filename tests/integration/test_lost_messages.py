"""Maintenance sends again the message of a queued export or shard that the real Redis broker no
longer holds, audits it, leaves alone the jobs whose message is waiting or delayed, and stops
after three resends."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import dramatiq
import psycopg
import pytest
import redis
from api_support import add_user
from dramatiq import Broker
from worker_processes import worker_environment

from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers import dispatch
from workers.broker import create_broker
from workers.config import WorkerSettings
from workers.dispatch import Dispatcher
from workers.lost_messages import MAX_RESENDS, RESENT_EVENT, Job, present_jobs, resend_lost_messages
from workers.runtime import Runtime

QUEUES = (*dispatch.USER_EXPORT_QUEUES.values(), dispatch.BULK_QUEUE)


@pytest.fixture
def env(settings_env: dict[str, str], s3_bucket: str, redis_url: str) -> dict[str, str]:
    """A worker's environment with its own emptied Redis database as the broker."""
    return worker_environment(settings_env, s3_bucket=s3_bucket, redis_url=redis_url)


@pytest.fixture
def broker(env: dict[str, str]) -> Iterator[Broker]:
    opened = create_broker(Settings.from_env(env).effective_broker_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def runtime(env: dict[str, str], broker: Broker) -> Runtime:
    settings = Settings.from_env(env)
    return Runtime(settings, WorkerSettings(lease_seconds=10), s3_client_from_settings(settings),
                   Dispatcher(broker))  # fmt: skip


@pytest.fixture
def broker_client(runtime: Runtime) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(runtime.settings.effective_broker_url)
    try:
        yield client
    finally:
        client.close()


def _queued(
    runtime: Runtime, export_type: str = "user", *, priority: str = "normal", age: int = 600
) -> str:
    """Create a queued export, last touched `age` seconds ago, and send no message for it."""
    user = str(add_user(runtime.settings.database_url))
    with connect(runtime.settings.database_url) as conn:
        options = parse_options("csv", {"compression": "zstd"}, default_compression="zstd")
        new = NewExport(user, export_type, options, priority=priority)  # type: ignore[arg-type]
        export_id = str(create_export(conn, new).row["id"])
        _age(conn, "data_exports", export_id, age)
        conn.commit()
    return export_id


def _age(conn: psycopg.Connection[Any], table: str, row_id: str, seconds: int) -> None:
    conn.execute(
        f"UPDATE {table} SET updated_at = now() - make_interval(secs => %s) WHERE id = %s",
        (seconds, row_id),
    )


def _resend_entries(runtime: Runtime, export_id: str) -> list[dict[str, Any]]:
    with (
        connect(runtime.settings.database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cursor,
    ):
        return cursor.execute(
            "SELECT level, message, shard_id::text FROM export_logs"
            " WHERE export_id = %s AND event = %s ORDER BY id",
            (export_id, RESENT_EVENT),
        ).fetchall()


def test_a_queued_export_whose_message_was_lost_is_sent_again_and_audited(
    runtime: Runtime, broker_client: redis.Redis
) -> None:
    waiting = _queued(runtime)
    runtime.queue.enqueue_user_export(waiting)
    lost = _queued(runtime, priority="high")
    lost_bulk = _queued(runtime, "bulk")

    assert resend_lost_messages(runtime) == 2

    jobs = {
        Job(dispatch.EXPORT_USER, (waiting,)),
        Job(dispatch.EXPORT_USER, (lost,)),
        Job(dispatch.PLAN_BULK_EXPORT, (lost_bulk,)),
    }
    assert present_jobs(broker_client, QUEUES, jobs) == jobs
    # The resent user export went to its own priority's queue, and only once.
    assert present_jobs(broker_client, [dispatch.HIGH_EXPORTS_QUEUE], jobs) == {
        Job(dispatch.EXPORT_USER, (lost,))
    }
    assert broker_client.hlen(f"dramatiq:{dispatch.EXPORTS_QUEUE}.msgs") == 1
    (entry,) = _resend_entries(runtime, lost)
    assert entry["level"] == "warning"
    assert "no longer held its message" in entry["message"]
    assert _resend_entries(runtime, waiting) == []
    assert resend_lost_messages(runtime, grace_seconds=0) == 0  # all present now


def test_a_recently_queued_export_is_not_looked_up(runtime: Runtime) -> None:
    _queued(runtime, age=0)
    assert resend_lost_messages(runtime) == 0


def test_lost_shard_messages_are_sent_again_and_delayed_retries_count_as_present(
    runtime: Runtime, broker: Broker, broker_client: redis.Redis
) -> None:
    export_id = _queued(runtime, "bulk")
    with connect(runtime.settings.database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET status = 'running', lease_owner = 'planner',"
            " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
            (export_id,),
        )
        shards = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO export_shards (export_id, shard_index)"
                " SELECT %s, i FROM generate_series(0, 2) AS i RETURNING id",
                (export_id,),
            )
        ]
        for shard in shards:
            _age(conn, "export_shards", shard, 600)
        conn.commit()
    waiting, delayed, lost = shards
    runtime.queue.enqueue_shard(export_id, waiting)
    retry: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=dispatch.BULK_QUEUE, actor_name=dispatch.EXPORT_SHARD,
        args=(export_id, delayed), kwargs={}, options={},
    )  # fmt: skip
    broker.enqueue(retry, delay=60_000)  # as Dramatiq's Retries middleware sends a retry

    assert resend_lost_messages(runtime) == 1

    jobs = {Job(dispatch.EXPORT_SHARD, (export_id, shard)) for shard in shards}
    assert present_jobs(broker_client, QUEUES, jobs) == jobs
    entries = _resend_entries(runtime, export_id)
    assert [entry["shard_id"] for entry in entries] == [lost]


def test_a_job_that_keeps_losing_its_message_is_sent_again_at_most_three_times(
    runtime: Runtime, broker_client: redis.Redis
) -> None:
    export_id = _queued(runtime)
    sent = []
    for _ in range(MAX_RESENDS + 1):
        broker_client.flushdb()  # the broker loses everything again
        with connect(runtime.settings.database_url) as conn:
            _age(conn, "data_exports", export_id, 600)
            conn.commit()
        sent.append(resend_lost_messages(runtime))
    assert sent == [1, 1, 1, 0]
    assert len(_resend_entries(runtime, export_id)) == MAX_RESENDS


def test_a_rabbitmq_broker_is_not_read(runtime: Runtime, env: dict[str, str]) -> None:
    _queued(runtime)
    settings = Settings.from_env({**env, "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/%2F"})
    rabbit = Runtime(settings, runtime.worker, runtime.s3, runtime.queue)
    assert rabbit.live_jobs is None
    assert resend_lost_messages(rabbit) == 0


def test_a_job_a_worker_took_while_the_broker_was_read_is_not_sent_again(
    runtime: Runtime, broker_client: redis.Redis
) -> None:
    export_id = _queued(runtime)

    def worker_takes_it_and_acknowledges(wanted: Collection[Job]) -> set[Job]:
        with connect(runtime.settings.database_url) as conn:
            conn.execute(
                "UPDATE data_exports SET status = 'running', lease_owner = 'w',"
                " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
                (export_id,),
            )
            conn.commit()
        return set()  # its message is gone: acknowledged, not lost

    runtime.__dict__["live_jobs"] = worker_takes_it_and_acknowledges  # the broker read
    assert resend_lost_messages(runtime) == 0
    assert broker_client.dbsize() == 0
    assert _resend_entries(runtime, export_id) == []
