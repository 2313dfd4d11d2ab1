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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.text import Text

from exportctl.api_client import ApiClient
from exportctl.commands.demo_steps import (
    DemoError,
    DemoExport,
    DemoRun,
    Ports,
    check_processes,
    download_all,
    request_exports,
    seed,
    wait_ready,
)
from exportctl.commands.demo_summary import exports_table, print_next_steps, verdict
from exportctl.commands.token import mint_token
from exportctl.devstack import LocalStack, StackEndpoints
from exportctl.follow import follow
from exportctl.output import print_table
from exportctl.supervisor import LinePrinter, Supervisor, load_procfile, with_bin_dir

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("web", "worker", "verifier", "scheduler")
# Small enough to seed (with objects in the bucket) in a few seconds, large enough to show skew.
DEMO_USERS = 300
# Rows per bulk-export shard: small, so even demo data shows several shards.
DEMO_SHARD_ROWS = 5000
# The demo sends 13 exports per run for one user; room for many runs within the hour.
DEMO_RATE_LIMIT = 1000
# Seconds for the release step and every export to settle on a loaded machine.
RELEASE_TIMEOUT_SECONDS = 120.0
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
        _say(out, f"finished in {time.monotonic() - started:.1f} s: " + verdict(exports))
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
    user_id, admin_id = seed(endpoints, users, out)
    _say(out, f"start {', '.join(PROCESSES)}")
    supervisor.start(PROCESSES)
    api_url = run.api_url
    wait_ready(api_url, supervisor)
    user = ApiClient(api_url, mint_token(endpoints.jwt_secret, user_id))
    admin = ApiClient(api_url, mint_token(endpoints.jwt_secret, admin_id, admin=True))
    _say(out, "request exports through the API")
    exports = request_exports(user, admin)
    _say(out, f"follow {len(exports)} exports until they are verified")
    all_settled = follow(
        admin,
        [export.tracked for export in exports],
        timeout_seconds=EXPORTS_TIMEOUT_SECONDS,
        stream=out,
        console=run.console,
        on_poll=lambda: check_processes(supervisor),
    )
    _say(out, "download each export through its download URL, checking its SHA-256")
    download_all(exports, run.root / "downloads")
    print_table(exports_table(exports), out)
    print_next_steps(run, user_id, admin_id)
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


def _serve(supervisor: Supervisor) -> None:
    """Keep the processes running until Ctrl-C or SIGTERM, or until one of them exits."""
    while True:
        check_processes(supervisor)
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
