"""The S3 multipart sink against the real S3 server: exact parts, aborts, limits and resume.

No local S3 server checks R2's equal-part rule, so every test that uploads also captures the part
sizes the client sends and asserts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from pipelines.digests import DigestTracker
from pipelines.errors import PermanentError, RetryableError, SizeLimitError
from pipelines.parts import MIB, ResumePoint, iter_parts
from pipelines.storage.client import create_s3_client
from pipelines.storage.reader import iter_content, iter_object_bytes
from pipelines.storage.s3_sink import S3MultipartSink
from pipelines.storage.sinks import UploadedPart, drain

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from exportctl.devstack import StackEndpoints

PART = 5 * MIB  # the S3 minimum, which the test server enforces
CHUNK = 256 * 1024
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


def make_chunks(count: int, start: int = 0) -> Iterator[Chunk]:
    """Yield deterministic chunks, mostly incompressible so compressed objects span parts."""
    for index in range(start, count):
        noise = random.Random(index).randbytes(CHUNK - 1024)
        yield Chunk(noise + f"row {index}\n".encode() * 100, index, 100)


@pytest.fixture
def sent_sizes(s3_client: S3Client) -> Iterator[list[int]]:
    """Record the body size of every UploadPart the client sends."""
    sizes: list[int] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Body"]))

    s3_client.meta.events.register("provide-client-params.s3.UploadPart", capture)
    try:
        yield sizes
    finally:
        s3_client.meta.events.unregister("provide-client-params.s3.UploadPart", capture)


def open_uploads(client: S3Client, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def keys(client: S3Client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def stored(client: S3Client, bucket: str, key: str) -> bytes:
    return b"".join(iter_object_bytes(client, bucket=bucket, key=key))


def sink_for(client: S3Client, bucket: str, key: str, **options: Any) -> S3MultipartSink:
    return S3MultipartSink(
        client, bucket=bucket, key=key, part_size=PART, content_type="application/zstd", **options
    )


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_multipart_upload_sends_equal_parts_and_stores_the_object(
    s3_client: S3Client, s3_bucket: str, sent_sizes: list[int], compression: str
) -> None:
    tracker = DigestTracker(compression=compression)
    chunks = tracker.chunks(make_chunks(70))
    parts = tracker.parts(iter_parts(chunks, compression=compression, part_size=PART))
    sink = sink_for(s3_client, s3_bucket, "exports/a.csv", summary=tracker.summary)
    result = sink.write(parts)
    summary = tracker.summary()
    assert len(sent_sizes) >= 3
    assert set(sent_sizes[:-1]) == {PART}
    assert 0 < sent_sizes[-1] <= PART
    body = stored(s3_client, s3_bucket, "exports/a.csv")
    assert hashlib.sha256(body).hexdigest() == summary.stored_sha256 == result.sha256
    content = b"".join(iter_content([body]))
    assert hashlib.sha256(content).hexdigest() == summary.content_sha256
    assert [p.size for p in result.parts] == sent_sizes
    sidecar = stored(s3_client, s3_bucket, "exports/a.csv.sha256").decode()
    assert sidecar == f"{summary.stored_sha256}  a.csv\n"
    assert open_uploads(s3_client, s3_bucket) == []


def test_small_object_is_one_put_with_digests_as_metadata(
    s3_client: S3Client, s3_bucket: str, sent_sizes: list[int]
) -> None:
    tracker = DigestTracker(compression="zstd")
    chunks = tracker.chunks([Chunk(b'{"id": 1}\n' * 1000, 0, 1000)])
    parts = tracker.parts(iter_parts(chunks, compression="zstd", part_size=PART))
    result = sink_for(s3_client, s3_bucket, "u.jsonl.zst", summary=tracker.summary).write(parts)
    assert sent_sizes == []
    assert result.upload_id is None
    head = s3_client.head_object(Bucket=s3_bucket, Key="u.jsonl.zst")
    summary = tracker.summary()
    assert head["ContentType"] == "application/zstd"
    assert head["Metadata"]["sha256"] == summary.stored_sha256 == result.sha256
    assert head["Metadata"]["content-sha256"] == summary.content_sha256
    assert head["Metadata"]["records"] == "1000"


def test_failure_in_the_chunk_stream_leaves_no_object_and_no_upload(
    s3_client: S3Client, s3_bucket: str, sent_sizes: list[int]
) -> None:
    def failing() -> Iterator[Chunk]:
        yield from make_chunks(45)
        raise PermanentError("the database went away")

    parts = iter_parts(failing(), compression="none", part_size=PART)
    with pytest.raises(PermanentError, match="database went away"):
        sink_for(s3_client, s3_bucket, "x.csv").write(parts)
    assert len(sent_sizes) >= 2
    assert open_uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


def test_keyboard_interrupt_aborts_the_upload(s3_client: S3Client, s3_bucket: str) -> None:
    def interrupted() -> Iterator[Chunk]:
        yield from make_chunks(45)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sink_for(s3_client, s3_bucket, "x.csv").write(
            iter_parts(interrupted(), compression="none", part_size=PART)
        )
    assert open_uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


def test_closing_the_upload_generator_aborts_the_upload(
    s3_client: S3Client, s3_bucket: str
) -> None:
    started: list[str] = []
    sink = sink_for(s3_client, s3_bucket, "x.csv", on_upload_started=started.append)
    progress = sink.upload(iter_parts(make_chunks(70), compression="none", part_size=PART))
    first = next(progress)
    assert first.number == 1
    assert len(open_uploads(s3_client, s3_bucket)) == 1
    progress.close()
    assert started
    assert open_uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


def test_retryable_s3_error_aborts_upload(s3_client: S3Client, s3_bucket: str) -> None:
    calls: list[int] = []

    def fail_second_part(**_: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            response: Any = {
                "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            }
            raise ClientError(response, "UploadPart")

    s3_client.meta.events.register("before-call.s3.UploadPart", fail_second_part)
    try:
        with pytest.raises(RetryableError, match="SlowDown"):
            sink_for(s3_client, s3_bucket, "x.csv").write(
                iter_parts(make_chunks(70), compression="none", part_size=PART)
            )
    finally:
        s3_client.meta.events.unregister("before-call.s3.UploadPart", fail_second_part)
    assert open_uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


def test_size_limit_aborts_with_a_clear_error(s3_client: S3Client, s3_bucket: str) -> None:
    sink = sink_for(s3_client, s3_bucket, "x.csv", max_size=12 * MIB)
    with pytest.raises(SizeLimitError, match="EXPORT_MAX_SIZE"):
        sink.write(iter_parts(make_chunks(70), compression="none", part_size=PART))
    assert open_uploads(s3_client, s3_bucket) == []
    assert keys(s3_client, s3_bucket) == []


def test_part_size_below_the_s3_minimum_needs_explicit_permission(s3_client: S3Client) -> None:
    with pytest.raises(PermanentError, match="outside"):
        S3MultipartSink(s3_client, bucket="b", key="k", part_size=MIB, content_type="text/csv")
    S3MultipartSink(
        s3_client, bucket="b", key="k", part_size=MIB, content_type="text/csv", min_part_size=MIB
    )


def test_rejected_credentials_are_a_permanent_error(stack: StackEndpoints, s3_bucket: str) -> None:
    intruder = create_s3_client(
        endpoint_url=stack.s3_endpoint_url,
        region=stack.s3_region,
        access_key_id=stack.s3_access_key_id,
        secret_access_key="not-the-secret",
    )
    sink = sink_for(intruder, s3_bucket, "x.csv")
    with pytest.raises(PermanentError, match="CreateMultipartUpload") as caught:
        sink.write(iter_parts(make_chunks(30), compression="none", part_size=PART))
    assert not isinstance(caught.value, RetryableError)


CRASHING_UPLOAD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from test_sinks import make_chunks
from pipelines.parts import iter_parts
from pipelines.storage.client import create_s3_client
from pipelines.storage.s3_sink import S3MultipartSink
endpoint, region, key_id, secret, bucket, key, compression, part, count, stop = sys.argv[2:]
client = create_s3_client(endpoint_url=endpoint, region=region, access_key_id=key_id,
                          secret_access_key=secret)
emit = lambda record: print(json.dumps(record), flush=True)
sink = S3MultipartSink(client, bucket=bucket, key=key, part_size=int(part),
                       content_type="application/octet-stream",
                       on_upload_started=lambda upload_id: emit({"upload_id": upload_id}))
parts = iter_parts(make_chunks(int(count)), compression=compression, part_size=int(part))
for done in sink.upload(parts):
    point = done.resume
    emit({"number": done.number, "size": done.size, "sha256": done.sha256, "etag": done.etag,
          "resume": None if point is None else [
              point.cursor, point.next_part, point.skip_bytes, point.stored_bytes,
              point.raw_bytes, point.records]})
    if done.number == int(stop):
        time.sleep(600)  # killed here, mid-export
"""


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_export_killed_mid_upload_resumes_to_the_same_object(
    stack: StackEndpoints, s3_client: S3Client, s3_bucket: str, compression: str
) -> None:
    count = 90
    args = [
        stack.s3_endpoint_url, stack.s3_region, stack.s3_access_key_id,
        stack.s3_secret_access_key, s3_bucket, "crashed.bin", compression, str(PART), str(count),
        "3",
    ]  # fmt: skip
    records = []
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_UPLOAD, str(Path(__file__).parent), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as worker:
        assert worker.stdout is not None
        try:
            for line in worker.stdout:
                records.append(json.loads(line))
                if records[-1].get("number") == 3:
                    break
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    upload_id = records[0]["upload_id"]
    uploaded = [
        UploadedPart(
            r["number"], r["size"], r["sha256"], r["etag"],
            ResumePoint(*r["resume"]) if r["resume"] else None,
        )
        for r in records[1:]
    ]  # fmt: skip
    assert len(open_uploads(s3_client, s3_bucket)) == 1
    point = next(p.resume for p in reversed(uploaded) if p.resume is not None)
    assert point is not None
    start = 0 if point.cursor is None else int(str(point.cursor)) + 1
    tail = iter_parts(
        make_chunks(count, start), compression=compression, part_size=PART, resume=point
    )
    sink = sink_for(s3_client, s3_bucket, "crashed.bin")
    completed = uploaded[: point.next_part - 1]
    resumed = drain(sink.resume(tail, upload_id=upload_id, completed=completed))

    reference = sink_for(s3_client, s3_bucket, "reference.bin").write(
        iter_parts(make_chunks(count), compression=compression, part_size=PART)
    )
    assert resumed.sha256 == reference.sha256
    assert resumed.size == reference.size
    assert stored(s3_client, s3_bucket, "crashed.bin") == stored(
        s3_client, s3_bucket, "reference.bin"
    )
    assert open_uploads(s3_client, s3_bucket) == []


def test_resume_with_a_wrong_record_aborts_the_upload(s3_client: S3Client, s3_bucket: str) -> None:
    client: S3Client = s3_client
    upload_id = client.create_multipart_upload(Bucket=s3_bucket, Key="x.bin")["UploadId"]
    sink = sink_for(client, s3_bucket, "x.bin")
    ghost = UploadedPart(1, PART, "0" * 64, '"nope"', None)
    with pytest.raises(PermanentError, match="not stored"):
        drain(sink.resume([], upload_id=upload_id, completed=[ghost]))
    assert open_uploads(client, s3_bucket) == []
