"""Stored exports are verified again where they are stored once EXPORT_REVERIFY_DAYS have passed:
an object changed in the real S3 server after its first check is found, and owes a webhook call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from worker_processes import RecordingQueue, in_process_runtime

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.maintenance import REVERIFY_EVENT, reverify_stored_exports
from workers.runtime import Runtime
from workers.user_export import run_user_export
from workers.verification import run_verification

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_bucket: str) -> Runtime:
    return in_process_runtime(
        settings_env, s3_bucket=s3_bucket, worker=WorkerSettings(lease_seconds=10)
    )


@pytest.fixture
def verified(runtime: Runtime) -> str:
    """A completed export that passed verification."""
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=3, max_files=50, seed=7, files=60)
        user = conn.execute(
            "SELECT id::text FROM users WHERE deleted_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        assert user is not None
        options = parse_options("csv", {"compression": "zstd"}, default_compression="zstd")
        export_id = str(create_export(conn, NewExport(user[0], "user", options)).row["id"])
        conn.commit()
    outcome = run_user_export(runtime, export_id)
    assert outcome is Outcome.COMPLETED, _row(runtime, export_id, "error_code, error_message")
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed
    _queued(runtime).clear()  # the completion's own verification message
    return export_id


def _verified_days_ago(runtime: Runtime, export_id: str, days: int) -> None:
    with connect(runtime.settings.database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET verified_at = now() - make_interval(days => %s) WHERE id = %s",
            (days, export_id),
        )
        conn.commit()


def _row(runtime: Runtime, export_id: str, columns: str) -> Any:
    with connect(runtime.settings.database_url) as conn:
        return conn.execute(
            f"SELECT {columns} FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()


def _queued(runtime: Runtime) -> list[str]:
    assert isinstance(runtime.queue, RecordingQueue)
    return runtime.queue.verifications


def test_an_object_changed_after_its_check_is_found_when_the_export_is_due_again(
    runtime: Runtime, verified: str, s3_client: S3Client
) -> None:
    assert reverify_stored_exports(runtime) == 0  # verified just now: not due
    (key,) = _row(runtime, verified, "object_key")
    s3_client.put_object(Bucket=runtime.settings.s3_bucket, Key=key, Body=b"bit rot")
    _verified_days_ago(runtime, verified, 8)

    assert reverify_stored_exports(runtime) == 1
    assert _queued(runtime) == [verified]
    assert reverify_stored_exports(runtime) == 0  # queued already, not verified since

    report = run_verification(runtime, verified)  # what the verifier does with the message
    assert report is not None
    assert not report.passed
    assert _row(runtime, verified, "verification_status") == ("failed",)
    with connect(runtime.settings.database_url) as conn:
        owed = conn.execute(
            "SELECT event FROM webhook_deliveries WHERE export_id = %s", (verified,)
        ).fetchall()
        queued = conn.execute(
            "SELECT count(*) FROM export_logs WHERE export_id = %s AND event = %s",
            (verified, REVERIFY_EVENT),
        ).fetchone()
    assert owed == [("verification.failed",)]
    assert queued == (1,)
    _verified_days_ago(runtime, verified, 8)
    assert reverify_stored_exports(runtime) == 0  # a failed export is not checked again


@pytest.mark.parametrize(
    ("change", "every_days"),
    [
        ("verified_at = now() - interval '8 days'", 0),  # re-verification off
        ("verified_at = now() - interval '3 days'", 7),  # not due yet
        ("verified_at = now() - interval '8 days', expires_at = now() + interval '5 minutes'", 7),
        ("verified_at = now() - interval '8 days', purged_at = now()", 7),
    ],
)
def test_exports_not_due_off_or_about_to_go_are_not_queued(
    runtime: Runtime, verified: str, change: str, every_days: int
) -> None:
    with connect(runtime.settings.database_url) as conn:
        conn.execute(f"UPDATE data_exports SET {change} WHERE id = %s", (verified,))
        conn.commit()
    assert reverify_stored_exports(runtime, every_days=every_days) == 0
    assert _queued(runtime) == []
