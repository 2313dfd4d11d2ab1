"""A user export's manifest is written only by the worker holding its lease.

Worker A writes its object, then stalls past its lease before publishing the manifest; the
redelivered message runs on worker B. Whichever way the two meet, the completed export's manifest
and SHA256SUMS describe the object that is stored, so verification passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar

import pytest
from worker_processes import in_process_runtime

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from workers import user_export
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.heartbeat import LeaseKeeper
from workers.runtime import Runtime
from workers.verification import run_verification

PART = 5 * 1024 * 1024
# How long the test waits for worker B to block on the export row's lock, or to finish.
WAIT_SECONDS = 20.0


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_bucket: str) -> Runtime:
    return in_process_runtime(
        settings_env,
        s3_bucket=s3_bucket,
        worker=WorkerSettings(lease_seconds=30),
        S3_PART_SIZE_BYTES=str(PART),
    )


@pytest.fixture
def export_id(runtime: Runtime) -> str:
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=5, max_files=50, files=100, seed=5)
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        options = parse_options("json", {"compression": "none"}, default_compression="zstd")
        created = create_export(conn, NewExport(user[0], "user", options))
        conn.commit()
    return str(created.row["id"])


class StallingKeeper(LeaseKeeper):
    """Worker A's lease keeper: once A's object is written, A stalls past its lease."""

    url: ClassVar[str] = ""
    stalled: ClassVar[bool] = False
    meanwhile: ClassVar[Callable[[], object] | None] = None  # what happens while A is stalled

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        super().__exit__(kind, error, trace)
        if StallingKeeper.stalled or kind is not None:
            return  # only worker A, only once
        StallingKeeper.stalled = True
        with connect(StallingKeeper.url, autocommit=True) as conn:
            conn.execute(
                "UPDATE data_exports SET lease_expires_at = now() - interval '1 second'"
                " WHERE status = 'running'"
            )
        if StallingKeeper.meanwhile is not None:
            StallingKeeper.meanwhile()


@pytest.fixture
def stalling(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> type[StallingKeeper]:
    monkeypatch.setattr(StallingKeeper, "stalled", False)
    monkeypatch.setattr(StallingKeeper, "meanwhile", None)
    StallingKeeper.url = runtime.settings.database_url
    monkeypatch.setattr(user_export, "LeaseKeeper", StallingKeeper)
    return StallingKeeper


def _row(runtime: Runtime, export_id: str) -> tuple[Any, ...]:
    with connect(runtime.settings.database_url) as conn:
        row = conn.execute(
            "SELECT status, attempts, sha256 FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    return tuple(row)


def _verified(runtime: Runtime, export_id: str) -> None:
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()


def test_worker_stalled_before_its_manifest_leaves_the_successors_manifest_alone(
    runtime: Runtime, export_id: str, stalling: type[StallingKeeper]
) -> None:
    outcomes: list[Outcome] = []
    stalling.meanwhile = lambda: outcomes.append(user_export.run_user_export(runtime, export_id))

    assert user_export.run_user_export(runtime, export_id) is Outcome.FAILED  # A: fenced out

    assert outcomes == [Outcome.COMPLETED]  # B took over and finished while A was stalled
    assert _row(runtime, export_id)[:2] == ("completed", 2)
    _verified(runtime, export_id)


def _waiting_on_a_lock(runtime: Runtime) -> bool:
    with connect(runtime.settings.database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert found is not None
    return int(found[0]) > 0


def test_successor_claim_waits_for_the_manifest_and_then_finds_the_export_completed(
    runtime: Runtime,
    export_id: str,
    stalling: type[StallingKeeper],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish = user_export.publish_manifest
    successor: list[Outcome] = []
    b = threading.Thread(
        target=lambda: successor.append(user_export.run_user_export(runtime, export_id))
    )

    def publish_while_b_claims(*args: Any, **kwargs: Any) -> Any:
        if b.ident is not None:
            return publish(*args, **kwargs)  # B publishing (without the fix B never gets here)
        # A has woken up and is publishing when B's message is delivered.
        b.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while b.is_alive() and not _waiting_on_a_lock(runtime) and time.monotonic() < deadline:
            time.sleep(0.05)
        return publish(*args, **kwargs)

    monkeypatch.setattr(user_export, "publish_manifest", publish_while_b_claims)

    assert user_export.run_user_export(runtime, export_id) is Outcome.COMPLETED  # A

    b.join(timeout=WAIT_SECONDS)
    assert successor == [Outcome.SKIPPED]  # B waited for A's lock, then found the export done
    assert _row(runtime, export_id)[:2] == ("completed", 1)
    _verified(runtime, export_id)
