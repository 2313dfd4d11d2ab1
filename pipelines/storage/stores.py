"""Where an export's files go: a local directory or an S3 prefix, behind one small interface.

A store hands out a sink per data object and writes the small companion files (manifest,
SHA256SUMS) whole. Chosen by the target's address: `s3://bucket/prefix/` or a local path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.parts import MIN_PART_SIZE_BYTES
from pipelines.storage.s3_errors import translate_s3_error
from pipelines.storage.s3_sink import S3MultipartSink
from pipelines.storage.sinks import LocalFileSink, Sink, SummaryFn

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class ExportStore(Protocol):
    """Somewhere to write one export's objects."""

    @property
    def location(self) -> str: ...

    def sink(
        self,
        name: str,
        *,
        content_type: str,
        part_size: int,
        max_size: int | None,
        summary: SummaryFn | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Sink: ...

    def put_bytes(self, name: str, data: bytes, *, content_type: str) -> None: ...


class LocalStore:
    """An export written into a local directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @property
    def location(self) -> str:
        """Return the directory path."""
        return str(self._directory)

    def sink(
        self,
        name: str,
        *,
        content_type: str,
        part_size: int,
        max_size: int | None,
        summary: SummaryFn | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Sink:
        """Return a sink that publishes `name` in the directory by atomic rename."""
        del content_type, part_size, summary, on_upload_started  # a file needs none of them
        self._directory.mkdir(parents=True, exist_ok=True)
        return LocalFileSink(self._directory / name, max_size=max_size)

    def put_bytes(self, name: str, data: bytes, *, content_type: str) -> None:
        """Write a small file atomically."""
        del content_type
        self._directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self._directory, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as output:
                output.write(data)
                output.flush()
                os.fsync(output.fileno())
            Path(temporary).replace(self._directory / name)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class S3Store:
    """An export written under a key prefix of a bucket."""

    def __init__(
        self,
        client: S3Client,
        *,
        bucket: str,
        prefix: str,
        min_part_size: int = MIN_PART_SIZE_BYTES,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self._min_part_size = min_part_size

    @property
    def location(self) -> str:
        """Return the prefix as s3://bucket/prefix/."""
        return f"s3://{self._bucket}/{self._prefix}"

    @property
    def bucket(self) -> str:
        """Return the bucket name."""
        return self._bucket

    def key(self, name: str) -> str:
        """Return the object key of `name` under this store's prefix."""
        return self._prefix + name

    def sink(
        self,
        name: str,
        *,
        content_type: str,
        part_size: int,
        max_size: int | None,
        summary: SummaryFn | None = None,
        on_upload_started: Callable[[str], None] | None = None,
    ) -> Sink:
        """Return a multipart sink for `name`."""
        return S3MultipartSink(
            self._client,
            bucket=self._bucket,
            key=self.key(name),
            part_size=part_size,
            content_type=content_type,
            max_size=max_size,
            min_part_size=self._min_part_size,
            summary=summary,
            on_upload_started=on_upload_started,
        )

    def put_bytes(self, name: str, data: bytes, *, content_type: str) -> None:
        """Store a small object with one PUT."""
        try:
            self._client.put_object(
                Bucket=self._bucket, Key=self.key(name), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise translate_s3_error(exc, f"PutObject {self.location}{name}") from exc
