"""The worker jobs in-process against real services: user and bulk exports, verification."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from worker_processes import in_process_runtime

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export, export_logs
from pipelines.options import parse_options
from workers.attempt import Outcome
from workers.bulk import run_plan, run_shard
from workers.config import WorkerSettings
from workers.runtime import Runtime
from workers.user_export import run_user_export
from workers.verification import run_verification

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_client: S3Client, s3_bucket: str) -> Runtime:
    return in_process_runtime(
        settings_env,
        s3_bucket=s3_bucket,
        worker=WorkerSettings(lease_seconds=10, target_shard_rows=400),
        S3_PART_SIZE_BYTES=str(5 * 1024 * 1024),
        EXPORT_BULK_MAX_SIZE=str(1024**3),
    )


def _new_export(runtime: Runtime, export_type: str, fmt: str, compression: str) -> str:
    with connect(runtime.settings.database_url) as conn:
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        options = parse_options(fmt, {"compression": compression}, default_compression="zstd")
        created = create_export(conn, NewExport(user[0], export_type, options))  # type: ignore[arg-type]
        conn.commit()
    return str(created.row["id"])


def _seed(runtime: Runtime, users: int) -> None:
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=users, max_files=200, seed=11)
        conn.commit()


@pytest.mark.parametrize(
    ("fmt", "compression"), [("json", "none"), ("csv", "gzip"), ("xml", "zstd"), ("jsonl", "zstd")]
)
def test_user_export_completes_and_verifies(runtime: Runtime, fmt: str, compression: str) -> None:
    _seed(runtime, 20)
    export_id = _new_export(runtime, "user", fmt, compression)
    assert run_user_export(runtime, export_id) is Outcome.COMPLETED
    assert runtime.queue.verifications == [export_id]  # type: ignore[attr-defined]
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()
    with connect(runtime.settings.database_url) as conn:
        row = conn.execute(
            "SELECT status, verification_status, sha256 IS NOT NULL, lease_owner"
            " FROM data_exports WHERE id = %s",
            (export_id,),
        ).fetchone()
        analytics = conn.execute(
            "SELECT verification_status, problem_count FROM export_analytics WHERE export_id = %s",
            (export_id,),
        ).fetchall()
        events = [entry["event"] for entry in export_logs(conn, export_id)]
    assert row == ("completed", "passed", True, None)
    assert analytics == [("passed", 0)]
    assert events[:2] == ["export.started", "export.completed"]


def test_second_delivery_of_a_finished_export_does_nothing(runtime: Runtime) -> None:
    _seed(runtime, 5)
    export_id = _new_export(runtime, "user", "json", "zstd")
    assert run_user_export(runtime, export_id) is Outcome.COMPLETED
    assert run_user_export(runtime, export_id) is Outcome.SKIPPED
    assert runtime.queue.verifications == [export_id]  # type: ignore[attr-defined]


def test_bulk_export_shards_fan_in_to_one_manifest(runtime: Runtime) -> None:
    _seed(runtime, 120)
    export_id = _new_export(runtime, "bulk", "jsonl", "zstd")
    outcome, holder = run_plan(runtime, export_id)
    assert outcome is Outcome.COMPLETED
    assert holder is not None
    shards = runtime.queue.shards  # type: ignore[attr-defined]
    assert len(shards) > 1
    for export, shard in shards:
        assert run_shard(runtime, export, shard) is Outcome.COMPLETED
    holder.join(timeout=30)
    assert not holder.is_alive()
    with connect(runtime.settings.database_url) as conn:
        row = conn.execute(
            "SELECT status, user_count, file_count, (SELECT count(*) FROM users),"
            " (SELECT count(*) FROM files WHERE deleted_at IS NULL"
            "  AND owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL))"
            " FROM data_exports WHERE id = %s",
            (export_id,),
        ).fetchone()
        events = [entry["event"] for entry in export_logs(conn, export_id)]
    assert row is not None
    assert row[0] == "completed"
    assert "export.snapshot_released" in events
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()


def test_shard_after_the_snapshot_holder_ended_fails_the_export_with_the_reason(
    runtime: Runtime,
) -> None:
    _seed(runtime, 60)
    export_id = _new_export(runtime, "bulk", "csv", "none")
    outcome, holder = run_plan(runtime, export_id)
    assert outcome is Outcome.COMPLETED
    assert holder is not None
    holder.stop()
    holder.join(timeout=30)
    for export, shard in runtime.queue.shards:  # type: ignore[attr-defined]
        assert run_shard(runtime, export, shard) is Outcome.FAILED
    with connect(runtime.settings.database_url) as conn:
        row = conn.execute(
            "SELECT status, error_message FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert row is not None
    assert row[0] == "failed"
    assert "snapshot holder ended before shard 1 started" in row[1]
