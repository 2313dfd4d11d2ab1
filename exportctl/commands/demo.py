"""`exportctl demo`: the system's main job on the embedded local stack.

Brings up PostgreSQL, Redis and the S3 server under `.dev/`, applies the schema, seeds demo data
when the database is empty, runs every step the system offers and prints a summary. It keeps the
stack up until Ctrl-C; `--once` exits after the summary, 0 only if every step succeeded.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exportctl.devstack import LocalStack, StackEndpoints
from exportctl.output import Table, print_table
from pipelines.database import connect
from pipelines.file_objects import FileObjectChecker, S3ObjectInspector
from pipelines.locations import open_location
from pipelines.options import COMPRESSIONS, FORMATS, parse_options
from pipelines.parts import choose_part_size
from pipelines.runner import ExportLimits, ExportRun, export_all, export_user
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from pipelines.storage.stores import S3Store
from pipelines.verifier import verify_export

# Rows per shard of the demo's bulk export: small, so even demo data shows several shards.
DEMO_SHARD_ROWS = 5000
# Small enough to seed (with objects in the bucket) in a few seconds, large enough to show skew.
DEMO_USERS = 300
DEMO_MAX_FILES = 3000


@dataclass
class DemoContext:
    """What the steps share: the endpoints, the environment and the summary rows they add."""

    endpoints: StackEndpoints
    env: dict[str, str]
    users: int
    facts: list[tuple[str, str]] = field(default_factory=list)
    exports: list[DemoExport] = field(default_factory=list)


@dataclass
class DemoExport:
    """One export the demo ran, for the summary table."""

    label: str
    run: ExportRun
    verified: bool | None = None


@dataclass(frozen=True)
class Step:
    """One named stage of the demo; it raises on failure."""

    name: str
    run: Callable[[DemoContext], None]


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Bring the stack up, run every step, print the summary, then wait or exit."""
    environ: Mapping[str, str] = os.environ  # noqa: TID251 - entry point
    root = args.root or Path(environ.get("EXPORTCTL_DEV_ROOT", ".dev"))
    stack = LocalStack(root)
    already_up = all(status.answering for status in stack.status(environ))
    started = time.monotonic()
    print(f"==> local stack under {root}/", flush=True)
    endpoints = stack.up(environ)
    context = DemoContext(
        endpoints=endpoints, env={**environ, **endpoints.as_env()}, users=args.users
    )
    failures = _run_steps(STEPS, context)
    _print_summary(context, stack, time.monotonic() - started, failures)
    try:
        if not args.once:
            print("\nThe stack keeps running; press Ctrl-C to stop.", flush=True)
            _wait_for_interrupt()
    except KeyboardInterrupt:
        pass
    finally:
        if not already_up:
            print("==> stopping the local stack (data stays in the folder)", flush=True)
            stack.down()
    return 1 if failures else 0


def _run_steps(steps: list[Step], context: DemoContext) -> list[str]:
    failures = []
    for step in steps:
        print(f"==> {step.name}", flush=True)
        try:
            step.run(context)
        except Exception as exc:  # a demo step's failure is reported, and the rest still run
            failures.append(f"{step.name}: {exc}")
            print(f"    FAILED: {exc}", file=sys.stderr, flush=True)
    return failures


def _apply_schema(context: DemoContext) -> None:
    from pipelines.schema import apply_schema, schema_drift

    with connect(context.endpoints.database_url) as conn:
        apply_schema(conn)
        conn.commit()
        drift = schema_drift(conn)
    if drift:
        raise RuntimeError("schema drift after migrate: " + "; ".join(drift))
    context.facts.append(("schema", "applied, no drift"))


def _seed(context: DemoContext) -> None:
    from exportctl.seeding import seed_database, write_objects
    from pipelines.storage.client import create_s3_client

    endpoints = context.endpoints
    with connect(endpoints.database_url) as conn:
        existing = conn.execute("SELECT count(*) FROM users").fetchone()
        if existing and existing[0] == 0:
            report = seed_database(conn, users=context.users, max_files=DEMO_MAX_FILES, seed=1)
            conn.commit()
            client = create_s3_client(
                endpoint_url=endpoints.s3_endpoint_url,
                region=endpoints.s3_region,
                access_key_id=endpoints.s3_access_key_id,
                secret_access_key=endpoints.s3_secret_access_key,
            )
            objects = write_objects(conn, client, endpoints.s3_bucket)
            context.facts.append(("seeded", f"{report.users} users, {report.files} files"))
            context.facts.append(("objects written", str(objects)))
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)"
        ).fetchone()
    assert counts is not None
    context.facts.append(("users", f"{counts[0]:,}"))
    context.facts.append(("files", f"{counts[1]:,}"))


def _export_each_format(context: DemoContext) -> None:
    settings = Settings.from_env(context.env)
    client = s3_client_from_settings(settings)
    with connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT owner_id::text FROM files GROUP BY owner_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError("no user has files to export")
    user_id = row[0]
    context.facts.append(("exported user", user_id))
    for export_format in FORMATS:
        for compression in COMPRESSIONS:
            options = parse_options(
                export_format, {"compression": compression}, default_compression="zstd"
            )
            export_id = str(uuid.uuid4())
            store = S3Store(client, bucket=settings.s3_bucket, prefix=_prefix(settings, export_id))
            with connect(settings.database_url) as conn:
                run = export_user(
                    conn,
                    user_id=user_id,
                    options=options,
                    store=store,
                    limits=_limits(settings, compression, settings.export_max_size),
                    export_id=export_id,
                )
            context.exports.append(DemoExport(f"user {export_format}", run))


def _export_everyone(context: DemoContext) -> None:
    settings = Settings.from_env(context.env)
    client = s3_client_from_settings(settings)
    options = parse_options(
        "jsonl", {"compression": "zstd", "includeSystemFields": True}, default_compression="zstd"
    )
    export_id = str(uuid.uuid4())
    store = S3Store(client, bucket=settings.s3_bucket, prefix=_prefix(settings, export_id))
    run = export_all(
        lambda: connect(settings.database_url),
        options=options,
        store=store,
        limits=_limits(settings, "zstd", settings.export_bulk_max_size),
        target_shard_rows=DEMO_SHARD_ROWS,
        export_id=export_id,
    )
    context.exports.append(DemoExport("bulk (all users)", run))


def _prefix(settings: Settings, export_id: str) -> str:
    return f"{settings.s3_export_prefix}{export_id}/"


def _limits(settings: Settings, compression: str, max_size: int) -> ExportLimits:
    level = {"zstd": settings.export_zstd_level, "gzip": settings.export_gzip_level}
    return ExportLimits(
        part_size=choose_part_size(max_size, settings.s3_part_size_bytes),
        max_size=max_size,
        level=level.get(compression),
    )


def _verify_exports(context: DemoContext) -> None:
    settings = Settings.from_env(context.env)
    client = s3_client_from_settings(settings)

    def checker() -> FileObjectChecker:
        inspector = S3ObjectInspector(client, bucket=settings.s3_bucket)
        return FileObjectChecker(inspector, bucket=settings.s3_bucket)

    failed = []
    for export in context.exports:
        location = open_location(export.run.location, s3_client=lambda: client)
        report = verify_export(location, file_checker=checker)
        export.verified = report.passed
        if not report.passed:
            failed.append(f"{export.label}: {report.problems[0].message}")
    if failed:
        raise RuntimeError(f"{len(failed)} export(s) failed verification: " + "; ".join(failed))


STEPS: list[Step] = [
    Step("apply schema", _apply_schema),
    Step("seed demo data", _seed),
    Step("export one user in every format and compression", _export_each_format),
    Step("export every user in shards from one snapshot", _export_everyone),
    Step("verify every export (digests, records, file objects)", _verify_exports),
]


def _print_summary(
    context: DemoContext, stack: LocalStack, seconds: float, failures: list[str]
) -> None:
    services = Table(
        title="Local stack",
        columns=("service", "url", "answering"),
        rows=[
            (status.name, status.url, "yes" if status.answering else "NO")
            for status in stack.status(context.env)
        ],
    )
    print_table(services)
    print_table(Table(title="Demo", columns=("what", "value"), rows=context.facts))
    print_table(_exports_table(context.exports))
    print("\nUse these settings in another shell:")
    for name, value in context.endpoints.as_env().items():
        print(f"  export {name}={value}")
    verdict = "all steps succeeded" if not failures else f"{len(failures)} step(s) failed"
    print(f"\nDemo finished in {seconds:.1f} s: {verdict}.")
    for failure in failures:
        print(f"  - {failure}")


def _exports_table(exports: list[DemoExport]) -> Table:
    rows = []
    for export in exports:
        manifest = export.run.manifest
        objects = export.run.objects
        stored = sum(item.digests.stored_bytes for item in objects)
        content = sum(item.digests.content_bytes for item in objects)
        rows.append(
            (
                export.label,
                manifest.format,
                manifest.compression,
                str(sum(manifest.totals.values())),
                str(stored),
                f"{content / stored:.2f}" if stored else "-",
                f"{sum(item.seconds for item in objects):.2f}",
                objects[0].digests.stored_sha256[:16] + ("…" if len(objects) == 1 else " +"),
                {True: "yes", False: "NO", None: "-"}[export.verified],
                export.run.location,
            )
        )
    columns = ("export", "format", "compression", "rows", "bytes", "ratio", "seconds", "sha256")
    return Table(title="Exports", columns=(*columns, "verified", "location"), rows=rows)


def _wait_for_interrupt() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    while True:
        signal.pause()
