"""Shared pieces of the worker end-to-end tests: dramatiq worker processes, export rows, waiting."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import redis
from psycopg.rows import dict_row

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.errors import ExportError
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers.config import WorkerSettings
from workers.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
DRAMATIQ = ROOT / ".venv" / "bin" / "dramatiq"
ALL_QUEUES = ("exports", "bulk", "verify")


def as_url(conninfo: str) -> str:
    """Return a libpq key=value string as the postgresql:// URL that Settings accepts."""
    if "://" in conninfo:
        return conninfo
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = info.get("user", "postgres")
    return f"postgresql://{user}@{info['host']}:{info['port']}/{info['dbname']}"


def fresh_redis_url(redis_url: str) -> str:
    """Return the URL of an emptied Redis database other than 0, for one test's broker."""
    url = f"{redis_url.rsplit('/', 1)[0]}/{random.randint(1, 15)}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def worker_environment(
    settings_env: dict[str, str], *, s3_bucket: str, redis_url: str, **extra: str
) -> dict[str, str]:
    """Return a worker process's environment: the test's database, bucket and own broker."""
    return {
        **settings_env,
        "DATABASE_URL": as_url(settings_env["DATABASE_URL"]),
        "REDIS_URL": fresh_redis_url(redis_url),
        "S3_BUCKET": s3_bucket,
        "LOG_FORMAT": "text",
        **extra,
    }


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Workers:
    """Start and stop `dramatiq workers.actors` processes with a given environment."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(
        self, *, processes: int = 1, threads: int = 2, queues: tuple[str, ...] = ALL_QUEUES,
        **extra: str,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start one dramatiq main process with `processes` worker processes."""
        env = {**os.environ, **self.env, **extra}
        log = (self.logs / f"worker-{len(self.running)}.log").open("wb")
        self._files.append(log)
        process = subprocess.Popen(
            [str(DRAMATIQ), "workers.actors", "--processes", str(processes), "--threads",
             str(threads), "--queues", *queues],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.running.append(process)
        return process

    def log_text(self) -> str:
        """Return every worker log so far, for assertion messages."""
        return "\n".join(path.read_text(errors="replace") for path in self.logs.glob("worker-*"))

    def stop_all(self) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after 20 s."""
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in self._files:
            log.close()


def seed(url: str, users: int, *, max_files: int, files: int, seed_value: int = 5) -> None:
    """Fill the application tables with the project's seeder."""
    with connect(url) as conn:
        seed_database(conn, users=users, max_files=max_files, seed=seed_value, files=files)
        conn.commit()


def new_export(
    url: str, export_type: str, fmt: str, compression: str, *, user_id: str | None = None
) -> str:
    """Create a queued export row and return its id."""
    with connect(url) as conn:
        if user_id is None:
            row = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
            assert row is not None
            user_id = str(row[0])
        options = parse_options(fmt, {"compression": compression}, default_compression="zstd")
        created = create_export(conn, NewExport(user_id, export_type, options))  # type: ignore[arg-type]
        conn.commit()
    return str(created.row["id"])


def export_row(url: str, export_id: str) -> dict[str, Any] | None:
    """Return the export's row, or None while the database does not answer."""
    try:
        with connect(url) as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute("SELECT * FROM data_exports WHERE id = %s", (export_id,))
            return cursor.fetchone()
    except (ExportError, psycopg.Error, OSError):  # the server is restarting
        return None


def wait_for(
    url: str, export_id: str, check: Callable[[dict[str, Any]], bool], *, seconds: float
) -> dict[str, Any] | None:
    """Poll the export's row until `check` holds; return it, or None after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = export_row(url, export_id)
        if row is not None and check(row):
            return row
        time.sleep(0.3)
    return None


def ended(row: dict[str, Any]) -> bool:
    """Return whether the export left queued/running."""
    return row["status"] not in ("queued", "running")


def settled(row: dict[str, Any]) -> bool:
    """Return whether the export failed, or completed and its verification ran."""
    return bool(row["status"] == "failed") or (
        row["status"] == "completed" and row["verification_status"] != "pending"
    )


@dataclass
class RecordingQueue:
    """Collect the messages jobs send to other workers."""

    shards: list[tuple[str, str]] = field(default_factory=list)
    verifications: list[str] = field(default_factory=list)

    def enqueue_shard(self, export_id: str, shard_id: str) -> None:
        self.shards.append((export_id, shard_id))

    def enqueue_verification(self, export_id: str) -> None:
        self.verifications.append(export_id)


def in_process_runtime(
    settings_env: dict[str, str], *, s3_bucket: str, worker: WorkerSettings, **env: str
) -> Runtime:
    """Return a worker runtime for calling jobs in the test process, messages recorded."""
    settings = Settings.from_env(
        {
            **settings_env,
            "DATABASE_URL": as_url(settings_env["DATABASE_URL"]),
            "S3_BUCKET": s3_bucket,
            **env,
        }
    )
    return Runtime(settings, worker, s3_client_from_settings(settings), RecordingQueue())
