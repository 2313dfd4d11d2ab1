"""Bulk export benchmark: real `dramatiq` worker processes against the single-process engine.

Seeds (once, shared with `export_bench.py`) database `bench_u<users>` on the chosen server, starts
a private Redis and S3 server (SeaweedFS) on 127.0.0.1 in a temporary root, then in one run
measures `pipelines.runner.export_all` in one process and the bulk export through 1 and 2 worker
processes (planner, shards on one snapshot, fan-in and manifest), all writing to that S3 server.
Not a test: it prints seconds, rows/s, MB/s and peak RSS.
Usage: `.venv/bin/python bench/bulk_bench.py [--quick] [--users N] [--server URL]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

# The benchmark runs as a script: make the project importable from its root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exportctl.seeding import seed_database  # noqa: E402
from pipelines.database import connect  # noqa: E402
from pipelines.jobs import NewExport, create_export  # noqa: E402
from pipelines.options import parse_options  # noqa: E402
from pipelines.schema import apply_schema  # noqa: E402

# The machine's own PostgreSQL 15, the server the floor in notes/performance.md was measured on.
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FULL_USERS = 100_000  # 5,000,000 files at the seeder's 50 per user
QUICK_USERS = 10_000  # 500,000 files
FILES_PER_USER = 50
# Shards per export: 20 are enough for two processes to share evenly and few enough that the
# per-shard overhead (claim, snapshot adoption, manifest entry) is noise.
SHARDS = 20
# How often the bench looks at the export row while workers run.
POLL_SECONDS = 0.25
# Longest a worker run may take before the bench gives up (the full data takes a few minutes).
RUN_TIMEOUT_SECONDS = 1800.0
DRAMATIQ = ROOT / ".venv" / "bin" / "dramatiq"
MB = 1_000_000


@dataclass(frozen=True)
class Result:
    """One measured run."""

    name: str
    seconds: float
    rows: int
    stored_bytes: int
    content_bytes: int
    peak_rss_mib: float


def ensure_seeded(server_url: str, *, users: int) -> str:
    """Create and seed `bench_u<users>` unless it already holds that data; return its URL."""
    name = f"bench_u{users}"
    with connect(server_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = conninfo.make_conninfo(server_url, dbname=name)
    with connect(url) as conn:
        apply_schema(conn)  # idempotent: adds export tables a data-only seed lacks
        conn.commit()
        counts = conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)")
        if counts.fetchone() != (users, users * FILES_PER_USER):
            print(f"seeding {name}: {users} users ...", flush=True)
            report = seed_database(conn, users=users, replace=True)
            conn.commit()
            print(f"seeded in {report.seconds:.0f} s", flush=True)
            with connect(url, autocommit=True) as vacuum:
                vacuum.execute("VACUUM (FREEZE, ANALYZE) users")
                vacuum.execute("VACUUM (FREEZE, ANALYZE) files")
    return _as_url(url)


def _as_url(dsn: str) -> str:
    """Return a libpq key=value string as the postgresql:// URL that Settings accepts."""
    if "://" in dsn:
        return dsn
    info = conninfo.conninfo_to_dict(dsn)
    user = info.get("user", "postgres")
    host, port = info.get("host", "127.0.0.1"), info.get("port", 5432)
    return f"postgresql://{user}@{host}:{port}/{info['dbname']}"


@contextmanager
def services(database_url: str) -> Iterator[dict[str, str]]:
    """Run a private Redis and S3 server on 127.0.0.1; yield the workers' environment."""
    from exportctl.devstack import LocalStack

    root = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    stack = LocalStack(root)
    try:
        endpoints = stack.up({"DATABASE_URL": database_url})
        yield endpoints.as_env()
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


def shard_rows(users: int) -> int:
    """Return the target rows per shard that cut the data into about SHARDS shards."""
    return max(1_000, users * (1 + FILES_PER_USER) // SHARDS)


def run_engine(env: dict[str, str], options: dict[str, str]) -> Result:
    """Run `export_all` to S3 in a child process (its own peak RSS) and return the figures."""
    spec = json.dumps({"env": env, "options": options})
    done = subprocess.run(
        [sys.executable, __file__, "--child", spec], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"engine run failed:\n{done.stderr}")
    return Result(**json.loads(done.stdout.strip().splitlines()[-1]))


def child_main(spec: dict[str, Any]) -> None:
    """Export every user with the engine in this process and print the figures as JSON."""
    from pipelines.runner import ExportLimits, export_all
    from pipelines.settings import Settings
    from pipelines.storage.client import s3_client_from_settings
    from pipelines.storage.stores import S3Store
    from workers.rows import compression_level, part_size_for

    settings = Settings.from_env(spec["env"])
    options = _options(spec["options"])
    s3 = s3_client_from_settings(settings)
    store = S3Store(s3, bucket=settings.s3_bucket, prefix=f"exports/engine-{uuid.uuid4().hex}/")
    limits = ExportLimits(
        part_size=part_size_for(settings, settings.export_bulk_max_size),
        max_size=settings.export_bulk_max_size,
        level=compression_level(settings, options.compression),
    )
    started = time.monotonic()
    run = export_all(
        lambda: connect(settings.database_url),
        options=options,
        store=store,
        limits=limits,
        target_shard_rows=int(spec["env"]["BULK_TARGET_SHARD_ROWS"]),
    )
    seconds = time.monotonic() - started
    written = run.objects
    figures = Result(
        name="engine, 1 process (export_all)",
        seconds=seconds,
        rows=sum(sum(w.counts.values()) for w in written),
        stored_bytes=sum(w.digests.stored_bytes for w in written),
        content_bytes=sum(w.digests.content_bytes for w in written),
        peak_rss_mib=_peak_rss_mib(os.getpid()),
    )
    print(json.dumps(figures.__dict__))


def run_workers(env: dict[str, str], options: dict[str, str], processes: int) -> Result:
    """Run one bulk export through `processes` dramatiq workers; time enqueue to completion."""
    from workers.broker import create_broker
    from workers.dispatch import Dispatcher

    database_url = env["DATABASE_URL"]
    with connect(database_url) as conn:
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        parsed = _options(options)
        export_id = str(create_export(conn, NewExport(user[0], "bulk", parsed)).row["id"])
        conn.commit()
    worker_env = {
        **os.environ,  # noqa: TID251 - the bench is an entry point; workers need PATH and HOME
        **env,
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "WARNING",
        "dramatiq_queue_prefetch": "1",
    }
    worker = subprocess.Popen(
        [str(DRAMATIQ), "workers.actors", "--processes", str(processes), "--threads", "1",
         "--queues", "bulk"],
        cwd=ROOT, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    broker = create_broker(env["REDIS_URL"])
    try:
        time.sleep(3.0)  # let the worker processes import and connect before the clock starts
        started = time.monotonic()
        Dispatcher(broker).enqueue_bulk_export(export_id)
        row = _wait_finished(database_url, export_id)
        seconds = time.monotonic() - started
        peak = max((_peak_rss_mib(pid) for pid in _children(worker.pid)), default=0.0)
    finally:
        broker.close()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    if row["status"] != "completed":
        raise SystemExit(f"bulk export {export_id} ended {row['status']}: {row['error_message']}")
    return Result(
        name=f"workers, {processes} process{'es' if processes > 1 else ''} x 1 thread",
        seconds=seconds,
        rows=int(row["record_count"]),
        stored_bytes=int(row["size_bytes"]),
        content_bytes=int(row["content_size_bytes"]),
        peak_rss_mib=peak,
    )


def _options(given: dict[str, str]) -> Any:
    return parse_options(
        given["format"], {"compression": given["compression"]}, default_compression="zstd"
    )


def _wait_finished(database_url: str, export_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    with connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
                cursor.execute(
                    "SELECT status, record_count, size_bytes, content_size_bytes, error_message"
                    " FROM data_exports WHERE id = %s",
                    (export_id,),
                )
                row = cursor.fetchone()
            assert row is not None
            if row["status"] not in ("queued", "running"):
                return row
            time.sleep(POLL_SECONDS)
    raise SystemExit(f"bulk export {export_id} did not finish in {RUN_TIMEOUT_SECONDS} s")


def _children(pid: int) -> list[int]:
    """Return the worker processes under the dramatiq main process."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def _peak_rss_mib(pid: int) -> float:
    """Return the peak resident set (VmHWM) of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def render(results: Sequence[Result], engine: Result) -> str:
    """Return the figures as a Markdown table, with each run's speed against the engine's."""
    lines = [
        "| run | seconds | rows/s | stored MB/s | content MB/s | peak RSS MiB | vs engine |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.seconds:.1f} | {result.rows / result.seconds:,.0f} | "
            f"{result.stored_bytes / MB / result.seconds:.1f} | "
            f"{result.content_bytes / MB / result.seconds:.1f} | {result.peak_rss_mib:.0f} | "
            f"{engine.seconds / result.seconds:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Seed, run the engine and the workers on the same data, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 users / 500,000 files")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--server", default=DEFAULT_SERVER_URL)
    parser.add_argument("--format", default="jsonl", choices=("json", "jsonl", "csv", "xml"))
    parser.add_argument("--compression", default="zstd", choices=("zstd", "gzip", "none"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    users = args.users or (QUICK_USERS if args.quick else FULL_USERS)
    database_url = ensure_seeded(args.server, users=users)
    options = {"format": args.format, "compression": args.compression}
    print(f"bulk export of {users} users, {args.format}+{args.compression}", flush=True)
    with services(database_url) as env:
        env["DATABASE_URL"] = database_url
        env["BULK_TARGET_SHARD_ROWS"] = str(shard_rows(users))
        results = [run_engine(env, options)]
        print(render(results, results[0]), flush=True)
        for processes in (1, 2):
            results.append(run_workers(env, options, processes))
            print(f"  {results[-1].name}: {results[-1].seconds:.1f} s", flush=True)
    print(render(results, results[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
