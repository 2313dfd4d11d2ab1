"""`exportctl verify PATH|s3://bucket/prefix/`: re-read a finished export and report every problem.

Checks the manifest, SHA256SUMS, sidecars and every data object (both SHA-256s, sizes, format,
record counts), then, when the export carries object keys, that each file object exists in the
bucket with its recorded size (and SHA-256 with `--deep`). S3 is the server S3_ACCESS_KEY_ID and
S3_SECRET_ACCESS_KEY (with S3_ENDPOINT_URL, S3_REGION, S3_BUCKET) name; with no S3 variable set,
the local dev stack's; with only some set, an error (`exportctl restore` decides the same way).
Exit 0 only when verification passed, 1 when it found problems.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from exportctl.environment import dev_root
from exportctl.output import Table, print_table
from pipelines.errors import PermanentError
from pipelines.file_objects import DEFAULT_WORKERS, FileObjectChecker, S3ObjectInspector
from pipelines.locations import open_location
from pipelines.storage.client import create_s3_client
from pipelines.verifier import VerificationReport, verify_export

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Both keys select the S3 server the variables name. Any of S3_VARIABLES set means one was meant,
# so the local dev stack is then never started in its place: a partial setting is an error.
S3_KEY_VARIABLES = ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")
S3_VARIABLES = ("S3_ENDPOINT_URL", "S3_BUCKET", *S3_KEY_VARIABLES)
DEFAULT_S3_REGION = "auto"


@dataclass(frozen=True)
class S3Config:
    """The S3 server to read from and its credentials; `bucket` is "" when S3_BUCKET is unset."""

    endpoint_url: str | None
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)  # never in a log line or a traceback
    bucket: str = ""

    def client(self) -> S3Client:
        """Return a client for this server."""
        return create_s3_client(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
        )


def configured_s3(environ: Mapping[str, str]) -> S3Config | None:
    """Return the S3 server the S3_* variables name; None when none is set (use the dev stack)."""
    if all(environ.get(name) for name in S3_KEY_VARIABLES):
        return S3Config(
            endpoint_url=environ.get("S3_ENDPOINT_URL") or None,
            region=environ.get("S3_REGION") or DEFAULT_S3_REGION,
            access_key_id=environ["S3_ACCESS_KEY_ID"],
            secret_access_key=environ["S3_SECRET_ACCESS_KEY"],
            bucket=environ.get("S3_BUCKET", ""),
        )
    named = [name for name in S3_VARIABLES if environ.get(name)]
    if named:
        missing = [name for name in S3_KEY_VARIABLES if not environ.get(name)]
        raise PermanentError(
            f"{', '.join(named)} set, but not {' and '.join(missing)}: set both keys to use that "
            "S3 server, or unset every S3_* variable to use the local development stack"
        )
    return None


def s3_config(environ: Mapping[str, str]) -> S3Config:
    """Return the S3 server the variables name, else bring up the local dev stack and use its."""
    configured = configured_s3(environ)
    if configured is not None:
        return configured
    # Imported here: the local stack's packages are only needed when nothing is set.
    from exportctl.devstack import LocalStack

    stack = LocalStack(dev_root(environ)).up(environ)
    return S3Config(
        endpoint_url=stack.s3_endpoint_url,
        region=stack.s3_region,
        access_key_id=stack.s3_access_key_id,
        secret_access_key=stack.s3_secret_access_key,
        bucket=stack.s3_bucket,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl verify`."""
    parser = subparsers.add_parser(
        "verify",
        help="re-read an export (directory or s3:// prefix) and report every problem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("location", metavar="PATH|s3://BUCKET/PREFIX/", help="the export")
    parser.add_argument(
        "--deep",
        action="store_true",
        help="hash every file object that carries no SHA-256 of its own (reads all their bytes)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--files-bucket",
        help="bucket holding the files' objects (default: S3_BUCKET, else the dev stack's)",
    )
    parser.add_argument(
        "--skip-file-objects", action="store_true", help="do not check the files' objects"
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=DEFAULT_WORKERS,
        help="concurrent file object checks (default %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Verify the export and print the report; return 0 only when it passed."""
    s3 = _S3Access(_environ())
    location = open_location(args.location, s3_client=s3.client)
    checker = None if args.skip_file_objects else _checker_factory(s3, args)
    with _progress(sys.stderr, enabled=not args.json) as progress:
        report = verify_export(location, file_checker=checker, progress=progress, deep=args.deep)
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        _print_report(report, sys.stdout)
    sys.stdout.flush()
    if not report.passed:
        print("exportctl verify: verification failed", file=sys.stderr)
        return 1
    return 0


def _checker_factory(s3: _S3Access, args: argparse.Namespace) -> Callable[[], FileObjectChecker]:
    def build() -> FileObjectChecker:
        bucket = args.files_bucket or s3.bucket()
        inspector = S3ObjectInspector(s3.client(), bucket=bucket)
        return FileObjectChecker(inspector, bucket=bucket, workers=args.workers, deep=args.deep)

    return build


class _S3Access:
    """The S3 client and bucket, configured lazily: a local export may never need them."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._client: S3Client | None = None
        self._bucket: str | None = None

    def client(self) -> S3Client:
        if self._client is None:
            self._configure()
        assert self._client is not None
        return self._client

    def bucket(self) -> str:
        if self._bucket is None:
            self._configure()
        assert self._bucket is not None
        return self._bucket

    def _configure(self) -> None:
        config = s3_config(self._environ)
        self._client = config.client()
        self._bucket = config.bucket


class _RichProgress:
    """A progress bar of bytes read, on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._bar.add_task("verifying", total=None)

    def start(self, total_bytes: int) -> None:
        self._bar.update(self._task, total=total_bytes)

    def advance(self, name: str, nbytes: int) -> None:
        self._bar.update(self._task, advance=nbytes, description=name)

    def __enter__(self) -> _RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


class _PlainProgress:
    """One line per object read, when output is not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._current: str | None = None

    def start(self, total_bytes: int) -> None:
        print(f"verifying {total_bytes:,} stored bytes", file=self._stream)

    def advance(self, name: str, nbytes: int) -> None:
        if name != self._current:
            self._current = name
            print(f"reading {name}", file=self._stream)

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.flush()


class _NoProgress:
    def start(self, total_bytes: int) -> None:
        del total_bytes

    def advance(self, name: str, nbytes: int) -> None:
        del name, nbytes

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(stream: TextIO, *, enabled: bool) -> _RichProgress | _PlainProgress | _NoProgress:
    if not enabled:
        return _NoProgress()
    if stream.isatty():
        return _RichProgress(stream)
    return _PlainProgress(stream)


def _print_report(report: VerificationReport, out: TextIO) -> None:
    verdict = "PASSED" if report.passed else "FAILED"
    records = ", ".join(f"{table} {count:,}" for table, count in report.records.items())
    print(f"export {report.export_id or '?'} at {report.location}: {verdict}", file=out)
    print(
        f"  {report.objects_checked} object(s), {report.stored_bytes:,} bytes, "
        f"records: {records or 'none'}; {report.file_objects_checked:,} file object(s) checked "
        f"in {report.duration_seconds:.1f} s",
        file=out,
    )
    if report.problems:
        rows = [[p.code, p.object_name or "", p.message] for p in report.problems]
        print_table(
            Table(f"{len(report.problems)} problem(s)", ["code", "object", "message"], rows), out
        )
    if report.problems_omitted:
        print(f"  ... and {report.problems_omitted:,} more problem(s) not listed", file=out)
    for note in report.notes:
        print(f"  note: {note}", file=out)


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _environ() -> Mapping[str, str]:
    """Return the process environment: this command is an entry point."""
    return os.environ  # noqa: TID251
