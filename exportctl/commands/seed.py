"""`exportctl seed`: fill users and files with skewed, hostile demo data, and objects on request.

Takes DATABASE_URL (and S3_* with --with-objects) from the environment, else brings up the local
development stack. Refuses a non-empty users table unless --replace is given, which deletes every
user and file first (and rows that cascade from users, such as permissions); it fails if exports
refer to those users, since exports are never deleted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from exportctl.seeding import database, objects, samples
from pipelines.errors import RetryableError
from pipelines.storage.client import create_s3_client


@dataclass(frozen=True)
class _Targets:
    database_url: str
    s3_endpoint_url: str | None
    s3_bucket: str
    s3_access_key_id: str
    s3_secret_access_key: str
    s3_region: str


def register(subparsers: Any) -> None:
    """Add the `seed` command."""
    parser = subparsers.add_parser(
        "seed",
        help="fill the users and files tables with demo data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=_non_negative, required=True, help="users to create")
    parser.add_argument(
        "--files",
        type=_non_negative,
        default=None,
        help=f"files in total (default {database.DEFAULT_FILES_PER_USER} per user)",
    )
    parser.add_argument(
        "--max-files",
        type=_positive,
        default=database.DEFAULT_MAX_FILES,
        help="files of the largest user at most (default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative,
        default=database.DEFAULT_SEED,
        help="the same seed gives the same data (default %(default)s)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="delete existing users and files first (refused while exports refer to them)",
    )
    parser.add_argument(
        "--with-objects",
        action="store_true",
        help="also put an object for every file in the bucket (for modest sizes)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=objects.DEFAULT_WORKERS,
        help="concurrent uploads with --with-objects (default %(default)s)",
    )
    parser.add_argument(
        "--damage",
        type=_non_negative,
        default=0,
        metavar="N",
        help="with --with-objects: break N objects (missing, altered, resized) and list them",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Seed the database (and bucket) and print what was made."""
    if args.damage and not args.with_objects:
        print("exportctl seed: --damage needs --with-objects", file=sys.stderr)
        return 2
    targets = _targets(os.environ, with_objects=args.with_objects)  # noqa: TID251
    try:
        conn = psycopg.connect(targets.database_url)
    except psycopg.OperationalError as exc:
        raise RetryableError(f"cannot connect to the database: {exc}") from exc
    with conn:
        report = database.seed_database(
            conn,
            users=args.users,
            files=args.files,
            max_files=args.max_files,
            seed=args.seed,
            replace=args.replace,
        )
        _print_report(report)
        if args.with_objects:
            _seed_objects(conn, targets, args, files=report.files)
    return 0


def _seed_objects(
    conn: psycopg.Connection[Any], targets: _Targets, args: argparse.Namespace, *, files: int
) -> None:
    if files > objects.OBJECTS_WARNING_FILES:
        print(
            f"warning: writing {files:,} objects; this takes a while and fills the bucket",
            file=sys.stderr,
        )
    client = create_s3_client(
        endpoint_url=targets.s3_endpoint_url,
        region=targets.s3_region,
        access_key_id=targets.s3_access_key_id,
        secret_access_key=targets.s3_secret_access_key,
    )
    started = time.monotonic()
    written = objects.write_objects(conn, client, targets.s3_bucket, workers=args.workers)
    print(
        f"objects: {written:,} written to bucket {targets.s3_bucket} "
        f"in {time.monotonic() - started:.1f} s"
    )
    if args.damage:
        damaged = objects.damage_objects(
            conn, client, targets.s3_bucket, count=args.damage, seed=args.seed
        )
        print(f"damaged {len(damaged)} objects:")
        for item in damaged:
            print(f"  {item.kind:<8} {item.file_id} {item.object_key}")


def _print_report(report: database.SeedReport) -> None:
    print(
        f"seeded {report.users:,} users and {report.files:,} files "
        f"(seed {report.seed}) in {report.seconds:.1f} s"
    )
    print(
        f"files per user: median {report.median_files:,}, p99 {report.p99_files:,}, "
        f"max {report.max_files:,}; {report.users_without_files:,} users with none, "
        f"{report.users_with_1000_plus:,} with 1,000+, "
        f"{report.users_with_10000_plus:,} with 10,000+"
    )
    total = len(samples.categories())
    print(f"hostile strings: {len(report.coverage)}/{total} categories present")
    for category, columns in report.coverage.items():
        print(f"  {category:<15} {', '.join(columns)}")
    if report.missing_categories:
        print(
            f"  missing (too few rows to hold every sample): {', '.join(report.missing_categories)}"
        )


def _targets(environ: Mapping[str, str], *, with_objects: bool) -> _Targets:
    """Use the configured database and bucket, else the local development stack."""
    needed = ["DATABASE_URL"]
    if with_objects:
        needed += ["S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"]
    if all(environ.get(name) for name in needed):
        return _Targets(
            database_url=environ["DATABASE_URL"],
            s3_endpoint_url=environ.get("S3_ENDPOINT_URL") or None,
            s3_bucket=environ.get("S3_BUCKET", ""),
            s3_access_key_id=environ.get("S3_ACCESS_KEY_ID", ""),
            s3_secret_access_key=environ.get("S3_SECRET_ACCESS_KEY", ""),
            s3_region=environ.get("S3_REGION") or "auto",
        )
    # Imported here: the local stack is only needed when nothing is configured.
    from exportctl.devstack import LocalStack

    stack = LocalStack(Path(environ.get("EXPORTCTL_DEV_ROOT", ".dev"))).up(environ)
    return _Targets(
        database_url=stack.database_url,
        s3_endpoint_url=stack.s3_endpoint_url,
        s3_bucket=stack.s3_bucket,
        s3_access_key_id=stack.s3_access_key_id,
        s3_secret_access_key=stack.s3_secret_access_key,
        s3_region=stack.s3_region,
    )


def _non_negative(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {raw}")
    return value


def _positive(raw: str) -> int:
    value = _non_negative(raw)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
