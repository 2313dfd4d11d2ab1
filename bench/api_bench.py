"""API load benchmark: the real gunicorn against the project's own stack, beside a trivial app.

Starts a private stack (PostgreSQL, Redis, S3) in a temporary root, applies the schema, seeds
5,000 users, signs a token for each with the stack's JWT secret, and serves `api.wsgi:app` and
`bench/trivial_app.py` in turn with `deploy/gunicorn.conf.py` on a free 127.0.0.1 port. `wrk`
(closed loop, bounded time) measures the peak of the trivial endpoint, `POST /api/exports/user`
rotating the users' tokens, and `GET /api/exports/{id}/status`; `bench/paced_load.py` then holds
the status endpoint (and, as a calibration, the trivial one) at half that peak. Not a test.
Usage: `.venv/bin/python bench/api_bench.py [--seconds 20] [--connections 16] [--json PATH]`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt

# The benchmark runs as a script: make the project importable from its root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor_app import BATCHED_FLOOR_PATH, FLOOR_PATH  # noqa: E402
from bench.paced_load import PacedRequest, percentile, run_paced  # noqa: E402
from bench.trivial_app import PING_PATH  # noqa: E402
from exportctl.devstack import LocalStack, StackEndpoints  # noqa: E402
from exportctl.seeding import seed_database  # noqa: E402
from pipelines.database import connect  # noqa: E402
from pipelines.schema import apply_schema  # noqa: E402

USERS = 5_000
# Extra users seeded per USERS // this: the seed soft-deletes about 3 % of its users, whom the
# API refuses, so a tenth more leaves at least USERS that may export.
SEEDED_SPARE_DIVISOR = 10
# Exports per user per hour while benchmarking: far above what a 20 s run can send, so every
# request is a real enqueue and the figures measure throughput, not 429 answers.
GENEROUS_RATE_LIMIT = 1_000_000
# Seconds a token stays valid: the whole benchmark takes a few minutes.
TOKEN_LIFETIME_SECONDS = 3_600
# A Redis database of its own for the broker's messages (nothing consumes them here).
BROKER_DB = 1
# Seconds each wrk run and the paced runs last (the issue asks for bounded runs of about 20 s).
DEFAULT_RUN_SECONDS = 20
# Seconds of load before each measured run: connections, thread-local database sessions, caches.
WARMUP_SECONDS = 3
# Keep-alive connections per wrk run: twice the gunicorn request threads (2 workers x 4), so
# the server always has the next request queued without measuring only queueing.
DEFAULT_CONNECTIONS = 16
# One wrk thread drives tens of thousands of requests/s; a second would take a core from the
# server on this 2-core machine.
WRK_THREADS = 1
# Connections of the paced generator: enough that a slow answer never delays the next due request.
PACED_CONNECTIONS = 16
# Seconds gunicorn (two workers importing the app) may take to answer its first request.
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
# Seconds into a measured run when the connections' spread over the workers is sampled: every
# connection is open by then.
SPREAD_SAMPLE_SECONDS = 1.0
ENQUEUE_TARGET_RATIO = 0.40
STATUS_P99_TARGET_MS = 20.0
POST_BODY = '{"format":"json"}'
FLOOR_NAME = "POST floor: export row, audit entry, broker message only"
BATCHED_FLOOR_NAME = "POST floor, a worker's concurrent requests written together"

# Per wrk thread: load "path<TAB>token" lines, pre-format the requests, rotate through them from
# an offset of their own; print the summary as one JSON line when done.
WRK_SCRIPT = r"""
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local prepared = {}
local n = 0
local i = 0
function init(args)
  local method, file, body = args[1], args[2], args[3]
  if body == nil or body == "" then body = nil end
  for line in io.lines(file) do
    local path, token = line:match("^([^\t]+)\t?(.*)$")
    local headers = {}
    if token ~= "" then headers["Authorization"] = "Bearer " .. token end
    if body then headers["Content-Type"] = "application/json" end
    n = n + 1
    prepared[n] = wrk.format(method, path, headers, body)
  end
  i = ((id or 0) * 997) % n
end

function request()
  i = i % n + 1
  return prepared[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Measurement:
    """One row of the results table."""

    name: str
    load: str
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU milliseconds per answered request: gunicorn (master and workers), PostgreSQL (all its
    # processes), Redis, and the rest of the machine (the load generator and anything else).
    # Established connections per gunicorn worker a second into the run, e.g. "13/3".
    connections_per_worker: str
    gunicorn_cpu_ms: float
    postgres_cpu_ms: float
    redis_cpu_ms: float
    rest_cpu_ms: float
    machine_busy_percent: float


@dataclass
class Gunicorn:
    """A running gunicorn: its port, and the processes whose CPU the runs measure."""

    port: int
    # Name -> root pid of a process tree: gunicorn's master, PostgreSQL's postmaster, Redis.
    measured: dict[str, int]
    # The niceness the measured runs raise these processes to; None leaves them alone.
    niceness: int | None = None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare_database(endpoints: StackEndpoints) -> list[str]:
    """Apply the schema, seed users and return the ids of USERS of them that may export.

    The seed soft-deletes a share of its users, as an application does; the API refuses
    exports for those accounts (403), so they are seeded but not used.
    """
    seeded = USERS + USERS // SEEDED_SPARE_DIVISOR
    with connect(endpoints.database_url) as conn:
        apply_schema(conn)
        conn.commit()
        report = seed_database(conn, users=seeded)
        conn.commit()
        print(f"seeded {seeded} users in {report.seconds:.1f} s", flush=True)
        ids = [
            str(row[0])
            for row in conn.execute(
                "SELECT id FROM users WHERE deleted_at IS NULL ORDER BY id LIMIT %s", (USERS,)
            )
        ]
    if len(ids) < USERS:
        raise SystemExit(f"the seed left {len(ids)} live users; the benchmark needs {USERS}")
    return ids


def sign_tokens(user_ids: Sequence[str], secret: str) -> dict[str, str]:
    """Return an HS256 token for each user, signed with the stack's dev secret."""
    now = int(time.time())
    return {
        user: jwt.encode(
            {"sub": user, "iat": now, "exp": now + TOKEN_LIFETIME_SECONDS}, secret, "HS256"
        )
        for user in user_ids
    }


def server_env(
    endpoints: StackEndpoints, port: int, *, workers: int | None = None, threads: int | None = None
) -> dict[str, str]:
    """Return gunicorn's environment: this process's, the stack's, the bench's settings.

    `workers` and `threads` override `deploy/gunicorn.conf.py`'s defaults, for both apps alike.
    """
    sizing = {
        name: str(value)
        for name, value in (("API_WORKERS", workers), ("API_THREADS", threads))
        if value is not None
    }
    inherited = {
        key: value
        for key, value in os.environ.items()  # noqa: TID251 - the bench is an entry point
        if not key.startswith(("DATABASE", "REDIS", "S3_", "JWT_", "BROKER", "EXPORT_", "API_"))
    }
    return {
        **inherited,
        **endpoints.as_env(),
        "BROKER_URL": f"{endpoints.redis_url.rsplit('/', 1)[0]}/{BROKER_DB}",
        "EXPORT_RATE_LIMIT": str(GENEROUS_RATE_LIMIT),
        "EXPORT_ADMIN_RATE_LIMIT": str(GENEROUS_RATE_LIMIT),
        "API_BIND": f"127.0.0.1:{port}",
        "LOG_FORMAT": "json",
        **sizing,
    }


@contextmanager
def serve(
    app: str,
    env: dict[str, str],
    *,
    port: int,
    log: Path,
    probe: str,
    services: dict[str, int],
    niceness: int | None,
) -> Iterator[Gunicorn]:
    """Run gunicorn with the project's configuration serving `app` until the block ends."""
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", app],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers(port, probe):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn serving {app} did not start; see {log}")
            time.sleep(0.1)
        yield Gunicorn(port, {"gunicorn": process.pid, **services}, niceness)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _answers(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _cpu_ticks(pids: Sequence[int]) -> int:
    """Return the user+system clock ticks the processes have used."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def _tree(pid: int) -> list[int]:
    """Return the process and all its descendants (gunicorn workers, PostgreSQL backends)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [pid, *(found for child in children for found in _tree(int(child)))]


def _socket_owners(workers: Sequence[int]) -> dict[str, int]:
    """Return "socket:[inode]" -> pid for every socket the worker processes hold."""
    owners = {}
    for pid in workers:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                owners[target] = pid
    return owners


def _server_sockets(port: int) -> dict[int, str]:
    """Return peer port -> "socket:[inode]" for established connections to `port` on loopback."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            found[int(remote.rsplit(":", 1)[1], 16)] = f"socket:[{inode}]"
    return found


def workers_of(server: Gunicorn) -> list[int]:
    """Return the gunicorn worker pids (the master's children)."""
    return _tree(server.measured["gunicorn"])[1:]


def owner_lookup(server: Gunicorn) -> Callable[[int], int | None]:
    """Return a function from a client's local port to the worker pid serving that connection."""
    workers = workers_of(server)

    def owner_of(client_port: int) -> int | None:
        inode = _server_sockets(server.port).get(client_port)
        return None if inode is None else _socket_owners(workers).get(inode)

    return owner_of


def connections_per_worker(server: Gunicorn) -> str:
    """Return how many established connections each worker holds now, e.g. "13/3"."""
    owners = _socket_owners(workers_of(server))
    counts = Counter(owners.get(inode) for inode in _server_sockets(server.port).values())
    return "/".join(str(counts[pid]) for pid in workers_of(server))


@contextmanager
def spread_sampler(server: Gunicorn) -> Iterator[list[str]]:
    """Sample `connections_per_worker` once, a second into the block; yield where it lands."""
    sample: list[str] = []
    timer = threading.Timer(
        SPREAD_SAMPLE_SECONDS, lambda: sample.append(connections_per_worker(server))
    )
    timer.start()
    try:
        yield sample
    finally:
        timer.cancel()


def raise_priority(roots: Sequence[int], niceness: int) -> None:
    """Set every thread of these process trees and of this process to `niceness` (root only).

    On a machine shared with other work, this gives the measured stack the CPU first, as a
    dedicated API host would; Linux keeps a niceness per thread, so each task is set.
    """
    pids = [os.getpid(), *(pid for root in roots for pid in _tree(root))]
    for pid in pids:
        try:
            tasks = [int(task) for task in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for task in tasks:
            try:
                os.setpriority(os.PRIO_PROCESS, task, niceness)
            except OSError:
                continue


def _machine_ticks() -> tuple[int, int]:
    """Return (busy, total) clock ticks of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@contextmanager
def cpu_meter(roots: dict[str, int]) -> Iterator[dict[str, float]]:
    """Measure each named process tree's CPU seconds and the machine's busy share in the block.

    A process that starts inside the block counts from zero; one that ends inside it is lost
    (gunicorn workers and the API's database sessions live for the whole run).
    """
    hertz = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    before = {pid: _cpu_ticks([pid]) for root in roots.values() for pid in _tree(root)}
    figures: dict[str, float] = {}
    busy0, total0 = _machine_ticks()
    yield figures
    busy1, total1 = _machine_ticks()
    for name, root in roots.items():
        pids = _tree(root)
        used = _cpu_ticks(pids) - sum(before.get(pid, 0) for pid in pids)
        figures[name] = used / hertz
    figures["machine_busy_percent"] = 100 * (busy1 - busy0) / max(1, total1 - total0)
    busy_seconds = (busy1 - busy0) / hertz
    figures["rest"] = busy_seconds - sum(figures[name] for name in roots)
    figures["seconds"] = time.monotonic() - started


def _measurement(
    name: str,
    load: str,
    *,
    count: int,
    rate: float,
    p50: float,
    p99: float,
    errors: int,
    cpu: dict[str, float],
    spread: str,
) -> Measurement:
    """Build a table row, turning CPU seconds into milliseconds per answered request."""

    def per_request(key: str) -> float:
        return 1000 * cpu.get(key, 0.0) / max(1, count)

    return Measurement(
        name=name,
        load=load,
        requests=count,
        requests_per_second=rate,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        connections_per_worker=spread,
        gunicorn_cpu_ms=per_request("gunicorn"),
        postgres_cpu_ms=per_request("postgres"),
        redis_cpu_ms=per_request("redis"),
        rest_cpu_ms=per_request("rest"),
        machine_busy_percent=cpu["machine_busy_percent"],
    )


def write_requests(path: Path, lines: Sequence[tuple[str, str]]) -> Path:
    """Write "path<TAB>token" lines for the wrk script."""
    path.write_text("".join(f"{target}\t{token}\n" for target, token in lines))
    return path


def run_wrk(
    name: str,
    server: Gunicorn,
    workdir: Path,
    requests_file: Path,
    *,
    method: str,
    seconds: int,
    connections: int,
    body: str = "",
) -> Measurement:
    """Warm up, then run wrk for `seconds` and return its figures."""
    script = workdir / "rotate.lua"
    script.write_text(WRK_SCRIPT)

    def wrk(duration: int) -> dict[str, Any]:
        command = [
            "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{server.port}", "--",
            method, str(requests_file), body,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON "))
        parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
        return parsed

    wrk(WARMUP_SECONDS)
    if server.niceness is not None:
        raise_priority(list(server.measured.values()), server.niceness)
    with cpu_meter(server.measured) as cpu, spread_sampler(server) as spread:
        figures = wrk(seconds)
    count = int(figures["requests"])
    errors = sum(int(figures[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return _measurement(
        name,
        f"wrk, {connections} connections",
        count=count,
        rate=count / (figures["duration_us"] / 1e6),
        p50=figures["p50_us"] / 1000,
        p99=figures["p99_us"] / 1000,
        errors=errors,
        cpu=cpu,
        spread=spread[0] if spread else "?",
    )


def run_paced_at(
    name: str, server: Gunicorn, requests: Sequence[PacedRequest], *, rate: float, seconds: int
) -> Measurement:
    """Hold `rate` requests/s for `seconds` with the paced generator and return its figures."""
    run_paced(
        "127.0.0.1",
        server.port,
        requests,
        rate_per_second=rate,
        duration_seconds=WARMUP_SECONDS,
        connections=PACED_CONNECTIONS,
    )
    if server.niceness is not None:
        raise_priority(list(server.measured.values()), server.niceness)
    with cpu_meter(server.measured) as cpu, spread_sampler(server) as spread:
        result = run_paced(
            "127.0.0.1",
            server.port,
            requests,
            rate_per_second=rate,
            duration_seconds=seconds,
            connections=PACED_CONNECTIONS,
            owner_of=owner_lookup(server),
            owners=len(workers_of(server)),
        )
    count = len(result.latencies_ms)
    late = percentile(result.late_ms, 99)
    own = percentile(result.own_delay_ms, 99)
    print(
        f"{name}: requests left p99 {late:.2f} ms after their due time, "
        f"{own:.2f} ms of it the generator's own delay",
        flush=True,
    )
    return _measurement(
        name,
        f"paced {rate:.0f}/s, {PACED_CONNECTIONS} connections",
        count=count,
        rate=result.achieved_rate,
        p50=result.percentile_ms(50),
        p99=result.percentile_ms(99),
        errors=result.errors,
        cpu=cpu,
        spread=spread[0] if spread else "?",
    )


def status_targets(database_url: str, tokens: dict[str, str]) -> list[tuple[str, str]]:
    """Return one existing export's status path per user, with the owner's token."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (user_id) id, user_id FROM data_exports ORDER BY user_id, id"
        )
        return [(f"/api/exports/{row[0]}/status", tokens[str(row[1])]) for row in rows]


def benchmark(
    root: Path,
    *,
    seconds: int,
    connections: int,
    niceness: int | None,
    workers: int | None = None,
    threads: int | None = None,
) -> list[Measurement]:
    """Run every measurement against a stack under `root`; return the rows of the table."""
    stack = LocalStack(root / "stack")
    endpoints = stack.up()
    try:
        tokens = sign_tokens(prepare_database(endpoints), endpoints.jwt_secret)
        services = {
            name: pid for name, pid in stack.managed_pids().items() if name in {"postgres", "redis"}
        }
        port = free_port()
        env = server_env(endpoints, port, workers=workers, threads=threads)
        log = root / "gunicorn.log"
        rows: list[Measurement] = []

        def record(row: Measurement) -> None:
            rows.append(row)
            print(row, flush=True)

        def start(app: str, probe: str) -> contextlib.AbstractContextManager[Gunicorn]:
            return serve(
                app, env, port=port, log=log, probe=probe, services=services, niceness=niceness
            )

        def peak(name: str, server: Gunicorn, file: Path, method: str, body: str = "") -> None:
            record(
                run_wrk(
                    name,
                    server,
                    root,
                    file,
                    method=method,
                    body=body,
                    seconds=seconds,
                    connections=connections,
                )
            )

        with start("bench.trivial_app:app", PING_PATH) as server:
            trivial = write_requests(root / "trivial.txt", [(PING_PATH, "")])
            peak("GET trivial endpoint", server, trivial, "GET")
        with start("api.wsgi:app", "/healthz") as server:
            posts = write_requests(
                root / "posts.txt", [("/api/exports/user", token) for token in tokens.values()]
            )
            peak("POST /api/exports/user", server, posts, "POST", POST_BODY)
            targets = status_targets(endpoints.database_url, tokens)
            statuses = write_requests(root / "status.txt", targets)
            name = "GET /api/exports/{id}/status"
            peak(f"{name} at peak", server, statuses, "GET")
            half = rows[-1].requests_per_second / 2
            paced = [
                PacedRequest("GET", path, {"Authorization": f"Bearer {token}"})
                for path, token in targets
            ]
            record(run_paced_at(f"{name} at half peak", server, paced, rate=half, seconds=seconds))
        with start("bench.trivial_app:app", PING_PATH) as server:
            ping = [PacedRequest("GET", PING_PATH, {})]
            record(
                run_paced_at(
                    "GET trivial endpoint, same paced rate",
                    server,
                    ping,
                    rate=half,
                    seconds=seconds,
                )
            )
            # Again at the end: the machine is shared, and the drift between the two trivial
            # runs says how far the ratios can be trusted.
            peak("GET trivial endpoint, again after the API runs", server, trivial, "GET")
        with start("bench.floor_app:from_env()", PING_PATH) as server:
            floors = write_requests(
                root / "floor.txt", [(FLOOR_PATH.format(user_id=user), "") for user in tokens]
            )
            peak(FLOOR_NAME, server, floors, "POST", POST_BODY)
            batched = write_requests(
                root / "floor-batched.txt",
                [(BATCHED_FLOOR_PATH.format(user_id=user), "") for user in tokens],
            )
            peak(BATCHED_FLOOR_NAME, server, batched, "POST", POST_BODY)
        return rows
    finally:
        stack.down()


def machine() -> str:
    """Describe the machine the figures come from."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory_kib / 2**20:.0f} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}"
    )


def load_average() -> str:
    """Return the 1-minute load average: how much else wanted the CPUs."""
    return Path("/proc/loadavg").read_text().split()[0]


def on_one_worker(row: Measurement) -> bool:
    """Return whether every connection of a run was on one of several gunicorn workers."""
    try:
        counts = [int(count) for count in row.connections_per_worker.split("/")]
    except ValueError:  # "?" when the spread could not be sampled
        return False
    return len(counts) > 1 and sum(1 for count in counts if count) == 1


def served_cpu_ms(row: Measurement) -> float:
    """Return the CPU milliseconds per request of the serving processes (not the generator)."""
    return row.gunicorn_cpu_ms + row.postgres_cpu_ms + row.redis_cpu_ms


def report(
    rows: Sequence[Measurement], *, loads: tuple[str, str], niceness: int | None, sizing: str
) -> str:
    """Return the results table and the verdict on each target, as Markdown."""
    priority = "default priority" if niceness is None else f"measured processes at nice {niceness}"
    lines = [
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}.",
        f"Load average (1 min) before / after: {loads[0]} / {loads[1]}; {priority}.",
        f"gunicorn, both apps: {sizing}.",
        "",
        "| endpoint | load | requests | req/s | p50 ms | p99 ms | errors | conns/worker | "
        "CPU ms/req: gunicorn | PostgreSQL | Redis | rest | machine busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.load} | {r.requests:,} | {r.requests_per_second:,.0f} | "
            f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.connections_per_worker} | "
            f"{r.gunicorn_cpu_ms:.2f} | {r.postgres_cpu_ms:.2f} | {r.redis_cpu_ms:.2f} | "
            f"{r.rest_cpu_ms:.2f} | {r.machine_busy_percent:.0f} |"
        )
    trivial, enqueue, peak, half, again = rows[0], rows[1], rows[2], rows[3], rows[5]
    floor, batched = rows[6], rows[7]
    # A trivial run with every connection on one worker measures one core, not the machine.
    spread = [run for run in (trivial, again) if not on_one_worker(run)] or [trivial, again]
    trivial_rate = sum(run.requests_per_second for run in spread) / len(spread)
    ratio = enqueue.requests_per_second / trivial_rate
    met = "met" if ratio >= ENQUEUE_TARGET_RATIO else "not met"
    trivial_cpu = sum(served_cpu_ms(run) for run in spread) / len(spread)
    enqueue_cpu = served_cpu_ms(enqueue)
    lopsided = [run.name for run in rows if on_one_worker(run)]
    if on_one_worker(peak):
        status_verdict = "not a valid test: the peak it halves had every connection on one worker"
    else:
        status_verdict = "met" if half.p99_ms < STATUS_P99_TARGET_MS else "not met"
    lines.append("")
    if lopsided:
        lines.append(
            "- Every connection on one worker, so one core was the ceiling, in: "
            + "; ".join(lopsided)
            + "."
        )
    lines += [
        f"- Enqueue at {ratio:.0%} of the trivial endpoint's requests/s "
        f"({'mean of its two runs' if len(spread) == 2 else 'its run with both workers serving'}) "
        f"(target >= {ENQUEUE_TARGET_RATIO:.0%}): {met}.",
        f"- Enqueue CPU per request {enqueue_cpu:.2f} ms (gunicorn + PostgreSQL + Redis) against "
        f"{trivial_cpu:.2f} ms for the trivial endpoint: {trivial_cpu / enqueue_cpu:.0%} of its "
        "requests per CPU-second, whichever worker the connections landed on.",
        f"- The floor (an export row with its audit entry and a broker message, nothing else) at "
        f"{floor.requests_per_second / trivial_rate:.0%} of the trivial endpoint's requests/s, "
        f"{served_cpu_ms(floor):.2f} ms of CPU per request (PostgreSQL "
        f"{floor.postgres_cpu_ms:.2f}, Redis {floor.redis_cpu_ms:.2f}); the enqueue endpoint at "
        f"{enqueue.requests_per_second / floor.requests_per_second:.0%} of the floor.",
        f"- The floor with a worker's concurrent requests written by one statement and one Redis "
        f"pipeline: {batched.requests_per_second / trivial_rate:.0%} of the trivial endpoint's "
        f"requests/s, {served_cpu_ms(batched):.2f} ms of CPU per request (PostgreSQL "
        f"{batched.postgres_cpu_ms:.2f}, Redis {batched.redis_cpu_ms:.2f}).",
        f"- Status p99 at half its peak: {half.p99_ms:.2f} ms (target < "
        f"{STATUS_P99_TARGET_MS:.0f} ms): {status_verdict}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=DEFAULT_RUN_SECONDS)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary root (logs)")
    parser.add_argument(
        "--niceness",
        type=int,
        help="raise the measured processes to this niceness (e.g. -10; needs root), so other "
        "work on a shared machine runs after them",
    )
    parser.add_argument(
        "--workers", type=int, help="gunicorn workers for both apps (API_WORKERS; default 2)"
    )
    parser.add_argument(
        "--threads", type=int, help="threads per worker for both apps (API_THREADS; default 4)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="api-bench-"))
    load_before = load_average()
    try:
        rows = benchmark(
            root,
            seconds=args.seconds,
            connections=args.connections,
            niceness=args.niceness,
            workers=args.workers,
            threads=args.threads,
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", flush=True)
    sizing = (
        f"{args.workers or 'default'} workers x {args.threads or 'default'} threads"
        if args.workers or args.threads
        else "deploy/gunicorn.conf.py defaults"
    )
    loads = (load_before, load_average())
    print(report(rows, loads=loads, niceness=args.niceness, sizing=sizing))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
