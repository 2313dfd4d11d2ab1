"""Real `exportctl scheduler` processes with real workers: fire on time, replicas, kill -9.

The scheduler processes run exactly as the Procfile runs them, against the session's
PostgreSQL, Redis and S3 server; workers are real `dramatiq` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import redis
from worker_processes import ROOT, Workers, seed, settled, wait_for, worker_environment

from pipelines.database import connect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXPORTCTL = ROOT / ".venv" / "bin" / "exportctl"
# Passes this often keep the tests short; production uses the 5 s default.
TEST_INTERVAL = "0.5"


@pytest.fixture
def scheduler_env(settings_env: dict[str, str], s3_bucket: str, redis_url: str) -> dict[str, str]:
    """Environment of schedulers and workers: a fresh database, bucket and Redis database."""
    return {
        **worker_environment(settings_env, s3_bucket=s3_bucket, redis_url=redis_url),
        "EXPORT_RATE_LIMIT": "1000",
        "dramatiq_queue_prefetch": "2",
    }


class Schedulers:
    """Start, kill and stop `exportctl scheduler` processes."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = (self.logs / f"scheduler-{len(self.running)}.log").open("wb")
        self._files.append(log)
        process = subprocess.Popen(
            [str(EXPORTCTL), "scheduler", "--interval", TEST_INTERVAL],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.running.append(process)
        return process

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs.glob("scheduler-*"))

    def stop_all(self) -> list[int | None]:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        codes: list[int | None] = []
        for process in self.running:
            try:
                codes.append(process.wait(timeout=20))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes.append(process.wait())
        for log in self._files:
            log.close()
        return codes


@pytest.fixture
def schedulers(scheduler_env: dict[str, str], tmp_path: Path) -> Iterator[Schedulers]:
    running = Schedulers(scheduler_env, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def workers(scheduler_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    running = Workers(scheduler_env, tmp_path)
    try:
        yield running
    finally:
        running.stop_all()


def first_user(url: str) -> str:
    with connect(url) as conn:
        # The seeder also makes deleted accounts and restricted grants, which fire as skipped.
        row = conn.execute(
            "SELECT id::text FROM users u WHERE deleted_at IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM export_permissions p WHERE p.user_id = u.id) ORDER BY id LIMIT 1"
        ).fetchone()
    assert row is not None
    return str(row[0])


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def test_request_scheduled_three_seconds_ahead_is_exported_and_verified(
    scheduler_env: dict[str, str], schedulers: Schedulers, workers: Workers
) -> None:
    url = scheduler_env["DATABASE_URL"]
    seed(url, 20, max_files=30, files=200)
    user = first_user(url)
    at = datetime.now(UTC) + timedelta(seconds=3)
    with connect(url) as conn:
        request_row = conn.execute(
            "INSERT INTO export_requests (user_id, format, compression, options, priority,"
            " scheduled_at) VALUES (%s, 'json', 'zstd', '{}', 'high', %s) RETURNING id::text",
            (user, at),
        ).fetchone()
        conn.commit()
    assert request_row is not None
    workers.start(queues=("exports.high", "exports", "verify"))
    schedulers.start()
    deadline = time.monotonic() + 60
    exports: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and not exports:
        exports = query(
            url,
            "SELECT id::text, created_at FROM data_exports WHERE export_request_id = %s",
            request_row[0],
        )
        time.sleep(0.2)
    assert exports, schedulers.log_text()
    assert exports[0][1] >= at  # not before its time
    row = wait_for(url, exports[0][0], settled, seconds=120)
    assert row is not None, workers.log_text()
    assert row["status"] == "completed", row["error_message"]
    assert row["verification_status"] == "passed"
    assert row["priority"] == "high"


def test_three_replicas_fire_an_every_minute_schedule_once_per_minute(
    scheduler_env: dict[str, str], schedulers: Schedulers
) -> None:
    url = scheduler_env["DATABASE_URL"]
    seed(url, 3, max_files=2, files=3)
    user = first_user(url)
    started = datetime.now(UTC)
    first = (started + timedelta(minutes=1)).replace(second=0, microsecond=0)
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, timezone,"
            " next_run_at) VALUES (%s, 'minutely', 'jsonl', '* * * * *', 'Europe/Berlin', %s)",
            (user, first),
        )
        conn.commit()
    for _ in range(3):
        schedulers.start()
    # Until three occurrences have come, plus a few passes.
    time.sleep(max(0.0, (first + timedelta(minutes=2) - datetime.now(UTC)).total_seconds()) + 4)
    codes = schedulers.stop_all()
    assert codes == [0, 0, 0], schedulers.log_text()  # SIGTERM ends each one cleanly
    runs = query(url, "SELECT occurrence_at, status FROM export_schedule_runs ORDER BY 1")
    occurrences = [occurrence for occurrence, _ in runs]
    assert occurrences == [first + timedelta(minutes=index) for index in range(3)]
    assert {status for _, status in runs} == {"enqueued"}, runs
    exports = query(url, "SELECT count(*) FROM data_exports WHERE schedule_id IS NOT NULL")
    assert exports == [(3,)]
    messages = queued_export_ids(scheduler_env["REDIS_URL"])
    assert len(messages) == len(set(messages)) == 3


def test_scheduler_killed_mid_pass_loses_and_duplicates_nothing(
    scheduler_env: dict[str, str], schedulers: Schedulers
) -> None:
    url = scheduler_env["DATABASE_URL"]
    seed(url, 10, max_files=2, files=10)
    user = first_user(url)
    due = datetime.now(UTC) - timedelta(seconds=1)
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO export_requests (user_id, format, scheduled_at)"
            " SELECT %s, 'csv', %s FROM generate_series(1, 600)",
            (user, due),
        )
        conn.commit()
    victim = schedulers.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (done,) = query(url, "SELECT count(*) FROM export_requests WHERE status = 'enqueued'")[0]
        if done >= 50:
            break
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    (done_at_kill,) = query(url, "SELECT count(*) FROM export_requests WHERE status <> 'pending'")[
        0
    ]
    assert 0 < done_at_kill < 600  # killed mid-way
    schedulers.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (pending,) = query(url, "SELECT count(*) FROM export_requests WHERE status = 'pending'")[0]
        if pending == 0:
            break
        time.sleep(0.3)
    statuses = query(url, "SELECT status, count(*) FROM export_requests GROUP BY 1")
    assert statuses == [("enqueued", 600)], schedulers.log_text()
    exports = query(url, "SELECT id::text FROM data_exports WHERE export_request_id IS NOT NULL")
    assert len(exports) == 600  # one export per request: the unique key admits no twin
    sent = set(queued_export_ids(scheduler_env["REDIS_URL"]))
    assert {export_id for (export_id,) in exports} <= sent  # every export has its message


def queued_export_ids(redis_url: str) -> list[str]:
    """Return the export id of every export message waiting on the export queues."""
    client = redis.Redis.from_url(redis_url)
    try:
        ids: list[str] = []
        for queue in ("exports", "exports.high", "exports.low", "bulk"):
            for raw in client.hvals(f"dramatiq:{queue}.msgs"):
                ids.append(orjson.loads(raw)["args"][0])
        return ids
    finally:
        client.close()
