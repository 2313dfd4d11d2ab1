"""`exportctl exports list | status ID [--watch] | download ID --out DIR`: exports through the API.

Talks to the HTTP API like any client, with a bearer token (`--token` or EXPORTCTL_TOKEN; on the
local stack, `exportctl token` makes one) at `--api` (or EXPORTCTL_API_URL). Downloads follow
the download URL and keep the file only if its SHA-256 matches the one the export recorded.
`status` exits non-zero when the export is of no use (failed, expired, verification failed) or
`--watch` gave up; its --help lists the codes. Tables and progress bars on a terminal, plain
lines when piped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from exportctl.api_client import ApiClient
from exportctl.environment import process_environ
from exportctl.follow import Tracked, describe, follow, settled, unusable_reason
from exportctl.output import Table, print_table
from pipelines.errors import PermanentError

API_URL_VARIABLE = "EXPORTCTL_API_URL"
TOKEN_VARIABLE = "EXPORTCTL_TOKEN"  # noqa: S105 - a variable name, not a secret
# Seconds `status --watch` follows an export before giving up (a large bulk export takes longer:
# watch again).
WATCH_TIMEOUT_SECONDS = 3600.0
# Exit statuses of `exports status`, for scripts and cron jobs that act on an export's outcome.
EXIT_USABLE = 0
EXIT_UNUSABLE = 1
EXIT_WATCH_GAVE_UP = 3
STATUS_EPILOG = f"""\
exit status:
  {EXIT_USABLE}  the export completed and its verification did not fail (passed, or still
     pending); without --watch, also an export still queued or running
  {EXIT_UNUSABLE}  the export failed, was cancelled or expired, or its verification failed; also
     any error of the command itself (API unreachable, unknown export, bad token)
  2  invalid arguments
  {EXIT_WATCH_GAVE_UP}  --watch gave up ({WATCH_TIMEOUT_SECONDS:.0f} s) with the export still
     queued, running or being verified: watch again
"""
LIST_LIMIT = 20  # rows `list` shows by default: one screen


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --api and --token, defaulting to EXPORTCTL_API_URL and EXPORTCTL_TOKEN."""
    parser.add_argument("--api", metavar="URL", help=f"API base URL (default ${API_URL_VARIABLE})")
    parser.add_argument("--token", help=f"bearer token (default ${TOKEN_VARIABLE})")


def client_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ApiClient:
    """Return an API client from the arguments, or the environment, or say what is missing."""
    environ = process_environ() if environ is None else environ
    url = args.api or environ.get(API_URL_VARIABLE, "")
    token = args.token or environ.get(TOKEN_VARIABLE, "")
    missing = [
        name
        for name, value in (
            (f"--api or ${API_URL_VARIABLE}", url),
            (f"--token or ${TOKEN_VARIABLE}", token),
        )
        if not value
    ]
    if missing:
        raise PermanentError(f"set {' and '.join(missing)} (`./run demo` prints both)")
    return ApiClient(url, token)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl exports` and its actions."""
    parser = subparsers.add_parser("exports", help="list, watch and download exports via the API")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="your exports, newest first")
    listing.add_argument("--status", help="only exports in this status")
    listing.add_argument("--limit", type=int, default=LIST_LIMIT, help="rows (default %(default)s)")
    listing.set_defaults(handler=run_list)
    status = actions.add_parser(
        "status",
        help="one export's status and verification",
        description="Print one export's status and verification; with --watch, follow it first.",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("export_id", metavar="ID")
    status.add_argument("--watch", action="store_true", help="follow it until it settles")
    status.set_defaults(handler=run_status)
    download = actions.add_parser("download", help="download an export, checking its SHA-256")
    download.add_argument("export_id", metavar="ID")
    download.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write to"
    )
    download.set_defaults(handler=run_download)
    for action in (listing, status, download):
        add_api_arguments(action)


def run_list(args: argparse.Namespace) -> int:
    """Print the caller's exports."""
    client = client_from_args(args)
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    page = client.get("/api/exports", params)
    rows = [
        (
            item["id"],
            item["type"],
            describe(item, "-"),
            item["format"],
            item["compression"],
            _count(item.get("recordCount")),
            _count(item.get("sizeBytes")),
            (item.get("createdAt") or "-")[:19],
        )
        for item in page["exports"]
    ]
    columns = ("id", "type", "state", "format", "compression", "rows", "bytes", "created")
    print_table(Table(f"Exports ({len(rows)} of {page['total']})", columns, rows))
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Print one export's status; with --watch, follow it until it settles first."""
    client = client_from_args(args)
    return show_status(client, args.export_id, watch=args.watch, out=sys.stdout, err=sys.stderr)


def show_status(
    client: ApiClient,
    export_id: str,
    *,
    watch: bool,
    out: TextIO,
    err: TextIO,
    watch_seconds: float = WATCH_TIMEOUT_SECONDS,
) -> int:
    """Print the export's status, after following it with `watch`; return the exit status."""
    settled_in_time = True
    if watch:
        tracked = Tracked(f"export {export_id[:8]}", export_id)
        console = Console(file=out) if out.isatty() else None
        settled_in_time = follow(
            client, [tracked], timeout_seconds=watch_seconds, stream=out, console=console
        )
    document = client.get(f"/api/exports/{export_id}/status")["export"]
    print_table(Table(f"Export {document['id']}", ("field", "value"), _status_rows(document)), out)
    out.flush()
    reason = unusable_reason(document)
    if reason is not None:
        print(f"exportctl: export {document['id']} {reason}", file=err)
        return EXIT_UNUSABLE
    # Checked again after the last read: the export may have settled since follow() gave up.
    if watch and not settled_in_time and not settled(document):
        print(
            f"exportctl: export {document['id']} is still {describe(document, '-')} after "
            f"{watch_seconds:.0f} s of --watch; watch it again",
            file=err,
        )
        return EXIT_WATCH_GAVE_UP
    return EXIT_USABLE


def run_download(args: argparse.Namespace) -> int:
    """Download a completed export into --out, checking its SHA-256 while it streams."""
    client = client_from_args(args)
    document = client.get(f"/api/exports/{args.export_id}/status")["export"]
    if document["status"] != "completed" or not document.get("sha256"):
        raise PermanentError(f"export {args.export_id} is {document['status']}, not downloadable")
    if sys.stdout.isatty():
        with Progress(
            "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
        ) as bars:
            task = bars.add_task(f"export {args.export_id[:8]}", total=document.get("sizeBytes"))
            saved = client.download(
                args.export_id,
                args.out,
                expected_sha256=document["sha256"],
                progress=lambda done, total: bars.update(task, completed=done, total=total),
            )
    else:
        saved = client.download(args.export_id, args.out, expected_sha256=document["sha256"])
    print(f"{saved.path}  {saved.size_bytes} bytes  sha256 {saved.sha256}  OK")
    return 0


def _status_rows(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    error = document.get("error") or {}
    verification = document.get("verification") or {}
    fields = [
        ("type", document["type"]),
        ("state", describe(dict(document), "-")),
        ("format", f"{document['format']} ({document['compression']})"),
        ("user", document["userId"]),
        ("created", document.get("createdAt")),
        ("started", document.get("startedAt")),
        ("finished", document.get("finishedAt")),
        ("rows", _count(document.get("recordCount"))),
        ("bytes", _count(document.get("sizeBytes"))),
        ("ratio", _ratio(document.get("compressionRatio"))),
        ("sha256", document.get("sha256")),
        ("verification", verification.get("status")),
        ("error", f"{error.get('code')}: {error.get('message')}" if error else None),
    ]
    return [(name, "-" if value in (None, "", []) else str(value)) for name, value in fields]


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _ratio(value: Any) -> str | None:
    return f"{value:.2f}" if isinstance(value, int | float) else None
