"""`exportctl demo`: the system's main job, on the embedded stack, through its real processes.

Brings up PostgreSQL, Redis and the S3 server, runs the Procfile's `release` step, seeds demo data
when the database is empty, starts `web`, `worker`, `verifier` and `scheduler` under one
supervisor, then drives the public HTTP API with development tokens: a user export in every
format and compression, a scheduled export, an admin bulk export. It follows them, downloads each
through its download URL checking the SHA-256, prints a table and where to look next, and serves
until Ctrl-C; `--once` exits, 0 only if every export completed, verified and downloaded intact.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from exportctl.api_client import ApiClient
from exportctl.commands.token import mint_token
from exportctl.devstack import LocalStack, StackEndpoints
from exportctl.follow import Tracked, follow
from exportctl.output import Table, print_table
from exportctl.supervisor import LinePrinter, Supervisor, load_procfile, with_bin_dir
from pipelines.database import connect
from pipelines.errors import ExportError
from pipelines.options import COMPRESSIONS, FORMATS

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("web", "worker", "verifier", "scheduler")
# Small enough to seed (with objects in the bucket) in a few seconds, large enough to show skew.
DEMO_USERS = 300
DEMO_MAX_FILES = 3000
# Rows per bulk-export shard: small, so even demo data shows several shards.
DEMO_SHARD_ROWS = 5000
# The demo sends 13 exports per run for one user; room for many runs within the hour.
DEMO_RATE_LIMIT = 1000
# Seconds ahead the scheduled export is due: the scheduler's pass comes every 5 s.
SCHEDULE_AHEAD_SECONDS = 5
# Seconds for the release step, the API to answer, and every export to settle on a loaded machine.
RELEASE_TIMEOUT_SECONDS = 120.0
READY_TIMEOUT_SECONDS = 90.0
EXPORTS_TIMEOUT_SECONDS = 300.0
INTERRUPTED_EXIT_CODE = 130  # the shell's code for a command ended by SIGINT
# Variables of the caller's environment that would point the processes elsewhere than the stack.
DROPPED_PREFIXES = (
    "JWT_",
    "BROKER_URL",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
    "dramatiq_prom_",
)


class DemoError(ExportError):
    """A stage of the demo failed; the message says which and why."""


@dataclass
class DemoExport:
    """One export the demo asked for, and what became of it."""

    label: str
    client: ApiClient
    tracked: Tracked
    downloaded_sha256: str | None = None
    problem: str | None = None

    @property
    def document(self) -> dict[str, Any] | None:
        """Return the export's last status document."""
        return self.tracked.document

    @property
    def verified(self) -> bool:
        """Return whether it completed, passed verification and downloaded intact."""
        document = self.document
        return (
            document is not None
            and document["status"] == "completed"
            and document["verification"]["status"] == "passed"
            and self.downloaded_sha256 == document["sha256"]
        )


@dataclass(frozen=True)
class Ports:
    """The loopback ports the demo's processes listen on."""

    api: int
    worker_metrics: int
    verifier_metrics: int


@dataclass(frozen=True)
class DemoRun:
    """What the stages of one demo run share."""

    supervisor: Supervisor
    endpoints: StackEndpoints
    ports: Ports
    root: Path
    console: Console | None
    out: TextIO

    @property
    def api_url(self) -> str:
        """Return the API's base URL."""
        return f"http://127.0.0.1:{self.ports.api}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl demo`."""
    parser = subparsers.add_parser("demo", help="run the main job on the embedded local stack")
    parser.add_argument("--once", action="store_true", help="print the summary and exit")
    parser.add_argument("--users", type=int, default=DEMO_USERS, help="users to seed if empty")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder for the local stack's data (default .dev/, or EXPORTCTL_DEV_ROOT)",
    )
    parser.add_argument(
        "--procfile", type=Path, default=ROOT / "Procfile", help="the Procfile to run"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the main job; with --once, exit after the summary."""
    environ: Mapping[str, str] = os.environ  # noqa: TID251 - entry point
    root = (args.root or Path(environ.get("EXPORTCTL_DEV_ROOT", ".dev"))).resolve()
    procfile = load_procfile(args.procfile, required=("release", *PROCESSES))
    out = sys.stdout
    console = Console(file=out) if out.isatty() else None
    stack = LocalStack(root)
    already_up = all(status.answering for status in stack.status(environ))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    _say(out, f"local stack under {root}/")
    endpoints = stack.up(environ)
    ports = Ports(_free_port(), _free_port(), _free_port())
    names = ("release", *PROCESSES)
    supervisor = Supervisor(
        procfile,
        env=_process_env(environ, endpoints, ports, root),
        cwd=ROOT,
        sink=_ConsoleSink(console, names) if console else LinePrinter(names, out),
        extra_env=_metrics_env(ports, root),
    )
    demo = DemoRun(supervisor, endpoints, ports, root, console, out)
    code = INTERRUPTED_EXIT_CODE  # until the exports are judged
    try:
        exports = _main_job(demo, args.users)
        code = 0 if exports and all(export.verified for export in exports) else 1
        _say(out, f"finished in {time.monotonic() - started:.1f} s: " + _verdict(exports))
        if not args.once:
            _say(out, "serving until Ctrl-C")
            _serve(supervisor)
    except DemoError as exc:
        print(f"\ndemo FAILED: {exc}", file=out, flush=True)
        code = 1
    except KeyboardInterrupt:
        pass  # Ctrl-C while serving keeps the verdict; before it, the exit code says interrupted
    finally:
        _say(out, "stopping the processes")
        supervisor.stop()
        if not already_up:
            _say(out, "stopping the local stack (data stays in the folder)")
            stack.down()
    return code


def _main_job(run: DemoRun, users: int) -> list[DemoExport]:
    supervisor, endpoints, out = run.supervisor, run.endpoints, run.out
    _say(out, "release: migrate the schema")
    if supervisor.run_to_end("release", timeout_seconds=RELEASE_TIMEOUT_SECONDS) != 0:
        raise DemoError("the release step (schema migration) failed; see its output above")
    _say(out, "seed demo data if the database is empty")
    user_id, admin_id = _seed(endpoints, users, out)
    _say(out, f"start {', '.join(PROCESSES)}")
    supervisor.start(PROCESSES)
    api_url = run.api_url
    _wait_ready(api_url, supervisor)
    user = ApiClient(api_url, mint_token(endpoints.jwt_secret, user_id))
    admin = ApiClient(api_url, mint_token(endpoints.jwt_secret, admin_id, admin=True))
    _say(out, "request exports through the API")
    exports = _request_exports(user, admin)
    _say(out, f"follow {len(exports)} exports until they are verified")
    all_settled = follow(
        admin,
        [export.tracked for export in exports],
        timeout_seconds=EXPORTS_TIMEOUT_SECONDS,
        stream=out,
        console=run.console,
        on_poll=lambda: _check_processes(supervisor),
    )
    _say(out, "download each export through its download URL, checking its SHA-256")
    _download_all(exports, run.root / "downloads")
    print_table(_exports_table(exports), out)
    _print_next_steps(run, user_id, admin_id)
    if not all_settled:
        raise DemoError(f"not every export settled within {EXPORTS_TIMEOUT_SECONDS:.0f} s")
    return exports


def _process_env(
    environ: Mapping[str, str], endpoints: StackEndpoints, ports: Ports, root: Path
) -> dict[str, str]:
    """Return the environment every process runs with: the stack's services and demo limits."""
    inherited = {
        name: value for name, value in environ.items() if not name.startswith(DROPPED_PREFIXES)
    }
    env = {
        **inherited,
        **endpoints.as_env(),
        "EXPORTCTL_DEV_ROOT": str(root),
        "API_BIND": f"127.0.0.1:{ports.api}",
        "API_WORKERS": "2",
        "LOG_FORMAT": environ.get("LOG_FORMAT", "text"),
        "EXPORT_RATE_LIMIT": str(DEMO_RATE_LIMIT),
        "EXPORT_ADMIN_RATE_LIMIT": str(DEMO_RATE_LIMIT),
        "BULK_TARGET_SHARD_ROWS": str(DEMO_SHARD_ROWS),
        "PYTHONUNBUFFERED": "1",
        "dramatiq_prom_host": "127.0.0.1",
    }
    return with_bin_dir(env, Path(sys.executable).parent)


def _metrics_env(ports: Ports, root: Path) -> dict[str, dict[str, str]]:
    """Give the worker and the verifier each a metrics port and a fresh metrics folder."""
    extra = {}
    for name, port in (("worker", ports.worker_metrics), ("verifier", ports.verifier_metrics)):
        folder = root / "metrics" / name
        shutil.rmtree(folder, ignore_errors=True)  # prometheus-client's multiprocess rule
        folder.mkdir(parents=True)
        extra[name] = {"dramatiq_prom_port": str(port), "dramatiq_prom_db": str(folder)}
    return extra


def _seed(endpoints: StackEndpoints, users: int, out: TextIO) -> tuple[str, str]:
    """Seed when empty; return the user with most files and an administrator's id."""
    from exportctl.seeding import seed_database, write_objects
    from pipelines.storage.client import create_s3_client

    with connect(endpoints.database_url) as conn:
        existing = conn.execute("SELECT count(*) FROM users").fetchone()
        if existing is not None and existing[0] == 0:
            report = seed_database(conn, users=users, max_files=DEMO_MAX_FILES, seed=1)
            conn.commit()
            client = create_s3_client(
                endpoint_url=endpoints.s3_endpoint_url,
                region=endpoints.s3_region,
                access_key_id=endpoints.s3_access_key_id,
                secret_access_key=endpoints.s3_secret_access_key,
            )
            objects = write_objects(conn, client, endpoints.s3_bucket)
            print(
                f"    seeded {report.users} users, {report.files} files, {objects} objects",
                file=out,
            )
        row = conn.execute(
            "SELECT owner_id::text FROM files GROUP BY owner_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        admin = conn.execute(
            "SELECT id::text FROM users ORDER BY (role = 'admin') DESC, id LIMIT 1"
        ).fetchone()
    if row is None or admin is None:
        raise DemoError("the database has no user with files to export")
    return str(row[0]), str(admin[0])


def _wait_ready(api_url: str, supervisor: Supervisor) -> None:
    """Wait until the API's /readyz answers 200 (its database, broker and limiter are up)."""
    import http.client
    from urllib.parse import urlsplit

    netloc = urlsplit(api_url).netloc
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        _check_processes(supervisor)
        conn = http.client.HTTPConnection(netloc, timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.3)
    raise DemoError(f"the API at {api_url} was not ready within {READY_TIMEOUT_SECONDS:.0f} s")


def _request_exports(user: ApiClient, admin: ApiClient) -> list[DemoExport]:
    """Ask for every format and compression, one scheduled export and one bulk export."""
    exports = []
    for export_format in FORMATS:
        for compression in COMPRESSIONS:
            answer = user.post(
                "/api/exports/user",
                {"format": export_format, "options": {"compression": compression}},
            )
            export_id = answer["export"]["id"]
            tracked = Tracked(f"user {export_id[:8]}", export_id)
            exports.append(DemoExport(tracked.label, user, tracked))
    due = datetime.now(UTC) + timedelta(seconds=SCHEDULE_AHEAD_SECONDS)
    request = user.post(
        "/api/exports/schedule",
        {
            "exportType": "user_data",
            "format": "jsonl",
            "options": {"compression": "zstd"},
            "scheduledAt": due.isoformat(),
        },
    )["request"]
    scheduled = Tracked(
        f"scheduled {request['id'][:8]}",
        resolve=_request_resolver(user, request["id"]),
        waiting_for=f"due at {due:%H:%M:%S}",
    )
    exports.append(DemoExport(scheduled.label, user, scheduled))
    bulk = admin.post(
        "/api/exports/bulk",
        {"format": "jsonl", "options": {"compression": "zstd", "includeSystemFields": True}},
    )["export"]
    tracked = Tracked(f"bulk {bulk['id'][:8]}", bulk["id"])
    exports.append(DemoExport(tracked.label, admin, tracked))
    return exports


def _request_resolver(client: ApiClient, request_id: str) -> Callable[[], str | None]:
    """Return a function naming the scheduled request's export once the scheduler fired it."""

    def resolve() -> str | None:
        request = client.get(f"/api/exports/schedule/{request_id}")["request"]
        if request["status"] in ("cancelled", "skipped", "failed"):
            raise DemoError(f"scheduled request {request_id} {request['status']}: "
                            f"{request['statusReason']}")  # fmt: skip
        export_id = request["exportId"]
        return str(export_id) if export_id else None

    return resolve


def _download_all(exports: Sequence[DemoExport], folder: Path) -> None:
    """Download every completed export, checking its SHA-256 against the recorded one."""
    for export in exports:
        document = export.document
        if document is None or document["status"] != "completed":
            export.problem = "not completed"
            continue
        try:
            saved = export.client.download(
                document["id"], folder, expected_sha256=document["sha256"]
            )
        except ExportError as exc:
            export.problem = str(exc)
            print(f"    {export.label}: download FAILED: {exc}", flush=True)
            continue
        export.downloaded_sha256 = saved.sha256


def _exports_table(exports: Sequence[DemoExport]) -> Table:
    rows = []
    for export in exports:
        document = export.document or {}
        ratio = document.get("compressionRatio")
        rows.append(
            (
                export.label,
                str(document.get("format", "-")),
                str(document.get("compression", "-")),
                _count(document.get("recordCount")),
                _count(document.get("sizeBytes")),
                f"{ratio:.2f}" if isinstance(ratio, int | float) else "-",
                _seconds(document),
                (document.get("sha256") or "-")[:16],
                "yes" if export.verified else f"NO ({_why(export)})",
            )
        )
    columns = ("export", "format", "compression", "rows", "bytes", "ratio", "seconds", "sha256")
    return Table(title="Exports", columns=(*columns, "verified"), rows=rows)


def _why(export: DemoExport) -> str:
    document = export.document
    if document is None:
        return "never started"
    if document["status"] != "completed":
        return str(document["status"])
    if document["verification"]["status"] != "passed":
        return f"verification {document['verification']['status']}"
    return export.problem or "download digest differs"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _seconds(document: Mapping[str, Any]) -> str:
    started, finished = document.get("startedAt"), document.get("finishedAt")
    if not started or not finished:
        return "-"
    delta = datetime.fromisoformat(finished) - datetime.fromisoformat(started)
    return f"{delta.total_seconds():.2f}"


def _verdict(exports: Sequence[DemoExport]) -> str:
    good = sum(export.verified for export in exports)
    if exports and good == len(exports):
        return f"all {good} exports completed, verified and downloaded intact"
    return f"{len(exports) - good} of {len(exports)} exports did not complete and verify"


def _print_next_steps(run: DemoRun, user_id: str, admin_id: str) -> None:
    endpoints, ports, root, api_url = run.endpoints, run.ports, run.root, run.api_url
    user_token = mint_token(endpoints.jwt_secret, user_id)
    admin_token = mint_token(endpoints.jwt_secret, admin_id, admin=True)
    lines = [
        "",
        "Where to look next:",
        f"  API             {api_url}   (OpenAPI document: {api_url}/openapi.json)",
        f"  API metrics     {api_url}/metrics",
        f"  worker metrics  http://127.0.0.1:{ports.worker_metrics}/metrics",
        f"  verifier metrics http://127.0.0.1:{ports.verifier_metrics}/metrics",
        f"  downloads       {root / 'downloads'}/",
        f"  user {user_id} token (8 h):",
        f"    {user_token}",
        f"  admin {admin_id} token (8 h):",
        f"    {admin_token}",
        "",
        "In another shell:",
        f"  export EXPORTCTL_DEV_ROOT={root} EXPORTCTL_API_URL={api_url}",
        f"  export EXPORTCTL_TOKEN=$(exportctl token --user {admin_id} --admin)",
        "  exportctl exports list",
        "  exportctl exports status ID --watch",
        "  exportctl exports download ID --out downloads/",
        "  exportctl stats",
        "  exportctl queues",
        f'  curl -H "Authorization: Bearer $EXPORTCTL_TOKEN" {api_url}/api/exports',
    ]
    print("\n".join(lines), file=run.out, flush=True)


def _check_processes(supervisor: Supervisor) -> None:
    """Fail the demo as soon as any process exited: nothing is restarted behind your back."""
    ended = supervisor.exited()
    if ended:
        names = ", ".join(f"{name} (exit {code})" for name, code in ended)
        raise DemoError(f"{names} stopped; see its output above")


def _serve(supervisor: Supervisor) -> None:
    """Keep the processes running until Ctrl-C or SIGTERM, or until one of them exits."""
    while True:
        _check_processes(supervisor)
        time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _say(out: TextIO, text: str) -> None:
    print(f"==> {text}", file=out, flush=True)


class _ConsoleSink:
    """Print process lines through the rich console, so they scroll above the progress bars."""

    def __init__(self, console: Console, names: Sequence[str]) -> None:
        self._console = console
        self._width = max(len(name) for name in names)
        self._styles = {name: _STYLES[i % len(_STYLES)] for i, name in enumerate(names)}

    def __call__(self, name: str, line: str) -> None:
        """Print one line of process `name`."""
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} |"
        self._console.print(
            Text.assemble((prefix, self._styles.get(name, "")), " ", line),
            soft_wrap=True,
            highlight=False,
        )


# rich style names of supervisor.COLOURS, in the same order.
_STYLES = ("cyan", "yellow", "green", "magenta", "blue", "red")
