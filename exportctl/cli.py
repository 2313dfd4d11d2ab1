"""Argument parsing and dispatch for `exportctl`.

Each command lives in its own module exposing `register(subparsers)`, which adds a subparser whose
`handler` default takes the parsed arguments and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pipelines.errors import ExportError

# Modules under `exportctl.commands`, in the order `--help` lists them.
COMMAND_MODULES = (
    "demo",
    "test",
    "dev",
    "db",
    "verify",
    "seed",
    "export",
    "restore",
    "scheduler",
    "token",
    "exports",
    "stats",
    "queues",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full `exportctl` parser from every command module."""
    parser = argparse.ArgumentParser(
        prog="exportctl",
        description="Data Export System: local stack, schema, demo data, exports and restore.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"exportctl.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `exportctl` with the given arguments and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ExportError as exc:
        print(f"exportctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
