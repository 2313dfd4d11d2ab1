"""Attempts cut off by Dramatiq's interrupts, and retries that find their upload gone.

Dramatiq's time limit raises TimeLimitExceeded, a BaseException, into the worker thread: the
attempt must still be settled (lease released, reason recorded, upload aborted and forgotten)
before Dramatiq sees the interrupt. A retry that finds the upload its row names already aborted
(settling it failed on a database error) starts the object again instead of failing for good.
"""

from __future__ import annotations

from typing import Any, NoReturn

import psycopg
import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded
from psycopg.rows import dict_row
from worker_processes import in_process_runtime, new_export

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import export_logs
from pipelines.storage.sinks import UploadedPart
from workers import attempt, bulk, resume
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.runtime import Runtime
from workers.snapshot_holder import SnapshotHolder
from workers.user_export import run_user_export
from workers.verification import run_verification

PART = 5 * 1024 * 1024


def _runtime(settings_env: dict[str, str], s3_bucket: str, *, max_attempts: int = 3) -> Runtime:
    return in_process_runtime(
        settings_env,
        s3_bucket=s3_bucket,
        worker=WorkerSettings(lease_seconds=30, max_attempts=max_attempts, target_shard_rows=10**9),
        S3_PART_SIZE_BYTES=str(PART),
        EXPORT_BULK_MAX_SIZE=str(1024**3),
    )


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_bucket: str) -> Runtime:
    return _runtime(settings_env, s3_bucket)


def _create(runtime: Runtime, export_type: str, fmt: str) -> str:
    return new_export(runtime.settings.database_url, export_type, fmt, "none")


def _planned_shard(runtime: Runtime) -> tuple[str, str, SnapshotHolder]:
    """Seed enough rows for a shard of three parts, plan a bulk export; return it and its shard."""
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=300, max_files=200, files=40_000, seed=5)
        conn.commit()
    export_id = _create(runtime, "bulk", "csv")
    outcome, holder = bulk.run_plan(runtime, export_id)
    assert outcome is Outcome.COMPLETED
    assert holder is not None
    [(_, shard_id)] = runtime.queue.shards  # type: ignore[attr-defined]
    return export_id, shard_id, holder


def _row(runtime: Runtime, table: str, row_id: str) -> dict[str, Any]:
    with (
        connect(runtime.settings.database_url) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        cursor.execute(
            f"SELECT *, lease_expires_at <= now() AS lease_released FROM {table} WHERE id = %s",
            (row_id,),
        )
        row = cursor.fetchone()
    assert row is not None
    return row


def _open_uploads(runtime: Runtime) -> set[str]:
    listed = runtime.s3.list_multipart_uploads(Bucket=runtime.settings.s3_bucket)
    return {upload["UploadId"] for upload in listed.get("Uploads", [])}


def _abort_if_open(runtime: Runtime, upload_id: str) -> None:
    bucket = runtime.settings.s3_bucket
    for upload in runtime.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        if upload["UploadId"] == upload_id:
            runtime.s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload_id)


def _recorded_parts(runtime: Runtime, upload_id: str) -> int:
    with connect(runtime.settings.database_url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM export_upload_parts WHERE upload_id = %s", (upload_id,)
        ).fetchone()
    assert found is not None
    return int(found[0])


def _events(runtime: Runtime, export_id: str) -> list[dict[str, Any]]:
    with connect(runtime.settings.database_url) as conn:
        return export_logs(conn, export_id)


def _fail_at_third_part(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Raise `error` where the attempt records its third stored part."""
    record = resume.PartLog._record
    calls: list[int] = []

    def interrupted(log: resume.PartLog, part: UploadedPart) -> None:
        calls.append(part.number)
        if len(calls) == 3:
            raise error
        record(log, part)

    monkeypatch.setattr(resume.PartLog, "_record", interrupted)


def _expire_lease(runtime: Runtime, shard_id: str) -> None:
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE export_shards SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (shard_id,),
        )


def test_shard_cut_off_by_the_time_limit_is_released_and_its_retry_completes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_id, shard_id, holder = _planned_shard(runtime)
    _fail_at_third_part(monkeypatch, TimeLimitExceeded())

    with pytest.raises(TimeLimitExceeded):  # Dramatiq still sees its interrupt
        bulk.run_shard(runtime, export_id, shard_id)

    shard = _row(runtime, "export_shards", shard_id)
    assert shard["status"] == "running"
    assert shard["lease_released"]  # the retry can claim it at once
    assert shard["multipart_upload_id"] is None  # the aborted upload is forgotten
    assert _open_uploads(runtime) == set()
    [retrying] = [e for e in _events(runtime, export_id) if e["event"] == "export.retrying"]
    assert "time limit" in retrying["message"]
    monkeypatch.undo()

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.COMPLETED  # Dramatiq's retry

    holder.join(timeout=30)
    assert _row(runtime, "data_exports", export_id)["status"] == "completed"
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()
    assert _open_uploads(runtime) == set()


def test_time_limit_on_the_last_attempt_fails_the_shard_saying_so(
    settings_env: dict[str, str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(settings_env, s3_bucket, max_attempts=1)
    export_id, shard_id, holder = _planned_shard(runtime)
    _fail_at_third_part(monkeypatch, TimeLimitExceeded())

    with pytest.raises(TimeLimitExceeded):
        bulk.run_shard(runtime, export_id, shard_id)

    shard = _row(runtime, "export_shards", shard_id)
    assert shard["status"] == "failed"
    assert shard["error_code"] == "attempts_exhausted"
    assert "time limit" in shard["error_message"]
    assert "out-of-memory" not in shard["error_message"]
    holder.join(timeout=30)
    export = _row(runtime, "data_exports", export_id)
    assert export["status"] == "failed"
    assert "time limit" in export["error_message"]
    assert _open_uploads(runtime) == set()


def test_user_export_cut_off_by_the_time_limit_is_released_and_its_retry_completes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=5, max_files=50, files=100, seed=5)
        conn.commit()
    export_id = _create(runtime, "user", "json")

    def time_is_up(log: resume.PartLog) -> NoReturn:
        raise TimeLimitExceeded()  # right before the object would be stored

    monkeypatch.setattr(resume.PartLog, "confirm_lease", time_is_up)
    with pytest.raises(TimeLimitExceeded):
        run_user_export(runtime, export_id)

    row = _row(runtime, "data_exports", export_id)
    assert row["status"] == "running"
    assert row["lease_released"]
    assert row["multipart_upload_id"] is None
    retrying = [e for e in _events(runtime, export_id) if e["event"] == "export.retrying"]
    assert ["time limit" in e["message"] for e in retrying] == [True]
    monkeypatch.undo()

    assert run_user_export(runtime, export_id) is Outcome.COMPLETED

    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()


def _settled_without_release(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> tuple[str, str, SnapshotHolder]:
    """Stop a shard's first attempt with `error` while the database cannot record its release."""
    export_id, shard_id, holder = _planned_shard(runtime)
    _fail_at_third_part(monkeypatch, error)

    def database_down(*args: object, **kwargs: object) -> NoReturn:
        raise psycopg.OperationalError("the database is restarting")

    monkeypatch.setattr(attempt, "release", database_down)
    with pytest.raises(type(error)):
        bulk.run_shard(runtime, export_id, shard_id)
    monkeypatch.undo()
    return export_id, shard_id, holder


STOPS = pytest.mark.parametrize(
    "error",
    [TimeLimitExceeded(), psycopg.OperationalError("server closed the connection unexpectedly")],
    ids=["time_limit", "database_error"],
)


@STOPS
def test_attempt_stopped_midway_aborts_its_upload_before_it_ends(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    export_id, shard_id, holder = _settled_without_release(runtime, monkeypatch, error)

    upload = _row(runtime, "export_shards", shard_id)["multipart_upload_id"]
    assert upload is not None  # still named: recording the release failed
    assert _recorded_parts(runtime, upload) == 2
    # Aborted now, not whenever the upload's generator is garbage collected.
    assert _open_uploads(runtime) == set()
    _expire_lease(runtime, shard_id)
    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.COMPLETED
    holder.join(timeout=30)


@STOPS
def test_shard_whose_recorded_upload_was_aborted_starts_the_object_again(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    export_id, shard_id, holder = _settled_without_release(runtime, monkeypatch, error)
    upload = _row(runtime, "export_shards", shard_id)["multipart_upload_id"]
    assert upload is not None
    _abort_if_open(runtime, upload)  # the sink's abort, should it not have happened yet
    _expire_lease(runtime, shard_id)

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.COMPLETED  # Dramatiq's retry

    holder.join(timeout=30)
    assert _row(runtime, "data_exports", export_id)["status"] == "completed"
    [restarted] = [e for e in _events(runtime, export_id) if e["event"] == "export.restarted"]
    assert restarted["details"] == {"upload_id": upload, "reason": "upload_gone"}
    assert _recorded_parts(runtime, upload) == 0
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()
    assert _open_uploads(runtime) == set()
