"""`exportctl restore SOURCE --database URL`: load an export back into a database.

SOURCE is an export folder or `s3://bucket/prefix/` (objects plus manifest.json), or one data
object. The target is always named with --database, never taken from DATABASE_URL, so a restore
cannot land in the configured database by accident. S3 settings come from S3_* variables, else the
local development stack. Everything is loaded in one transaction: on any error nothing is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.database import connect, redact_url
from pipelines.restore import RestoreProgress, RestoreReport, RestoreSource, open_source, restore
from pipelines.storage.client import create_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

APPLICATION_NAME = "exportctl-restore"
S3_VARIABLES = ("S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


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
    client = _s3_client(environ) if args.source.startswith("s3://") else None
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


def _s3_client(environ: Mapping[str, str]) -> S3Client:
    """Build the S3 client from S3_* variables, else from the local development stack."""
    if all(environ.get(name) for name in S3_VARIABLES):
        return create_s3_client(
            endpoint_url=environ.get("S3_ENDPOINT_URL") or None,
            region=environ.get("S3_REGION") or "auto",
            access_key_id=environ["S3_ACCESS_KEY_ID"],
            secret_access_key=environ["S3_SECRET_ACCESS_KEY"],
        )
    from exportctl.devstack import LocalStack  # the stack's packages are only needed here

    stack = LocalStack(Path(environ.get("EXPORTCTL_DEV_ROOT", ".dev"))).up(environ)
    return create_s3_client(
        endpoint_url=stack.s3_endpoint_url,
        region=stack.s3_region,
        access_key_id=stack.s3_access_key_id,
        secret_access_key=stack.s3_secret_access_key,
    )
