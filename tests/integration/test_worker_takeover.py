"""Taking over a job from another worker: who keeps the multipart upload, and what gets rewritten.

A worker fenced out by a new lease holder must leave the upload open for that holder, which
resumes it, and must not complete it even when it is fenced out after its last part; a
redelivered user export starts again on a fresh snapshot instead of resuming.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from worker_processes import in_process_runtime

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export, export_logs
from pipelines.manifest import parse_manifest
from pipelines.options import parse_options
from pipelines.parts import Part
from pipelines.runner import ExportLimits, export_shard
from pipelines.sources import UserRange
from pipelines.storage.reader import iter_object_bytes
from pipelines.storage.s3_sink import S3MultipartSink
from pipelines.storage.stores import LocalStore
from workers import bulk, resume
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.heartbeat import LeaseKeeper
from workers.rows import header_from_row, options_from_row
from workers.runtime import Runtime
from workers.state import LeaseLostError, claim
from workers.user_export import run_user_export
from workers.verification import run_verification

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART = 5 * 1024 * 1024


@pytest.fixture
def runtime(settings_env: dict[str, str], s3_bucket: str) -> Runtime:
    return in_process_runtime(
        settings_env,
        s3_bucket=s3_bucket,
        worker=WorkerSettings(lease_seconds=30, target_shard_rows=10**9),
        S3_PART_SIZE_BYTES=str(PART),
        EXPORT_BULK_MAX_SIZE=str(1024**3),
    )


def _create(runtime: Runtime, export_type: str, fmt: str) -> str:
    with connect(runtime.settings.database_url) as conn:
        user = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert user is not None
        options = parse_options(fmt, {"compression": "none"}, default_compression="zstd")
        created = create_export(conn, NewExport(user[0], export_type, options))  # type: ignore[arg-type]
        conn.commit()
    return str(created.row["id"])


def _row(runtime: Runtime, table: str, row_id: str) -> dict[str, Any]:
    with (
        connect(runtime.settings.database_url) as conn,
        conn.cursor(row_factory=psycopg.rows.dict_row) as cursor,
    ):
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", (row_id,))
        row = cursor.fetchone()
    assert row is not None
    return row


def _open_uploads(s3: S3Client, bucket: str) -> set[str]:
    return {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def _parts(count: int) -> list[Part]:
    data = b"p" * PART
    digest = hashlib.sha256(data).hexdigest()
    return [Part(n, data, PART, 0, 0, True, None, digest) for n in range(1, count + 1)]


@pytest.mark.parametrize(("hands_over", "left_open"), [(False, False), (True, True)])
def test_sink_aborts_on_close_unless_told_the_upload_has_a_new_owner(
    runtime: Runtime, hands_over: bool, left_open: bool
) -> None:
    bucket = runtime.settings.s3_bucket
    started: list[str] = []
    sink = S3MultipartSink(
        runtime.s3,
        bucket=bucket,
        key="exports/x/object.bin",
        part_size=PART,
        content_type="application/octet-stream",
        on_upload_started=started.append,
        abort_on_error=lambda error: not hands_over,
    )
    progress = sink.upload(_parts(3))
    next(progress)
    progress.close()  # the consumer stopped: a lost lease, as write_object sees it
    assert (started[0] in _open_uploads(runtime.s3, bucket)) is left_open


@pytest.mark.parametrize("parts", [1, 3])
def test_sink_neither_completes_nor_aborts_when_the_check_before_completion_fails(
    runtime: Runtime, parts: int
) -> None:
    bucket = runtime.settings.s3_bucket
    key = f"exports/x/object-{parts}.bin"
    started: list[str] = []
    checks: list[str] = []

    def fenced_out() -> None:
        checks.append("checked")
        raise LeaseLostError("export x: fencing token 1 no longer holds the lease")

    sink = S3MultipartSink(
        runtime.s3,
        bucket=bucket,
        key=key,
        part_size=PART,
        content_type="application/octet-stream",
        on_upload_started=started.append,
        before_complete=fenced_out,
    )
    with pytest.raises(LeaseLostError):
        sink.write(_parts(parts))

    assert checks == ["checked"]
    assert "Contents" not in runtime.s3.list_objects_v2(Bucket=bucket, Prefix=key)
    # A multipart upload stays open with every part for whoever holds the lease now.
    assert _open_uploads(runtime.s3, bucket) == set(started)
    if started:
        listed = runtime.s3.list_parts(Bucket=bucket, Key=key, UploadId=started[0])
        assert [part["PartNumber"] for part in listed["Parts"]] == list(range(1, parts + 1))
        runtime.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=started[0])


class StealingKeeper(LeaseKeeper):
    """A lease keeper whose lease another worker takes after the first stored part."""

    checks = 0

    def check(self) -> None:
        StealingKeeper.checks += 1
        if StealingKeeper.checks == 2:
            with connect(STOLEN["url"], autocommit=True) as conn:
                conn.execute(
                    "UPDATE export_shards SET fencing_token = fencing_token + 1,"
                    " lease_owner = 'newcomer', lease_expires_at = now() - interval '1 second'"
                    " WHERE status = 'running'"
                )
        super().check()


STOLEN: dict[str, str] = {}


def test_worker_that_loses_its_lease_leaves_the_upload_to_the_new_owner(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = runtime.settings.database_url
    with connect(url) as conn:
        seed_database(conn, users=300, max_files=200, files=40_000, seed=5)
        conn.commit()
    export_id = _create(runtime, "bulk", "csv")
    outcome, holder = bulk.run_plan(runtime, export_id)
    assert outcome is Outcome.COMPLETED
    assert holder is not None
    [(_, shard_id)] = runtime.queue.shards  # type: ignore[attr-defined]
    STOLEN["url"] = url
    StealingKeeper.checks = 0
    monkeypatch.setattr(bulk, "LeaseKeeper", StealingKeeper)

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.FAILED  # fenced out

    bucket = runtime.settings.s3_bucket
    upload = _row(runtime, "export_shards", shard_id)["multipart_upload_id"]
    assert upload in _open_uploads(runtime.s3, bucket)
    monkeypatch.setattr(bulk, "LeaseKeeper", LeaseKeeper)

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.COMPLETED

    holder.join(timeout=30)
    done = _row(runtime, "export_shards", shard_id)
    export = _row(runtime, "data_exports", export_id)
    assert export["status"] == "completed"
    with connect(url) as conn:
        events = [entry["event"] for entry in export_logs(conn, export_id)]
    assert "export.resumed" in events
    stored = hashlib.sha256()
    for blob in iter_object_bytes(runtime.s3, bucket=bucket, key=done["object_key"]):
        stored.update(blob)
    options = options_from_row(export)
    with connect(url) as conn:
        reference = export_shard(
            conn, number=1, users=UserRange(), header=header_from_row(export, options),
            options=options, store=LocalStore(tmp_path / "ref"),
            limits=ExportLimits(part_size=PART, max_size=None),
        )  # fmt: skip
    assert reference.digests.stored_bytes > 2 * PART
    assert stored.hexdigest() == done["sha256"] == reference.digests.stored_sha256
    assert _open_uploads(runtime.s3, bucket) == set()


def test_worker_fenced_out_after_its_last_part_does_not_complete_and_its_successor_does(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = runtime.settings.database_url
    with connect(url) as conn:
        seed_database(conn, users=300, max_files=200, files=40_000, seed=5)
        conn.commit()
    export_id = _create(runtime, "bulk", "csv")
    outcome, holder = bulk.run_plan(runtime, export_id)
    assert outcome is Outcome.COMPLETED
    assert holder is not None
    [(_, shard_id)] = runtime.queue.shards  # type: ignore[attr-defined]
    confirm = resume.PartLog.confirm_lease
    fenced: list[int] = []

    def taken_just_before_completion(log: resume.PartLog) -> None:
        # Another worker claims the shard after every part is stored and recorded.
        with connect(url, autocommit=True) as conn:
            conn.execute(
                "UPDATE export_shards SET fencing_token = fencing_token + 1,"
                " lease_owner = 'newcomer', lease_expires_at = now() - interval '1 second'"
                " WHERE id = %s",
                (shard_id,),
            )
            fenced.append(
                conn.execute(
                    "SELECT count(*) FROM export_upload_parts WHERE shard_id = %s", (shard_id,)
                ).fetchone()[0]  # type: ignore[index]
            )
        confirm(log)

    monkeypatch.setattr(resume.PartLog, "confirm_lease", taken_just_before_completion)

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.FAILED  # fenced out

    bucket = runtime.settings.s3_bucket
    shard = _row(runtime, "export_shards", shard_id)
    upload = shard["multipart_upload_id"]
    assert shard["status"] == "running"
    assert shard["lease_owner"] == "newcomer"
    assert fenced[0] > 2  # every part was stored before the lease was taken
    [open_upload] = runtime.s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert open_upload["UploadId"] == upload  # neither completed nor aborted
    assert "Contents" not in runtime.s3.list_objects_v2(Bucket=bucket, Prefix=open_upload["Key"])
    monkeypatch.setattr(resume.PartLog, "confirm_lease", confirm)

    assert bulk.run_shard(runtime, export_id, shard_id) is Outcome.COMPLETED

    holder.join(timeout=30)
    done = _row(runtime, "export_shards", shard_id)
    export = _row(runtime, "data_exports", export_id)
    assert export["status"] == "completed"
    assert done["object_key"] == open_upload["Key"]
    with connect(url) as conn:
        entries = export_logs(conn, export_id)
    resumed = [entry for entry in entries if entry["event"] == "export.resumed"]
    assert len(resumed) == 1
    # The successor continues the same upload after the last resumable recorded part.
    assert resumed[0]["details"]["upload_id"] == upload
    assert 0 < resumed[0]["details"]["parts_kept"] <= fenced[0]
    stored = hashlib.sha256()
    for blob in iter_object_bytes(runtime.s3, bucket=bucket, key=done["object_key"]):
        stored.update(blob)
    options = options_from_row(export)
    with connect(url) as conn:
        reference = export_shard(
            conn, number=1, users=UserRange(), header=header_from_row(export, options),
            options=options, store=LocalStore(tmp_path / "ref"),
            limits=ExportLimits(part_size=PART, max_size=None),
        )  # fmt: skip
    assert stored.hexdigest() == done["sha256"] == reference.digests.stored_sha256
    assert _open_uploads(runtime.s3, bucket) == set()


def test_redelivered_user_export_starts_again_on_a_fresh_snapshot(runtime: Runtime) -> None:
    url = runtime.settings.database_url
    with connect(url) as conn:
        seed_database(conn, users=5, max_files=50, files=100, seed=5)
        conn.commit()
    export_id = _create(runtime, "user", "json")
    bucket = runtime.settings.s3_bucket
    key = runtime.prefix(export_id) + "export.json"
    # A first attempt that uploaded one part on its own snapshot, then died.
    with connect(url, autocommit=True) as conn:
        first = claim(conn, "export", export_id, owner="dead", lease_seconds=60, max_attempts=3)
        assert first.lease is not None
        old = runtime.s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        runtime.s3.upload_part(Bucket=bucket, Key=key, UploadId=old, PartNumber=1, Body=b"x" * PART)
        conn.execute(
            "UPDATE data_exports SET multipart_upload_id = %s,"
            " snapshot_at = now() - interval '1 hour',"
            " lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (old, export_id),
        )
        first_snapshot = conn.execute(
            "SELECT snapshot_at FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert first_snapshot is not None

    assert run_user_export(runtime, export_id) is Outcome.COMPLETED

    row = _row(runtime, "data_exports", export_id)
    assert row["snapshot_at"] > first_snapshot[0]
    assert old not in _open_uploads(runtime.s3, bucket)
    manifest_key = runtime.prefix(export_id) + "manifest.json"
    blobs = iter_object_bytes(runtime.s3, bucket=bucket, key=manifest_key)
    manifest = parse_manifest(b"".join(blobs))
    assert datetime.fromisoformat(manifest.snapshot_time) == row["snapshot_at"]
    with connect(url) as conn:
        entries = export_logs(conn, export_id)
    restarted = [entry for entry in entries if entry["event"] == "export.restarted"]
    assert len(restarted) == 1
    assert "fresh snapshot" in restarted[0]["message"]
    assert "export.resumed" not in [entry["event"] for entry in entries]
    report = run_verification(runtime, export_id)
    assert report is not None
    assert report.passed, report.as_json()
