"""`exportctl test`: the whole check — ruff (lint and format), mypy, and the full pytest suite.

The suite starts its own services on free loopback ports. pytest's "no tests collected" (exit 5)
counts as a failure: a check that ran nothing has not passed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# pytest's exit code when it collected no test at all.
PYTEST_NO_TESTS_COLLECTED = 5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl test`."""
    parser = subparsers.add_parser(
        "test", help="ruff, mypy and the whole test suite against real services"
    )
    parser.add_argument(
        "--no-lint", action="store_true", help="skip ruff and mypy, run only pytest"
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="extra arguments passed to pytest"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run every check in order, stopping at the first that fails."""
    bin_dir = Path(sys.executable).parent
    steps: list[tuple[str, list[str]]] = []
    if not args.no_lint:
        steps += [
            ("ruff check", [str(bin_dir / "ruff"), "check", "."]),
            ("ruff format", [str(bin_dir / "ruff"), "format", "--check", "."]),
            ("mypy", [str(bin_dir / "mypy")]),
        ]
    extra = [arg for arg in args.pytest_args if arg != "--"]
    steps.append(("pytest", [sys.executable, "-m", "pytest", *extra]))
    for name, command in steps:
        print(f"==> {name}", flush=True)
        code = subprocess.call(command)
        if name == "pytest" and code == PYTEST_NO_TESTS_COLLECTED:
            print("exportctl test: pytest collected no tests; that is a failure", file=sys.stderr)
            return 1
        if code != 0:
            print(f"exportctl test: {name} failed (exit {code})", file=sys.stderr)
            return code
    print("exportctl test: all checks passed")
    return 0
