"""Maintenance sweeps on a real database and S3 server: expiry, orphan uploads, stuck jobs."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from worker_processes import RecordingQueue, in_process_runtime

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export, export_logs
from pipelines.options import parse_options
from pipelines.verifier import VerificationReport
from workers import metrics, verification
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.maintenance import (
    VERIFY_REQUEUE_SECONDS,
    abort_abandoned_uploads,
    cleanup_exports,
    fail_stuck_exports,
    requeue_verifications,
)
from workers.runtime import Runtime
from workers.state import claim
from workers.user_export import run_user_export
from workers.verification import run_verification

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART = 5 * 1024 * 1024


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_bucket: str) -> Runtime:
    runtime = in_process_runtime(
        settings_env,
        s3_bucket=s3_bucket,
        worker=WorkerSettings(lease_seconds=10, target_shard_rows=400),
        EXPORT_RETENTION_DAYS="7",
    )
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=4, max_files=20, files=40, seed=3)
        conn.commit()
    return runtime


def _create(runtime: Runtime, *, template_id: str | None = None) -> str:
    with connect(runtime.settings.database_url) as conn:
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        options = parse_options("json", {"compression": "none"}, default_compression="zstd")
        new = NewExport(user[0], "user", options, template_id=template_id)
        created = create_export(conn, new)
        conn.commit()
    return str(created.row["id"])


def _completed(runtime: Runtime, **kwargs: Any) -> str:
    export_id = _create(runtime, **kwargs)
    assert run_user_export(runtime, export_id) is Outcome.COMPLETED
    return export_id


def _keys(s3: S3Client, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"].rsplit("/", 1)[-1] for item in listed.get("Contents", []))


def _row(runtime: Runtime, export_id: str) -> dict[str, Any]:
    with (
        connect(runtime.settings.database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cursor,
    ):
        cursor.execute("SELECT * FROM data_exports WHERE id = %s", (export_id,))
        row = cursor.fetchone()
    assert row is not None
    return row


def _sql(runtime: Runtime, statement: str, *params: Any) -> None:
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        conn.execute(statement, params)


def _age_into_stuck(runtime: Runtime, *, lease_expired: str, queued_long_ago: str) -> None:
    """Make one running export's lease 20 minutes expired and one queued export 2 days old."""
    _sql(
        runtime,
        "UPDATE data_exports SET lease_expires_at = now() - interval '20 minutes' WHERE id = %s",
        lease_expired,
    )
    _sql(
        runtime,
        "UPDATE data_exports SET created_at = now() - interval '2 days' WHERE id = %s",
        queued_long_ago,
    )


def _events(runtime: Runtime, export_id: str) -> list[str]:
    with connect(runtime.settings.database_url) as conn:
        return [entry["event"] for entry in export_logs(conn, export_id)]


def _template(runtime: Runtime, days: int) -> str:
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO export_templates (name, format, retention_days)"
            " VALUES ('short', 'json', %s) RETURNING id::text",
            (days,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def _start_upload(runtime: Runtime, key: str) -> str:
    s3 = runtime.s3
    bucket = runtime.settings.s3_bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * PART)
    return upload


def _open_uploads(runtime: Runtime) -> set[str]:
    listed = runtime.s3.list_multipart_uploads(Bucket=runtime.settings.s3_bucket)
    return {upload["UploadId"] for upload in listed.get("Uploads", [])}


def _running(runtime: Runtime, export_id: str, *, upload_id: str | None = None) -> None:
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        claimed = claim(conn, "export", export_id, owner="w1", lease_seconds=60, max_attempts=3)
        assert claimed.lease is not None
        if upload_id is not None:
            conn.execute(
                "UPDATE data_exports SET multipart_upload_id = %s WHERE id = %s",
                (upload_id, export_id),
            )


def test_expired_export_loses_every_object_and_is_marked_expired(runtime: Runtime) -> None:
    old = _completed(runtime)
    kept = _completed(runtime)
    bucket = runtime.settings.s3_bucket
    before = _keys(runtime.s3, bucket, runtime.prefix(old))
    assert {"manifest.json", "SHA256SUMS", "export.json", "export.json.sha256"} <= set(before)
    kept_before = _keys(runtime.s3, bucket, runtime.prefix(kept))
    _sql(
        runtime,
        "UPDATE data_exports SET expires_at = now() - interval '1 minute' WHERE id = %s",
        old,
    )

    assert cleanup_exports(runtime) == 1

    assert _keys(runtime.s3, bucket, runtime.prefix(old)) == []
    assert _keys(runtime.s3, bucket, runtime.prefix(kept)) == kept_before
    row = _row(runtime, old)
    assert row["status"] == "expired"
    assert row["purged_at"] is not None
    assert _row(runtime, kept)["status"] == "completed"
    assert "export.expired" in _events(runtime, old)
    assert cleanup_exports(runtime) == 0  # a second sweep finds nothing more


def test_retention_comes_from_the_template_or_else_the_settings(runtime: Runtime) -> None:
    templated = _completed(runtime, template_id=_template(runtime, 2))
    plain = _completed(runtime)
    now = datetime.now(UTC)
    for export_id, days in ((templated, 2), (plain, 7)):
        expires = _row(runtime, export_id)["expires_at"]
        assert abs(expires - (now + timedelta(days=days))) < timedelta(minutes=1)
    # Finished three days ago with no recorded expiry: past the template's 2 days, within the
    # settings' 7.
    _sql(
        runtime,
        "UPDATE data_exports SET expires_at = NULL, finished_at = now() - interval '3 days'",
    )

    assert cleanup_exports(runtime) == 1

    assert _row(runtime, templated)["status"] == "expired"
    assert _row(runtime, plain)["status"] == "completed"
    assert _keys(runtime.s3, runtime.settings.s3_bucket, runtime.prefix(plain)) != []


def test_failed_export_leftovers_are_purged_and_it_stays_failed(runtime: Runtime) -> None:
    export_id = _create(runtime)
    bucket = runtime.settings.s3_bucket
    runtime.s3.put_object(
        Bucket=bucket, Key=runtime.prefix(export_id) + "shard-00001.csv", Body=b"a"
    )
    _sql(
        runtime,
        "UPDATE data_exports SET status = 'failed', error_message = 'boom',"
        " finished_at = now() - interval '8 days' WHERE id = %s",
        export_id,
    )

    assert cleanup_exports(runtime) == 1

    row = _row(runtime, export_id)
    assert (row["status"], row["purged_at"] is not None) == ("failed", True)
    assert _keys(runtime.s3, bucket, runtime.prefix(export_id)) == []
    assert "export.purged" in _events(runtime, export_id)


def test_only_old_uploads_that_no_live_job_owns_are_aborted(runtime: Runtime) -> None:
    owned_export = _create(runtime)
    failed_export = _create(runtime)
    prefix = runtime.settings.s3_export_prefix
    _start_upload(runtime, f"{prefix}gone/export.json")  # nobody's, old: aborted
    owned = _start_upload(runtime, runtime.prefix(owned_export) + "export.json")
    of_failed = _start_upload(runtime, runtime.prefix(failed_export) + "export.json")
    _running(runtime, owned_export, upload_id=owned)
    _sql(
        runtime,
        "UPDATE data_exports SET status = 'failed', error_code = 'permanent', error_message = 'x',"
        " finished_at = now(), multipart_upload_id = %s WHERE id = %s",
        of_failed,
        failed_export,
    )
    outside = _start_upload(runtime, "elsewhere/object.bin")
    # S3 records Initiated to the second: the old uploads are at least 3.5 s old when the sweep
    # runs and the recent one at most 1 s plus the sweep's delay, both clear of the 3 s limit.
    time.sleep(4.5)
    recent = _start_upload(runtime, f"{prefix}new/export.json")

    assert abort_abandoned_uploads(runtime, older_than_seconds=3) == 2

    assert _open_uploads(runtime) == {owned, outside, recent}
    assert _row(runtime, failed_export)["multipart_upload_id"] is None
    assert _row(runtime, owned_export)["multipart_upload_id"] == owned


def test_stuck_export_is_failed_with_an_actionable_reason_and_its_upload_aborted(
    runtime: Runtime,
) -> None:
    stuck = _create(runtime)
    alive = _create(runtime)
    never_picked = _create(runtime)
    upload = _start_upload(runtime, runtime.prefix(stuck) + "export.json")
    _running(runtime, stuck, upload_id=upload)
    _running(runtime, alive)
    _age_into_stuck(runtime, lease_expired=stuck, queued_long_ago=never_picked)

    assert fail_stuck_exports(runtime) == 2

    row = _row(runtime, stuck)
    assert (row["status"], row["error_code"], row["lease_owner"]) == ("failed", "stuck", None)
    assert "the worker w1 stopped renewing its lease" in row["error_message"]
    assert "start the export again" in row["error_message"]
    assert upload not in _open_uploads(runtime)
    assert row["multipart_upload_id"] is None
    assert _row(runtime, alive)["status"] == "running"
    queued = _row(runtime, never_picked)
    assert queued["status"] == "failed"
    assert "no worker picked it up" in queued["error_message"]
    assert "export.stuck" in _events(runtime, stuck)


def test_lease_expired_within_the_grace_is_left_for_its_redelivery(runtime: Runtime) -> None:
    export_id = _create(runtime)
    _running(runtime, export_id)
    _sql(
        runtime,
        "UPDATE data_exports SET lease_expires_at = now() - interval '1 minute' WHERE id = %s",
        export_id,
    )
    assert fail_stuck_exports(runtime) == 0
    assert fail_stuck_exports(runtime, grace_seconds=0) == 1
    assert _row(runtime, export_id)["status"] == "failed"


def test_stuck_shard_fails_its_bulk_export_naming_the_shard(runtime: Runtime) -> None:
    export_id = _create(runtime)
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        _sql(runtime, "UPDATE data_exports SET export_type = 'bulk' WHERE id = %s", export_id)
        _running(runtime, export_id)
        conn.execute(
            "UPDATE data_exports SET shard_count = 1, snapshot_at = now() WHERE id = %s",
            (export_id,),
        )
        shard = conn.execute(
            "INSERT INTO export_shards (export_id, shard_index, part_size_bytes)"
            " VALUES (%s, 1, %s) RETURNING id::text",
            (export_id, PART),
        ).fetchone()
        assert shard is not None
        claimed = claim(conn, "shard", shard[0], owner="w2", lease_seconds=60, max_attempts=3)
        assert claimed.lease is not None
        conn.execute(
            "UPDATE export_shards SET lease_expires_at = now() - interval '20 minutes'"
            " WHERE id = %s",
            (shard[0],),
        )

    assert fail_stuck_exports(runtime) == 1

    row = _row(runtime, export_id)
    assert (row["status"], row["error_code"]) == ("failed", "shard_failed")
    assert "shard 1 (the worker w2 stopped renewing its lease" in row["error_message"]


def test_completed_export_whose_verifier_message_was_lost_is_queued_again(
    runtime: Runtime,
) -> None:
    export_id = _completed(runtime)
    queue = runtime.queue
    assert isinstance(queue, RecordingQueue)
    queue.verifications.clear()  # the message the broker lost
    assert requeue_verifications(runtime) == 0  # within the grace: the message may be on its way
    _sql(
        runtime,
        "UPDATE data_exports SET finished_at = now() - interval '20 minutes' WHERE id = %s",
        export_id,
    )

    assert requeue_verifications(runtime) == 1

    assert queue.verifications == [export_id]
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed
    assert requeue_verifications(runtime) == 0


def _unverified_for_20_minutes(runtime: Runtime) -> str:
    """Complete an export whose verifier message never arrived, 20 minutes ago."""
    export_id = _completed(runtime)
    queue = runtime.queue
    assert isinstance(queue, RecordingQueue)
    queue.verifications.clear()
    _sql(
        runtime,
        "UPDATE data_exports SET finished_at = now() - interval '20 minutes' WHERE id = %s",
        export_id,
    )
    return export_id


def _queued(runtime: Runtime) -> list[str]:
    """The verifications the sweeps queued."""
    assert isinstance(runtime.queue, RecordingQueue)
    return runtime.queue.verifications


def _logged_ago(runtime: Runtime, export_id: str, event: str, seconds: int) -> None:
    _sql(
        runtime,
        "INSERT INTO export_logs (created_at, event, message, export_id, actor_type)"
        " VALUES (now() - make_interval(secs => %s), %s, 'test entry', %s, 'system')",
        seconds,
        event,
        export_id,
    )


def test_verification_still_queued_or_running_is_not_queued_again_within_its_time_limit(
    runtime: Runtime,
) -> None:
    export_id = _unverified_for_20_minutes(runtime)
    assert requeue_verifications(runtime) == 1

    # The sweeps every 5 minutes while that verification waits in the queue or runs.
    assert requeue_verifications(runtime) == 0
    assert requeue_verifications(runtime) == 0

    assert _queued(runtime) == [export_id]
    assert _events(runtime, export_id).count("verification.requeued") == 1


def test_verification_requeued_longer_ago_than_its_time_limit_is_queued_again(
    runtime: Runtime,
) -> None:
    may_still_run = _unverified_for_20_minutes(runtime)
    _logged_ago(runtime, may_still_run, "verification.requeued", VERIFY_REQUEUE_SECONDS - 300)
    lost = _unverified_for_20_minutes(runtime)
    _logged_ago(runtime, lost, "verification.requeued", VERIFY_REQUEUE_SECONDS + 60)

    assert requeue_verifications(runtime) == 1

    assert _queued(runtime) == [lost]


def test_verification_requested_through_the_api_is_not_queued_again_by_the_sweep(
    runtime: Runtime,
) -> None:
    export_id = _unverified_for_20_minutes(runtime)
    _logged_ago(runtime, export_id, "verification.requested", 60)

    assert requeue_verifications(runtime) == 0

    assert _queued(runtime) == []


def test_export_expired_while_being_verified_records_no_verification(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_id = _completed(runtime)
    real_verify = verification.verify_export

    def verify_while_retention_passes(*args: Any, **kwargs: Any) -> VerificationReport:
        _sql(
            runtime,
            "UPDATE data_exports SET expires_at = now() - interval '1 minute' WHERE id = %s",
            export_id,
        )
        assert cleanup_exports(runtime) == 1  # objects deleted, export marked expired
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(verification, "verify_export", verify_while_retention_passes)

    assert run_verification(runtime, export_id) is None

    row = _row(runtime, export_id)
    assert (row["status"], row["verification_status"], row["verified_at"]) == (
        "expired",
        "pending",
        None,
    )
    with connect(runtime.settings.database_url) as conn:
        owed = conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE export_id = %s", (export_id,)
        ).fetchone()
        analytics = conn.execute(
            "SELECT count(*) FROM export_analytics WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert (owed, analytics) == ((0,), (0,))
    assert "verification.failed" not in _events(runtime, export_id)


def test_export_past_its_expiry_while_being_verified_records_no_verification(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_id = _completed(runtime)
    real_verify = verification.verify_export

    def verify_while_cleanup_deletes(*args: Any, **kwargs: Any) -> VerificationReport:
        # The cleanup sweep deletes the objects first and marks the export expired after.
        _sql(
            runtime,
            "UPDATE data_exports SET expires_at = now() - interval '1 minute' WHERE id = %s",
            export_id,
        )
        bucket = runtime.settings.s3_bucket
        listed = runtime.s3.list_objects_v2(Bucket=bucket, Prefix=runtime.prefix(export_id))
        for item in listed.get("Contents", []):
            runtime.s3.delete_object(Bucket=bucket, Key=item["Key"])
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(verification, "verify_export", verify_while_cleanup_deletes)

    assert run_verification(runtime, export_id) is None

    row = _row(runtime, export_id)
    assert (row["status"], row["verification_status"]) == ("completed", "pending")
    with connect(runtime.settings.database_url) as conn:
        owed = conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE export_id = %s", (export_id,)
        ).fetchone()
    assert owed == (0,)


def _exports_counted(status: str, export_type: str) -> float:
    labels = {"status": status, "export_type": export_type, "format": "json"}
    return metrics.sample_value("data_export_exports_total", labels)


def test_exports_failed_by_the_stuck_sweep_are_counted_as_failed_once(runtime: Runtime) -> None:
    stuck = _create(runtime)
    never_picked = _create(runtime)
    _running(runtime, stuck)
    _age_into_stuck(runtime, lease_expired=stuck, queued_long_ago=never_picked)
    before = _exports_counted("failed", "user")

    assert fail_stuck_exports(runtime) == 2
    assert _exports_counted("failed", "user") == before + 2

    assert fail_stuck_exports(runtime) == 0
    assert _exports_counted("failed", "user") == before + 2


def test_a_stuck_shard_is_counted_only_as_its_failed_bulk_export(runtime: Runtime) -> None:
    export_id = _create(runtime)
    _sql(runtime, "UPDATE data_exports SET export_type = 'bulk' WHERE id = %s", export_id)
    _running(runtime, export_id)
    with connect(runtime.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE data_exports SET shard_count = 2, snapshot_at = now() WHERE id = %s",
            (export_id,),
        )
        for index in (1, 2):
            shard = conn.execute(
                "INSERT INTO export_shards (export_id, shard_index, part_size_bytes)"
                " VALUES (%s, %s, %s) RETURNING id::text",
                (export_id, index, PART),
            ).fetchone()
            assert shard is not None
            claimed = claim(conn, "shard", shard[0], owner="w2", lease_seconds=60, max_attempts=3)
            assert claimed.lease is not None
        conn.execute(
            "UPDATE export_shards SET lease_expires_at = now() - interval '20 minutes'"
            " WHERE export_id = %s",
            (export_id,),
        )
    before = _exports_counted("failed", "bulk")

    assert fail_stuck_exports(runtime) == 2

    assert _row(runtime, export_id)["status"] == "failed"
    assert _exports_counted("failed", "bulk") == before + 1
