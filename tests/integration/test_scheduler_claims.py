"""Claiming passes on a real PostgreSQL and Redis: exactly once, cancel, permissions, rate limit.

The clock is injected, so "due" is decided by the test; messages go to an in-memory queue that
records them (what a worker would receive).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon.testing
import pytest
import redis
from api_support import MemoryObjects, add_user, auth, make_settings

from api.app import AppDeps, create_app
from api.auth import internal_credential_from_settings, verifier_from_settings
from api.database import ThreadLocalDatabase
from api.dispatch import RecordingDispatcher
from api.ratelimit import RateLimitDecision, RateLimiter, Reservation
from api.schedule_policy import ScheduledExportPolicy
from pipelines.database import connect
from pipelines.errors import RetryableError
from workers.scheduling import FiringPolicy, Scheduler

NOW = datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC)


class RecordingQueue:
    """Record every message; `fail` makes user-export messages raise (broker down)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, str]] = []
        self.cleanups = 0
        self.fail = False
        self._lock = threading.Lock()

    def enqueue_user_export(
        self, export_id: str, *, request_id: str | None = None, priority: str = "normal"
    ) -> None:
        if self.fail:
            raise RetryableError("broker unavailable")
        with self._lock:
            self.messages.append(("user", export_id, priority))

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        with self._lock:
            self.messages.append(("bulk", export_id, "normal"))

    def enqueue_cleanup(self) -> None:
        with self._lock:
            self.cleanups += 1


class FreeLimiter:
    """A limiter with a free slot for everyone."""

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        return RateLimitDecision(True, 1000, 999, 3600, None, Reservation("k", uuid.uuid4().hex))

    def release(self, reservation: Reservation) -> bool:
        return True


def scheduler(
    url: str, queue: RecordingQueue, *, policy: FiringPolicy | None = None, now: datetime = NOW
) -> Scheduler:
    return Scheduler(
        lambda: connect(url),
        policy or ScheduledExportPolicy(FreeLimiter()),
        queue,
        clock=lambda: now,
    )


def add_request(url: str, user_id: uuid.UUID, at: datetime, *, priority: str = "normal") -> str:
    with connect(url) as conn:
        row = conn.execute(
            "INSERT INTO export_requests (user_id, format, compression, options, priority,"
            " scheduled_at) VALUES (%s, 'jsonl', 'zstd', '{}', %s, %s) RETURNING id::text",
            (user_id, priority, at),
        ).fetchone()
        conn.commit()
    assert row is not None
    return str(row[0])


def add_schedule(url: str, user_id: uuid.UUID, cron: str, next_run_at: datetime) -> str:
    with connect(url) as conn:
        row = conn.execute(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, timezone,"
            " next_run_at) VALUES (%s, 'nightly', 'json', %s, 'Europe/Berlin', %s)"
            " RETURNING id::text",
            (user_id, cron, next_run_at),
        ).fetchone()
        conn.commit()
    assert row is not None
    return str(row[0])


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_concurrent_schedulers_enqueue_each_due_item_exactly_once(database_url: str) -> None:
    users = [add_user(database_url) for _ in range(5)]
    requests = [
        add_request(database_url, users[i % 5], NOW - timedelta(seconds=i)) for i in range(40)
    ]
    schedules = [
        add_schedule(database_url, user, "0 3 * * *", NOW - timedelta(hours=1)) for user in users
    ]
    add_request(database_url, users[0], NOW + timedelta(minutes=5))  # not due yet
    queue = RecordingQueue()
    replicas = [scheduler(database_url, queue) for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def run(replica: Scheduler) -> None:
        barrier.wait()
        try:
            replica.run_pass()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    exported = rows(
        database_url, "SELECT export_request_id::text, schedule_id::text FROM data_exports"
    )
    assert sorted(r for r, _ in exported if r) == sorted(requests)
    assert sorted(s for _, s in exported if s) == sorted(schedules)
    message_ids = [export_id for _, export_id, _ in queue.messages]
    assert len(message_ids) == len(set(message_ids)) == len(requests) + len(schedules)
    assert queue.cleanups == 1  # one replica won the maintenance slot
    runs = rows(database_url, "SELECT count(*) FROM export_schedule_runs WHERE status = 'enqueued'")
    assert runs == [(len(schedules),)]


def test_cancelled_request_never_exports(
    database_url: str, api_database: ThreadLocalDatabase
) -> None:
    user = add_user(database_url)
    client = api_client(api_database)
    scheduled_at = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    created = client.simulate_post(
        "/api/exports/schedule",
        json={"format": "csv", "scheduledAt": scheduled_at, "options": {"compression": "gzip"}},
        headers=auth(user),
    )
    assert created.status_code == 201, created.text
    request_id = created.json["request"]["id"]
    cancelled = client.simulate_delete(f"/api/exports/schedule/{request_id}", headers=auth(user))
    assert cancelled.json["request"]["status"] == "cancelled"
    queue = RecordingQueue()
    report = scheduler(database_url, queue, now=datetime.now(UTC) + timedelta(hours=1)).run_pass()
    assert report.fired == ()
    assert rows(database_url, "SELECT count(*) FROM data_exports") == [(0,)]
    again = client.simulate_delete(f"/api/exports/schedule/{request_id}", headers=auth(user))
    assert again.status_code == 409


def test_owner_who_lost_permission_is_skipped_with_the_reason_logged(database_url: str) -> None:
    user = add_user(database_url)
    request_id = add_request(database_url, user, NOW - timedelta(minutes=1))
    schedule_id = add_schedule(database_url, user, "*/5 * * * *", NOW - timedelta(minutes=1))
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO export_permissions (user_id, can_export_own) VALUES (%s, false)", (user,)
        )
        conn.commit()
    queue = RecordingQueue()
    report = scheduler(database_url, queue).run_pass()
    assert {item.status for item in report.fired} == {"skipped"}
    assert queue.messages == []
    status = rows(
        database_url, "SELECT status, status_reason FROM export_requests WHERE id = %s", request_id
    )
    assert status[0][0] == "skipped"
    assert "permission lost" in status[0][1]
    run = rows(
        database_url,
        "SELECT status, reason FROM export_schedule_runs WHERE schedule_id = %s",
        schedule_id,
    )
    assert run[0][0] == "skipped"
    assert "exporting your data" in run[0][1]
    logged = rows(
        database_url,
        "SELECT event, details->>'reason' FROM export_logs"
        " WHERE event LIKE 'schedule.%%' ORDER BY id",
    )
    assert {event for event, _ in logged} == {"schedule.request_skipped", "schedule.run_skipped"}
    assert all("permission lost" in reason for _, reason in logged)
    nxt = rows(database_url, "SELECT next_run_at FROM export_schedules WHERE id = %s", schedule_id)
    assert nxt[0][0] > NOW  # a skipped occurrence still moves the schedule on


def test_rate_limit_applies_when_a_request_fires(database_url: str, redis_url: str) -> None:
    user = add_user(database_url)
    first = add_request(database_url, user, NOW - timedelta(minutes=2), priority="high")
    second = add_request(database_url, user, NOW - timedelta(minutes=1))
    client = redis.Redis.from_url(redis_url)
    limiter = RateLimiter(client, limit=1, admin_limit=1, key_prefix=f"test:{uuid.uuid4().hex}:")
    queue = RecordingQueue()
    report = scheduler(database_url, queue, policy=ScheduledExportPolicy(limiter)).run_pass()
    outcome = {item.source_id: item for item in report.fired}
    assert outcome[first].status == "enqueued"
    assert queue.messages[0][2] == "high"
    assert outcome[second].status == "skipped"
    assert "rate limit" in str(outcome[second].reason)
    client.close()


def test_message_refused_after_creating_the_export_resends_it_and_creates_no_twin(
    database_url: str,
) -> None:
    user = add_user(database_url)
    request_id = add_request(database_url, user, NOW - timedelta(minutes=1))
    schedule_id = add_schedule(database_url, user, "0 * * * *", NOW - timedelta(minutes=1))
    queue = RecordingQueue()
    queue.fail = True
    refused = scheduler(database_url, queue).run_pass()
    assert {(item.source_id, item.status) for item in refused.fired} == {
        (request_id, "failed"),
        (schedule_id, "failed"),
    }
    assert rows(database_url, "SELECT status FROM export_requests") == [("pending",)]
    due = "SELECT count(*) FROM export_schedules WHERE next_run_at <= %s"
    assert rows(database_url, due, NOW) == [(1,)]  # both stay due
    queue.fail = False
    report = scheduler(database_url, queue).run_pass()
    assert len(report.enqueued()) == 2
    exports = rows(
        database_url,
        "SELECT id::text, export_request_id::text, schedule_id::text FROM data_exports",
    )
    assert len([e for e in exports if e[1] == request_id]) == 1
    assert len([e for e in exports if e[2] == schedule_id]) == 1
    sent = [export_id for _, export_id, _ in queue.messages]
    assert sorted(sent) == sorted(e[0] for e in exports)
    assert rows(database_url, "SELECT status FROM export_requests") == [("enqueued",)]


def test_schedule_down_for_hours_fires_once_for_the_missed_window(database_url: str) -> None:
    user = add_user(database_url)
    schedule_id = add_schedule(database_url, user, "*/10 * * * *", NOW - timedelta(hours=3))
    queue = RecordingQueue()
    report = scheduler(database_url, queue).run_pass()
    assert len(report.fired) == 1
    assert report.fired[0].missed == 18
    assert len(queue.messages) == 1
    again = scheduler(database_url, queue).run_pass()
    assert again.fired == ()
    nxt = rows(database_url, "SELECT next_run_at FROM export_schedules WHERE id = %s", schedule_id)
    assert nxt[0][0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.fixture
def api_database(database_url: str) -> Iterator[ThreadLocalDatabase]:
    """The API's database access for one test, closed afterwards."""
    database = ThreadLocalDatabase(database_url)
    try:
        yield database
    finally:
        database.close()


def api_client(database: ThreadLocalDatabase) -> falcon.testing.TestClient:
    settings = make_settings()
    deps = AppDeps(
        settings=settings,
        verifier=verifier_from_settings(settings),
        internal=internal_credential_from_settings(settings),
        database=database,
        limiter=FreeLimiter(),
        dispatcher=RecordingDispatcher(),
        objects=MemoryObjects(),
        checks={},
    )
    return falcon.testing.TestClient(create_app(deps))
