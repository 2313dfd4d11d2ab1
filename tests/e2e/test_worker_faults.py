"""Broker and database faults under a real worker: every export still ends, and nothing is lost.

Each test runs its own PostgreSQL and Redis (valkey) from `exportctl.devstack.LocalStack` in a
temporary root, so it can kill and restart them without touching the session's stack; the S3
server is the session's. A fault may legitimately fail an export (a bulk export cannot switch
snapshots), but then with a reason; an export that completed must verify. Whatever the fault
left, the maintenance sweeps (run here as the maintenance queue would) must end it: none stays
queued or running.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from worker_processes import (
    Workers,
    as_url,
    free_port,
    new_export,
    seed,
    settled,
    wait_for,
)

from exportctl.devstack import LocalStack
from pipelines.database import connect
from pipelines.jobs import export_logs
from pipelines.schema import apply_schema
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers.broker import create_broker
from workers.config import WorkerSettings
from workers.dispatch import Dispatcher
from workers.lost_messages import resend_lost_messages
from workers.maintenance import fail_stuck_exports, requeue_verifications
from workers.runtime import Runtime

if TYPE_CHECKING:
    from exportctl.devstack import StackEndpoints

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PART = 5 * 1024 * 1024
LEASE_SECONDS = 6
# Long enough for Dramatiq's retry backoff (5 s, then 10-20 s) and a lease to lapse after the
# fault; the sweeps then end whatever is left.
SETTLE_SECONDS = 75.0


@dataclass
class Stack:
    """A private PostgreSQL and Redis, the environment that points at them, and the workers."""

    local: LocalStack
    environ: dict[str, str]
    env: dict[str, str]
    workers: Workers

    @property
    def url(self) -> str:
        return self.env["DATABASE_URL"]

    def restart(self) -> None:
        """Start whatever service is down again, as an operator's supervisor would."""
        self.local.up(self.environ)


@pytest.fixture
def private(stack: StackEndpoints, s3_bucket: str, tmp_path: Path) -> Iterator[Stack]:
    """Private PostgreSQL and Redis; the session's S3 server with a fresh bucket."""
    environ = {
        "S3_ENDPOINT_URL": stack.s3_endpoint_url,
        "S3_BUCKET": s3_bucket,
        "S3_ACCESS_KEY_ID": stack.s3_access_key_id,
        "S3_SECRET_ACCESS_KEY": stack.s3_secret_access_key,
        "S3_REGION": stack.s3_region,
    }
    local = LocalStack(tmp_path / "stack")
    endpoints = local.up(environ)
    env = {
        **endpoints.as_env(),
        "DATABASE_URL": as_url(endpoints.database_url),
        "S3_PART_SIZE_BYTES": str(PART),
        "EXPORT_BULK_MAX_SIZE": str(1024**3),
        "WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
        "LOG_FORMAT": "text",
        "dramatiq_queue_prefetch": "2",
        "dramatiq_prom_db": str(tmp_path / "metrics"),
        "dramatiq_prom_port": str(free_port()),
    }
    with connect(env["DATABASE_URL"]) as conn:
        apply_schema(conn)
        conn.commit()
    workers = Workers(env, tmp_path)
    try:
        yield Stack(local, environ, env, workers)
    finally:
        workers.stop_all()
        local.down()


def _enqueue(stack: Stack, export_id: str, kind: str) -> None:
    broker = create_broker(Settings.from_env(stack.env).effective_broker_url)
    try:
        dispatcher = Dispatcher(broker)
        if kind == "bulk":
            dispatcher.enqueue_bulk_export(export_id)
        else:
            dispatcher.enqueue_user_export(export_id)
    finally:
        broker.close()


def _wait_for_parts(stack: Stack, count: int) -> None:
    deadline = time.monotonic() + 60
    with connect(stack.url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM export_upload_parts").fetchone()
            assert row is not None
            if row[0] >= count:
                return
            time.sleep(0.1)
    raise AssertionError(f"no part uploaded:\n{stack.workers.log_text()}")


def _sweep(stack: Stack) -> None:
    """Run the maintenance sweeps a maintenance worker would run, with no grace left."""
    settings = Settings.from_env(stack.env)
    broker = create_broker(settings.effective_broker_url)
    try:
        runtime = Runtime(
            settings,
            WorkerSettings(lease_seconds=LEASE_SECONDS),
            s3_client_from_settings(settings),
            Dispatcher(broker),
        )
        resend_lost_messages(runtime, grace_seconds=0)
        fail_stuck_exports(runtime, grace_seconds=0)
        requeue_verifications(runtime, older_than_seconds=0)
    finally:
        broker.close()


def _settle(stack: Stack, export_id: str) -> dict[str, Any]:
    """Wait for the export to settle; then sweep; it must settle (never stay stuck)."""
    row = wait_for(stack.url, export_id, settled, seconds=SETTLE_SECONDS)
    if row is None:
        _sweep(stack)
        row = wait_for(stack.url, export_id, settled, seconds=30)
    assert row is not None, f"export {export_id} never settled:\n{stack.workers.log_text()}"
    return row


def _assert_ended_well(stack: Stack, row: dict[str, Any], s3_bucket: str) -> None:
    if row["status"] == "failed":
        assert row["error_message"], row
        return
    assert row["verification_status"] == "passed", row
    s3 = s3_client_from_settings(Settings.from_env(stack.env))
    uploads = s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == [], uploads


def test_redis_killed_mid_bulk_export_ends_completed_and_verified_or_failed_with_reason(
    private: Stack, s3_bucket: str
) -> None:
    stack = private
    seed(stack.url, 400, max_files=200, files=40_000)
    stack.workers.start(WORKER_TEST_PART_DELAY_SECONDS="1", BULK_TARGET_SHARD_ROWS="20000")
    export_id = new_export(stack.url, "bulk", "csv", "none")
    _enqueue(stack, export_id, "bulk")
    _wait_for_parts(stack, 1)

    os.kill(stack.local.managed_pids()["redis"], signal.SIGKILL)
    time.sleep(3)  # the workers lose the broker while shards upload
    stack.restart()

    row = _settle(stack, export_id)
    _assert_ended_well(stack, row, s3_bucket)
    with connect(stack.url) as conn:
        shards = conn.execute(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'running')), count(*)"
            " FROM export_shards WHERE export_id = %s",
            (export_id,),
        ).fetchone()
    assert shards is not None
    assert shards[1] >= 2
    if row["status"] == "completed":
        assert shards[0] == 0
        assert row["record_count"] == _expected_records(stack)


def test_postgres_restarted_mid_user_export_ends_completed_and_verified_or_failed_with_reason(
    private: Stack, s3_bucket: str
) -> None:
    stack = private
    seed(stack.url, 20, max_files=30_000, files=40_000)
    with connect(stack.url) as conn:
        largest = conn.execute(
            "SELECT owner_id::text, count(*) FROM files GROUP BY owner_id ORDER BY 2 DESC LIMIT 1"
        ).fetchone()
    assert largest is not None
    stack.workers.start(WORKER_TEST_PART_DELAY_SECONDS="1.5")
    export_id = new_export(stack.url, "user", "csv", "none", user_id=largest[0])
    _enqueue(stack, export_id, "user")
    _wait_for_parts(stack, 1)

    postgres = stack.local.managed_pids()["postgres"]
    os.kill(postgres, signal.SIGINT)  # fast shutdown: every connection is cut
    _wait_gone(postgres)
    time.sleep(1)
    stack.restart()

    row = _settle(stack, export_id)
    _assert_ended_well(stack, row, s3_bucket)
    if row["status"] == "completed":
        with connect(stack.url) as conn:
            files = conn.execute(
                "SELECT count(*) FROM files WHERE owner_id = %s AND deleted_at IS NULL",
                (largest[0],),
            ).fetchone()
            events = [entry["event"] for entry in export_logs(conn, export_id)]
        assert files is not None
        assert row["record_count"] == 1 + files[0]
        assert row["size_bytes"] > PART  # the fault hit a multipart upload
        assert "export.retrying" in events or "export.restarted" in events, events


def _expected_records(stack: Stack) -> int:
    with connect(stack.url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE deleted_at IS NULL)"
            " + (SELECT count(*) FROM files WHERE deleted_at IS NULL"
            "    AND owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL))"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"PostgreSQL {pid} did not stop")
