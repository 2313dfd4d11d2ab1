"""`exportctl restore SOURCE --database URL`: load an export back into a database.

SOURCE is an export folder or `s3://bucket/prefix/` (objects plus manifest.json), or one data
object. The target is always named with --database, never taken from DATABASE_URL, so a restore
cannot land in the configured database by accident. S3 is chosen as `exportctl verify` chooses
it: the server S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY (with S3_ENDPOINT_URL, S3_REGION) name;
the local development stack only when no S3 variable is set; an error when only some are.
Everything is loaded in one transaction: on any error nothing is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from exportctl.commands.verify import s3_config
from pipelines.database import connect, redact_url
from pipelines.restore import RestoreProgress, RestoreReport, RestoreSource, open_source, restore

APPLICATION_NAME = "exportctl-restore"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl restore`."""
    parser = subparsers.add_parser(
        "restore",
        help="load an export (folder, s3:// prefix or one object) into a database",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="export folder, s3://bucket/prefix/ or file"
    )
    parser.add_argument(
        "--database", required=True, metavar="URL", help="PostgreSQL URL of the target database"
    )
    parser.add_argument(
        "--allow-non-empty",
        action="store_true",
        help="add to a target that already has users or files (an existing id is an error)",
    )
    parser.add_argument(
        "--fill-object-keys",
        action="store_true",
        help="for an export without system fields, set object_key to files/<owner_id>/<id>",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Restore SOURCE into --database and print what was loaded."""
    environ = os.environ  # noqa: TID251 - this command is an entry point
    client = s3_config(environ).client() if args.source.startswith("s3://") else None
    source = open_source(args.source, s3_client=client)
    with (
        connect(args.database, application_name=APPLICATION_NAME) as conn,
        _progress(source) as report_progress,
    ):
        report = restore(
            conn,
            source,
            allow_non_empty=args.allow_non_empty,
            fill_object_keys=args.fill_object_keys,
            progress=report_progress,
        )
    _print_report(report, redact_url(args.database))
    return 0


def _print_report(report: RestoreReport, target: str) -> None:
    counts = ", ".join(f"{count:,} {table}" for table, count in report.counts.items()) or "no rows"
    print(
        f"restored {counts} from {report.objects} object(s) ({report.stored_bytes:,} bytes) "
        f"into {target} in {report.seconds:.1f} s ({report.rows_per_second:,.0f} rows/s)"
    )
    if report.schema_applied:
        print("applied schema.sql to the empty target first")
    if report.verified:
        print("every object matched its manifest entry (size, SHA-256, record counts)")
    else:
        print("no manifest: the object's own metadata was the only check", file=sys.stderr)


@contextmanager
def _progress(source: RestoreSource) -> Iterator[Callable[[RestoreProgress], None] | None]:
    """Show a progress bar over stored bytes on a terminal; report nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    manifest = source.manifest
    total_bytes = sum(item.size_bytes for item in manifest.objects) if manifest else None
    expected = sum(manifest.totals.values()) if manifest else None
    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("restoring", total=total_bytes)

        def update(step: RestoreProgress) -> None:
            rows = f"{step.rows:,}" + (f"/{expected:,}" if expected else "")
            bar.update(
                task, completed=step.stored_bytes, description=f"{step.object_name} {rows} rows"
            )

        yield update
