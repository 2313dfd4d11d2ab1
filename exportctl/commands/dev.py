"""`exportctl dev`: bring the local PostgreSQL, Redis and S3 up, down, and look at them.

The stack lives under `.dev/` in the current folder unless `--root` or `EXPORTCTL_DEV_ROOT` says
otherwise. Services named in the environment (DATABASE_URL, REDIS_URL, S3_ENDPOINT_URL) are used
as they are and never started. Tables use `rich` on a terminal and plain text elsewhere.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from exportctl.devstack import LocalStack, ServiceStatus
from exportctl.devstack.process import log_tail
from exportctl.devstack.stack import SERVICES

DEFAULT_ROOT = ".dev"
ROOT_VARIABLE = "EXPORTCTL_DEV_ROOT"
# Enough log lines to see a start-up failure and what led to it.
DEFAULT_LOG_LINES = 50


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `dev` and its subcommands to the `exportctl` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        help=f"folder holding the stack's data and logs (default: ${ROOT_VARIABLE} or ./.dev)",
    )
    dev = subparsers.add_parser("dev", help="run PostgreSQL, Redis and S3 locally on 127.0.0.1")
    actions = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")

    up = actions.add_parser("up", parents=[common], help="start what is not running; print env")
    up.set_defaults(handler=_up)
    down = actions.add_parser("down", parents=[common], help="stop the servers this root runs")
    down.set_defaults(handler=_down)
    status = actions.add_parser(
        "status", parents=[common], help="show each service; exit 0 only if all answer"
    )
    status.set_defaults(handler=_status)
    env = actions.add_parser(
        "env", parents=[common], help="print `export` lines for the running stack"
    )
    env.set_defaults(handler=_env)
    logs = actions.add_parser("logs", parents=[common], help="print the end of the service logs")
    logs.add_argument("service", nargs="?", help=f"one of {', '.join(SERVICES)} (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=DEFAULT_LOG_LINES, help="lines per log")
    logs.set_defaults(handler=_logs)


def _environ() -> Mapping[str, str]:
    """Return the process environment: this command is an entry point."""
    return os.environ  # noqa: TID251


def _stack(args: argparse.Namespace) -> LocalStack:
    """Build the stack for --root, $EXPORTCTL_DEV_ROOT or ./.dev."""
    root = args.root or Path(_environ().get(ROOT_VARIABLE) or Path.cwd() / DEFAULT_ROOT)
    return LocalStack(root)


def _redact(url: str) -> str:
    """Hide a password in `url`, so a status table can be pasted anywhere."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table: with rich on a terminal, as aligned plain text otherwise."""
    if sys.stdout.isatty():
        table = Table(title=title)
        for column in header:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    endpoints = stack.up(_environ())
    rows = []
    for status in stack.status(_environ()):
        if not status.managed:
            state = "external"
        elif status.name in stack.startup_seconds:
            state = f"started, ready in {stack.startup_seconds[status.name]:.2f} s"
        else:
            state = "already running"
        rows.append([status.name, _redact(status.url), state, str(status.pid or "-")])
    _print_table(f"dev stack in {stack.root}", ["service", "url", "state", "pid"], rows)
    print()
    print('# Use the stack from a shell with: eval "$(exportctl dev env)"')
    for name, value in endpoints.as_env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _env(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not all(status.answering for status in stack.status(_environ())):
        print("exportctl: the dev stack is not fully up; run `exportctl dev up`", file=sys.stderr)
        return 1
    for name, value in stack.endpoints(_environ()).as_env().items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.down()
    print(f"dev stack in {stack.root} stopped")
    return 0


def _status_row(status: ServiceStatus) -> list[str]:
    return [
        status.name,
        _redact(status.url) or "-",
        "managed" if status.managed else "external",
        _yes_no(status.running),
        _yes_no(status.answering),
        str(status.pid or "-"),
    ]


def _status(args: argparse.Namespace) -> int:
    stack = _stack(args)
    report = stack.status(_environ())
    _print_table(
        f"dev stack in {stack.root}",
        ["service", "url", "kind", "running", "answering", "pid"],
        [_status_row(status) for status in report],
    )
    return 0 if all(status.answering for status in report) else 1


def _logs(args: argparse.Namespace) -> int:
    stack = _stack(args)
    names = [args.service] if args.service else list(SERVICES)
    for name in names:
        path = stack.log_path(name)
        if len(names) > 1:
            print(f"==> {path} <==")
        if path.exists():
            print(log_tail(path, args.lines))
        else:
            print(f"(no log yet at {path})")
    return 0
