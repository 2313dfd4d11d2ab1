"""Real `dramatiq` worker processes against real Redis/RabbitMQ, PostgreSQL and S3 server.

Messages go through the production `Dispatcher`. A killed worker's message would come back only
after Dramatiq's 60 s heartbeat, so the kill test enqueues the shard message again itself (the
same thing the broker's redelivery does) and lets the new worker wait out the dead one's lease.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import pytest
import redis
from worker_processes import worker_environment

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.formats import iter_records
from pipelines.jobs import NewExport, create_export, export_logs
from pipelines.manifest import parse_manifest
from pipelines.options import parse_options
from pipelines.runner import ExportLimits, export_shard
from pipelines.settings import Settings
from pipelines.sources import UserRange
from pipelines.storage.reader import iter_content, iter_object_bytes
from pipelines.storage.stores import LocalStore
from workers.broker import create_broker
from workers.bulk import run_plan
from workers.config import WorkerSettings
from workers.dispatch import Dispatcher
from workers.lost_messages import resend_lost_messages
from workers.rows import header_from_row, options_from_row
from workers.runtime import Runtime

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DRAMATIQ = ROOT / ".venv" / "bin" / "dramatiq"
PART = 5 * 1024 * 1024
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
WAIT_SECONDS = 120.0


@pytest.fixture
def worker_env(settings_env: dict[str, str], s3_bucket: str, redis_url: str) -> dict[str, str]:
    """The environment of a worker process: a fresh database, bucket and Redis database."""
    return {
        **worker_environment(settings_env, s3_bucket=s3_bucket, redis_url=redis_url),
        "S3_PART_SIZE_BYTES": str(PART),
        "EXPORT_BULK_MAX_SIZE": str(1024**3),
        "WORKER_LEASE_SECONDS": "6",
        "dramatiq_queue_prefetch": "2",
    }


class Workers:
    """Start and stop `dramatiq` worker processes."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []

    def start(self, *, processes: int = 1, **extra: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, **extra}
        log = (self.logs / f"worker-{len(self.running)}.log").open("wb")
        self.files.append(log)
        process = subprocess.Popen(
            [str(DRAMATIQ), "workers.actors", "--processes", str(processes), "--threads", "2",
             "--queues", "exports", "bulk", "verify"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self.files:
            log.close()


@pytest.fixture
def workers(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    started = Workers(worker_env, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def _seed(
    env: dict[str, str], users: int, *, max_files: int = 400, files: int | None = None
) -> None:
    with connect(env["DATABASE_URL"]) as conn:
        seed_database(conn, users=users, max_files=max_files, seed=5, files=files)
        conn.commit()


def _create(env: dict[str, str], export_type: str, fmt: str, compression: str) -> str:
    with connect(env["DATABASE_URL"]) as conn:
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        options = parse_options(fmt, {"compression": compression}, default_compression="zstd")
        created = create_export(conn, NewExport(user[0], export_type, options))  # type: ignore[arg-type]
        conn.commit()
    return str(created.row["id"])


def _wait(
    env: dict[str, str], check: Callable[[dict[str, Any]], bool], export_id: str
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        with (
            connect(env["DATABASE_URL"]) as conn,
            conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
        ):
            cur.execute("SELECT * FROM data_exports WHERE id = %s", (export_id,))
            row = cur.fetchone()
        assert row is not None
        if check(row):
            return row
        assert time.monotonic() < deadline, f"export {export_id} stuck: {row['status']}"
        time.sleep(0.5)


def _verified(row: dict[str, Any]) -> bool:
    return bool(row["status"] == "failed" or row["verification_status"] != "pending")


BROKERS: list[Any] = []


@pytest.fixture(autouse=True)
def _close_brokers() -> Iterator[None]:
    yield
    while BROKERS:
        BROKERS.pop().close()


def _dispatcher(env: dict[str, str]) -> Dispatcher:
    broker = create_broker(_settings(env).effective_broker_url)
    BROKERS.append(broker)
    return Dispatcher(broker)


def test_user_exports_in_every_format_complete_and_verify(
    workers: Workers, worker_env: dict[str, str]
) -> None:
    _seed(worker_env, 30)
    workers.start()
    dispatcher = _dispatcher(worker_env)
    cases = [("json", "none"), ("csv", "gzip"), ("xml", "zstd"), ("jsonl", "zstd")]
    ids = [_create(worker_env, "user", fmt, compression) for fmt, compression in cases]
    for export_id in ids:
        dispatcher.enqueue_user_export(export_id, request_id="req-e2e")
    for export_id in ids:
        row = _wait(worker_env, _verified, export_id)
        assert (row["status"], row["verification_status"]) == ("completed", "passed"), row


def test_user_export_through_rabbitmq_completes_and_verifies(
    workers: Workers, worker_env: dict[str, str]
) -> None:
    _seed(worker_env, 10)
    workers.env = {**worker_env, "BROKER_URL": RABBITMQ_URL}
    workers.start()
    export_id = _create(worker_env, "user", "csv", "zstd")
    _dispatcher(workers.env).enqueue_user_export(export_id)
    row = _wait(worker_env, _verified, export_id)
    assert (row["status"], row["verification_status"]) == ("completed", "passed"), row


def test_duplicate_delivery_writes_one_object_and_one_completion(
    workers: Workers, worker_env: dict[str, str], s3_client: S3Client
) -> None:
    _seed(worker_env, 5)
    workers.start(WORKER_TEST_PART_DELAY_SECONDS="1")
    export_id = _create(worker_env, "user", "json", "zstd")
    dispatcher = _dispatcher(worker_env)
    dispatcher.enqueue_user_export(export_id)
    dispatcher.enqueue_user_export(export_id)
    _wait(worker_env, _verified, export_id)
    time.sleep(3)  # let the second delivery finish its claim
    with connect(worker_env["DATABASE_URL"]) as conn:
        events = [entry["event"] for entry in export_logs(conn, export_id)]
        analytics = conn.execute(
            "SELECT count(*) FROM export_analytics WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert events.count("export.completed") == 1
    assert events.count("export.started") == 1
    assert analytics == (1,)
    listed = s3_client.list_objects_v2(
        Bucket=worker_env["S3_BUCKET"], Prefix=f"exports/{export_id}/"
    )
    data = [item["Key"] for item in listed["Contents"] if item["Key"].endswith(".json.zst")]
    assert len(data) == 1


def test_bulk_export_across_two_workers_holds_every_user_and_file_once(
    workers: Workers, worker_env: dict[str, str], s3_client: S3Client
) -> None:
    _seed(worker_env, 2000, max_files=40, files=20_000)
    workers.start(processes=2, BULK_TARGET_SHARD_ROWS="4000")
    export_id = _create(worker_env, "bulk", "jsonl", "zstd")
    _dispatcher(worker_env).enqueue_bulk_export(export_id)
    row = _wait(worker_env, _verified, export_id)
    assert (row["status"], row["verification_status"]) == ("completed", "passed"), row
    bucket = worker_env["S3_BUCKET"]
    manifest = parse_manifest(
        b"".join(iter_object_bytes(s3_client, bucket=bucket, key=row["object_key"]))
    )
    assert len(manifest.objects) > 2
    seen: dict[str, set[str]] = {"users": set(), "files": set()}
    for entry in manifest.objects:
        blobs = iter_object_bytes(s3_client, bucket=bucket, key=f"exports/{export_id}/{entry.name}")
        for record in iter_records(iter_content(blobs, "zstd"), format="jsonl"):
            key = str(record.values[0])
            assert key not in seen[record.table.name]
            seen[record.table.name].add(key)
    with connect(worker_env["DATABASE_URL"]) as conn:
        expected = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE deleted_at IS NULL),"
            " (SELECT count(*) FROM files WHERE deleted_at IS NULL"
            "  AND owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL))"
        ).fetchone()
    assert (len(seen["users"]), len(seen["files"])) == expected


def test_worker_killed_mid_shard_resumes_to_the_same_object(
    workers: Workers, worker_env: dict[str, str], s3_client: S3Client, tmp_path: Path
) -> None:
    _seed(worker_env, 400, max_files=200, files=40_000)
    settings = _settings(worker_env)
    # The planner (and so the snapshot holder) runs here, so killing the shard's worker leaves
    # the snapshot alive, as it is when the planner ran on another machine.
    runtime = Runtime(
        settings, WorkerSettings(lease_seconds=6, target_shard_rows=10**9),
        s3_client, _dispatcher(worker_env),
    )  # fmt: skip
    export_id = _create(worker_env, "bulk", "csv", "none")
    _, holder = run_plan(runtime, export_id)
    assert holder is not None
    first = workers.start(WORKER_TEST_PART_DELAY_SECONDS="1.5")
    with connect(worker_env["DATABASE_URL"]) as conn:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            parts = conn.execute("SELECT count(*) FROM export_upload_parts").fetchone()
            assert parts is not None
            if parts[0] >= 2:
                break
            assert time.monotonic() < deadline, "no parts uploaded"
            time.sleep(0.2)
        shard = conn.execute(
            "SELECT id::text FROM export_shards WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert shard is not None
    workers.kill(first)
    workers.start()
    runtime.queue.enqueue_shard(export_id, shard[0])  # redelivery
    row = _wait(worker_env, lambda r: r["status"] != "running", export_id)
    assert row["status"] == "completed", row
    holder.join(timeout=30)
    with (
        connect(worker_env["DATABASE_URL"]) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cur,
    ):
        cur.execute("SELECT * FROM export_shards WHERE export_id = %s", (export_id,))
        done = cur.fetchone()
        events = [entry["event"] for entry in export_logs(conn, export_id)]
    assert done is not None
    assert "export.resumed" in events
    bucket = worker_env["S3_BUCKET"]
    stored = hashlib.sha256()
    for blob in iter_object_bytes(s3_client, bucket=bucket, key=done["object_key"]):
        stored.update(blob)
    options = options_from_row(row)
    with connect(worker_env["DATABASE_URL"]) as conn:
        reference = export_shard(
            conn, number=1, users=UserRange(), header=header_from_row(row, options),
            options=options, store=LocalStore(tmp_path / "ref"),
            limits=ExportLimits(part_size=int(done["part_size_bytes"]), max_size=None),
        )  # fmt: skip
    assert reference.digests.stored_bytes > 2 * PART
    assert stored.hexdigest() == done["sha256"] == reference.digests.stored_sha256
    assert done["content_sha256"] == reference.digests.content_sha256
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_bulk_export_whose_shard_message_the_broker_lost_completes_after_the_resend_sweep(
    workers: Workers, worker_env: dict[str, str], s3_client: S3Client
) -> None:
    _seed(worker_env, 600, max_files=40, files=6_000)
    settings = _settings(worker_env)
    # The planner (and its snapshot holder) runs here; the workers run the shards.
    runtime = Runtime(
        settings, WorkerSettings(lease_seconds=6, target_shard_rows=2_000),
        s3_client, _dispatcher(worker_env),
    )  # fmt: skip
    export_id = _create(worker_env, "bulk", "csv", "zstd")
    _, holder = run_plan(runtime, export_id)
    assert holder is not None
    broker = redis.Redis.from_url(settings.effective_broker_url)
    messages = broker.hgetall("dramatiq:bulk.msgs")
    assert len(messages) >= 2
    lost_id, lost = next(iter(messages.items()))
    broker.hdel("dramatiq:bulk.msgs", lost_id)  # the broker loses one shard's message
    broker.lrem("dramatiq:bulk", 0, lost_id)
    lost_shard = orjson.loads(lost)["args"][1]

    workers.start()
    with connect(worker_env["DATABASE_URL"]) as conn:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:  # every other shard ends; the lost one stays queued
            left = conn.execute(
                "SELECT array_agg(id::text) FROM export_shards"
                " WHERE export_id = %s AND status IN ('queued', 'running')",
                (export_id,),
            ).fetchone()
            assert left is not None
            if left[0] == [lost_shard]:
                break
            assert time.monotonic() < deadline, left
            time.sleep(0.2)
    assert resend_lost_messages(runtime, grace_seconds=0) == 1

    row = _wait(worker_env, _verified, export_id)
    assert (row["status"], row["verification_status"]) == ("completed", "passed"), row
    holder.join(timeout=30)
    with connect(worker_env["DATABASE_URL"]) as conn:
        resent = conn.execute(
            "SELECT shard_id::text FROM export_logs WHERE export_id = %s AND event = %s",
            (export_id, "export.message_resent"),
        ).fetchall()
    assert resent == [(lost_shard,)]
    broker.close()
