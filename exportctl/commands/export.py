"""`exportctl export`: run an export directly with the engine, no broker or API involved.

One user (`--user ID`) or every user in shards (`--all`), to a local folder or an S3 prefix
(`s3://bucket/prefix/`). The target receives the data object(s), `manifest.json` and `SHA256SUMS`.
A progress display runs on a terminal; piped output gets one line per object.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from exportctl.environment import load_settings
from exportctl.output import Table, print_table
from pipelines.database import connect
from pipelines.export import WrittenObject
from pipelines.locations import parse_s3_url
from pipelines.options import COMPRESSIONS, FORMATS, parse_options
from pipelines.parts import choose_part_size
from pipelines.runner import ExportLimits, ExportRun, export_all, export_user
from pipelines.settings import Settings
from pipelines.sharding import TARGET_SHARD_ROWS
from pipelines.storage.client import s3_client_from_settings
from pipelines.storage.sinks import UploadedPart
from pipelines.storage.stores import ExportStore, LocalStore, S3Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl export`."""
    parser = subparsers.add_parser(
        "export",
        help="export one user or every user to a folder or s3:// prefix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="export this user's data")
    who.add_argument("--all", action="store_true", help="export every user, in shards")
    parser.add_argument("--format", choices=FORMATS, default="json")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="none")
    parser.add_argument("--no-metadata", action="store_true", help="leave out header and counts")
    parser.add_argument(
        "--include-system-fields",
        action="store_true",
        help="add object keys, soft-deleted rows and internal flags (needed for a full restore)",
    )
    parser.add_argument("--from", dest="date_from", help="files created on or after this date")
    parser.add_argument("--to", dest="date_to", help="files created on or before this date")
    parser.add_argument(
        "--shard-rows", type=int, default=TARGET_SHARD_ROWS, help="rows per shard with --all"
    )
    parser.add_argument("--out", required=True, help="a folder, or s3://BUCKET/PREFIX/")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the export and print what was written."""
    settings = load_settings()
    date_range = {
        key: value for key, value in (("start", args.date_from), ("end", args.date_to)) if value
    }
    options = parse_options(
        args.format,
        {
            "compression": args.compression,
            "includeMetadata": not args.no_metadata,
            "includeSystemFields": args.include_system_fields,
            **({"dateRange": date_range} if date_range else {}),
        },
        default_compression=settings.export_default_compression,
        compression_enabled=settings.export_compression_enabled,
    )
    store = _store(args.out, settings)
    max_size = settings.export_max_size if args.user else settings.export_bulk_max_size
    limits = ExportLimits(
        part_size=choose_part_size(max_size, settings.s3_part_size_bytes),
        max_size=max_size,
        level=_level(options.compression, settings),
    )
    with _progress() as progress:
        if args.user:
            task = progress.add_task(f"user {args.user}", total=None)

            def on_part(part: UploadedPart) -> None:
                progress.advance(task, part.size)

            with connect(settings.database_url, statement_timeout_ms=0) as conn:
                result = export_user(
                    conn,
                    user_id=args.user,
                    options=options,
                    store=store,
                    limits=limits,
                    on_part=on_part,
                )
        else:
            task = progress.add_task("shards", total=None)

            def on_shard(number: int, total: int, shard: WrittenObject) -> None:
                progress.update(task, total=total, completed=number)
                if not sys.stdout.isatty():
                    print(f"shard {number}/{total}: {shard.name} {shard.digests.stored_bytes} B")

            result = export_all(
                lambda: connect(settings.database_url, statement_timeout_ms=0),
                options=options,
                store=store,
                limits=limits,
                target_shard_rows=args.shard_rows,
                export_id=str(uuid.uuid4()),
                on_shard=on_shard,
            )
    _print_result(result)
    return 0


def _store(out: str, settings: Settings) -> ExportStore:
    if out.startswith("s3://"):
        bucket, prefix = parse_s3_url(out)
        return S3Store(s3_client_from_settings(settings), bucket=bucket, prefix=prefix)
    return LocalStore(Path(out))


def _level(compression: str, settings: Settings) -> int | None:
    return {"zstd": settings.export_zstd_level, "gzip": settings.export_gzip_level}.get(compression)


@contextmanager
def _progress() -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        disable=not sys.stdout.isatty(),
    )
    with progress:
        yield progress


def _print_result(result: ExportRun) -> None:
    manifest = result.manifest
    rows = [
        (
            written.name,
            str(sum(written.counts.values())),
            str(written.digests.stored_bytes),
            f"{written.digests.compression_ratio:.2f}",
            f"{written.seconds:.2f}",
            written.digests.stored_sha256,
        )
        for written in result.objects
    ]
    print_table(
        Table(
            title=f"Export {manifest.export_id} at {result.location}",
            columns=("object", "records", "bytes", "ratio", "seconds", "sha256"),
            rows=rows,
        )
    )
    totals = ", ".join(f"{count} {table}" for table, count in manifest.totals.items())
    print(f"{len(result.objects)} object(s), {totals}; manifest.json and SHA256SUMS written.")
