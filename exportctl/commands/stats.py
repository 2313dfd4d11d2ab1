"""`exportctl stats [--system]`: export statistics from the API, as tables.

Your own figures from `user_export_summary`; with `--system` (an administrator's token) also the
system summary by type, format and status and the health figures of `export_health_metrics`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from exportctl.commands.exports import add_api_arguments, client_from_args
from exportctl.output import Table, print_table


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl stats`."""
    parser = subparsers.add_parser("stats", help="export statistics from the API")
    parser.add_argument(
        "--system", action="store_true", help="include system statistics (administrators)"
    )
    add_api_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the statistics."""
    client = client_from_args(args)
    params = {"include_system": "true"} if args.system else None
    document = client.get("/api/exports/stats", params)
    print_table(Table("Your exports", ("figure", "value"), _pairs(document["user"])))
    system = document.get("system")
    if system:
        rows = [
            (
                item["type"],
                item["format"],
                item["status"],
                str(item["exportCount"]),
                str(item["totalRecords"]),
                str(item["totalSizeBytes"]),
                _number(item["avgCompressionRatio"]),
                _number(item["avgDurationSeconds"]),
            )
            for item in system["summary"]
        ]
        columns = ("type", "format", "status", "exports", "rows", "bytes", "ratio", "avg s")
        print_table(Table("All exports", columns, rows))
        print_table(Table("Health", ("figure", "value"), _pairs(system["health"])))
    return 0


def _pairs(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(name, "-" if value is None else _number(value)) for name, value in document.items()]


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)
