"""The local-file and null sinks on a real filesystem, and S3 error translation."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from pipelines.errors import PermanentError, RetryableError, SizeLimitError
from pipelines.parts import iter_parts
from pipelines.storage.reader import iter_content, iter_file_bytes
from pipelines.storage.s3_errors import translate_s3_error
from pipelines.storage.sinks import LocalFileSink, NullSink, content_headers


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


def make_chunks(count: int) -> Iterator[Chunk]:
    for index in range(count):
        yield Chunk(f"{index},name {index},path/{index}\n".encode() * 50, index, 50)


def test_local_sink_publishes_the_file_and_a_checkable_sidecar(tmp_path: Path) -> None:
    target = tmp_path / "export.csv.zst"
    parts = iter_parts(make_chunks(2000), compression="zstd", part_size=4096)
    result = LocalFileSink(target, sidecar=True).write(parts)
    body = target.read_bytes()
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.size == len(body)
    expected = b"".join(c.data for c in make_chunks(2000))
    assert b"".join(iter_content(iter_file_bytes(target))) == expected
    check = subprocess.run(
        ["sha256sum", "-c", "export.csv.zst.sha256"], cwd=tmp_path, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.csv.zst", "export.csv.zst.sha256"]


def test_local_sink_failure_leaves_no_file(tmp_path: Path) -> None:
    def failing() -> Iterator[Chunk]:
        yield from make_chunks(500)
        raise PermanentError("source failed")

    with pytest.raises(PermanentError, match="source failed"):
        LocalFileSink(tmp_path / "out.csv").write(
            iter_parts(failing(), compression="none", part_size=1024)
        )
    assert list(tmp_path.iterdir()) == []


def test_local_sink_enforces_the_size_limit(tmp_path: Path) -> None:
    sink = LocalFileSink(tmp_path / "out.csv", max_size=10_000)
    with pytest.raises(SizeLimitError, match="EXPORT_MAX_SIZE"):
        sink.write(iter_parts(make_chunks(500), compression="none", part_size=1024))
    assert list(tmp_path.iterdir()) == []


def test_local_sink_closed_midway_leaves_no_file(tmp_path: Path) -> None:
    progress = LocalFileSink(tmp_path / "out.csv").upload(
        iter_parts(make_chunks(500), compression="none", part_size=1024)
    )
    next(progress)
    progress.close()
    assert list(tmp_path.iterdir()) == []


def test_local_sink_into_a_missing_folder_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot create"):
        LocalFileSink(tmp_path / "missing" / "out.csv").write(
            iter_parts(make_chunks(5), compression="none", part_size=1024)
        )


def test_null_sink_counts_parts_and_bytes() -> None:
    sink = NullSink()
    parts = list(iter_parts(make_chunks(300), compression="gzip", part_size=2048))
    result = sink.write(parts)
    assert sink.parts == len(parts) == len(result.parts)
    assert sink.bytes == sum(len(p.data) for p in parts) == result.size


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "UploadPart")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("SlowDown", 503), RetryableError),
        (client_error("InternalError", 500), RetryableError),
        (client_error("RequestTimeout", 400), RetryableError),
        (client_error("TooManyRequests", 429), RetryableError),
        (client_error("AccessDenied", 403), PermanentError),
        (client_error("InvalidPart", 400), PermanentError),
        (client_error("NoSuchUpload", 404), PermanentError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), RetryableError),
        (ParamValidationError(report="bad"), PermanentError),
    ],
)
def test_s3_errors_are_translated_by_kind(error: Exception, kind: type[Exception]) -> None:
    translated = translate_s3_error(error, "UploadPart s3://b/k")
    assert type(translated) is kind
    assert "UploadPart s3://b/k" in str(translated)


def test_compressed_exports_are_served_as_the_compressed_file() -> None:
    assert content_headers("none", "text/csv; charset=utf-8") == ("text/csv; charset=utf-8", None)
    assert content_headers("gzip", "text/csv") == ("application/gzip", None)
    assert content_headers("zstd", "application/json") == ("application/zstd", None)
