"""The steps of `exportctl demo` that drive the running system: seed, wait, request, download.

They talk to the database, the public HTTP API and the supervisor of the demo's processes, and
record what became of each export in `DemoExport`; printing the summary is `demo_summary`'s job
and starting the processes is the `demo` command's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from exportctl.api_client import ApiClient
from exportctl.devstack import StackEndpoints
from exportctl.follow import Tracked
from exportctl.supervisor import Supervisor
from pipelines.database import connect
from pipelines.errors import ExportError
from pipelines.options import COMPRESSIONS, FORMATS

# Files per seeded user at most: small enough to seed (with objects in the bucket) in a few seconds.
DEMO_MAX_FILES = 3000
# Seconds ahead the scheduled export is due: the scheduler's pass comes every 5 s.
SCHEDULE_AHEAD_SECONDS = 5
# Seconds for the API to answer on a loaded machine.
READY_TIMEOUT_SECONDS = 90.0


class DemoError(ExportError):
    """A stage of the demo failed; the message says which and why."""


@dataclass
class DemoExport:
    """One export the demo asked for, and what became of it."""

    label: str
    client: ApiClient
    tracked: Tracked
    downloaded_sha256: str | None = None
    problem: str | None = None

    @property
    def document(self) -> dict[str, Any] | None:
        """Return the export's last status document."""
        return self.tracked.document

    @property
    def verified(self) -> bool:
        """Return whether it completed, passed verification and downloaded intact."""
        document = self.document
        return (
            document is not None
            and document["status"] == "completed"
            and document["verification"]["status"] == "passed"
            and self.downloaded_sha256 == document["sha256"]
        )


@dataclass(frozen=True)
class Ports:
    """The loopback ports the demo's processes listen on."""

    api: int
    worker_metrics: int
    verifier_metrics: int


@dataclass(frozen=True)
class DemoRun:
    """What the stages of one demo run share."""

    supervisor: Supervisor
    endpoints: StackEndpoints
    ports: Ports
    root: Path
    console: Console | None
    out: TextIO

    @property
    def api_url(self) -> str:
        """Return the API's base URL."""
        return f"http://127.0.0.1:{self.ports.api}"


def seed(endpoints: StackEndpoints, users: int, out: TextIO) -> tuple[str, str]:
    """Seed when empty; return the user with most files and an administrator's id."""
    from exportctl.seeding import seed_database, write_objects
    from pipelines.storage.client import create_s3_client

    with connect(endpoints.database_url) as conn:
        existing = conn.execute("SELECT count(*) FROM users").fetchone()
        if existing is not None and existing[0] == 0:
            report = seed_database(conn, users=users, max_files=DEMO_MAX_FILES, seed=1)
            conn.commit()
            client = create_s3_client(
                endpoint_url=endpoints.s3_endpoint_url,
                region=endpoints.s3_region,
                access_key_id=endpoints.s3_access_key_id,
                secret_access_key=endpoints.s3_secret_access_key,
            )
            objects = write_objects(conn, client, endpoints.s3_bucket)
            print(
                f"    seeded {report.users} users, {report.files} files, {objects} objects",
                file=out,
            )
        # Accounts the application soft-deleted may not export (the API answers 403).
        row = conn.execute(
            "SELECT f.owner_id::text FROM files f JOIN users u ON u.id = f.owner_id"
            " WHERE u.deleted_at IS NULL GROUP BY f.owner_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        admin = conn.execute(
            "SELECT id::text FROM users WHERE deleted_at IS NULL"
            " ORDER BY (role = 'admin') DESC, id LIMIT 1"
        ).fetchone()
    if row is None or admin is None:
        raise DemoError("the database has no user with files to export")
    return str(row[0]), str(admin[0])


def wait_ready(api_url: str, supervisor: Supervisor) -> None:
    """Wait until the API's /readyz answers 200 (its database, broker and limiter are up)."""
    import http.client
    from urllib.parse import urlsplit

    netloc = urlsplit(api_url).netloc
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        check_processes(supervisor)
        conn = http.client.HTTPConnection(netloc, timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.3)
    raise DemoError(f"the API at {api_url} was not ready within {READY_TIMEOUT_SECONDS:.0f} s")


def request_exports(user: ApiClient, admin: ApiClient) -> list[DemoExport]:
    """Ask for every format and compression, one scheduled export and one bulk export."""
    exports = []
    for export_format in FORMATS:
        for compression in COMPRESSIONS:
            answer = user.post(
                "/api/exports/user",
                {"format": export_format, "options": {"compression": compression}},
            )
            export_id = answer["export"]["id"]
            tracked = Tracked(f"user {export_id[:8]}", export_id)
            exports.append(DemoExport(tracked.label, user, tracked))
    due = datetime.now(UTC) + timedelta(seconds=SCHEDULE_AHEAD_SECONDS)
    request = user.post(
        "/api/exports/schedule",
        {
            "exportType": "user_data",
            "format": "jsonl",
            "options": {"compression": "zstd"},
            "scheduledAt": due.isoformat(),
        },
    )["request"]
    scheduled = Tracked(
        f"scheduled {request['id'][:8]}",
        resolve=_request_resolver(user, request["id"]),
        waiting_for=f"due at {due:%H:%M:%S}",
    )
    exports.append(DemoExport(scheduled.label, user, scheduled))
    bulk = admin.post(
        "/api/exports/bulk",
        {"format": "jsonl", "options": {"compression": "zstd", "includeSystemFields": True}},
    )["export"]
    tracked = Tracked(f"bulk {bulk['id'][:8]}", bulk["id"])
    exports.append(DemoExport(tracked.label, admin, tracked))
    return exports


def _request_resolver(client: ApiClient, request_id: str) -> Callable[[], str | None]:
    """Return a function naming the scheduled request's export once the scheduler fired it."""

    def resolve() -> str | None:
        request = client.get(f"/api/exports/schedule/{request_id}")["request"]
        if request["status"] in ("cancelled", "skipped", "failed"):
            raise DemoError(f"scheduled request {request_id} {request['status']}: "
                            f"{request['statusReason']}")  # fmt: skip
        export_id = request["exportId"]
        return str(export_id) if export_id else None

    return resolve


def download_all(exports: Sequence[DemoExport], folder: Path) -> None:
    """Download every completed export, checking its SHA-256 against the recorded one."""
    for export in exports:
        document = export.document
        if document is None or document["status"] != "completed":
            export.problem = "not completed"
            continue
        try:
            saved = export.client.download(
                document["id"], folder, expected_sha256=document["sha256"]
            )
        except ExportError as exc:
            export.problem = str(exc)
            print(f"    {export.label}: download FAILED: {exc}", flush=True)
            continue
        export.downloaded_sha256 = saved.sha256


def check_processes(supervisor: Supervisor) -> None:
    """Fail the demo as soon as any process exited: nothing is restarted behind your back."""
    ended = supervisor.exited()
    if ended:
        names = ", ".join(f"{name} (exit {code})" for name, code in ended)
        raise DemoError(f"{names} stopped; see its output above")
