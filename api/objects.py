"""The bucket as downloads see it: presigned GET URLs, or an object streamed in bounded pieces.

The only API module that talks to S3; botocore errors are translated here. Opening an object
asks S3 for it before the response starts, so a missing object is a clear answer, not a broken
stream; the body is then read one `STREAM_CHUNK_BYTES` piece at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.errors import PermanentError
from pipelines.storage.s3_errors import translate_s3_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Pieces a streamed download is read and sent in: small enough that many concurrent downloads
# stay within a worker's memory, large enough that per-piece overhead is negligible.
STREAM_CHUNK_BYTES = 256 * 1024


class ObjectMissingError(PermanentError):
    """The object a completed export points at is not in the bucket."""


@dataclass(frozen=True)
class Download:
    """How to hand one object to a client: its key, file name and media type."""

    key: str
    filename: str
    content_type: str
    expires_in_seconds: int


@dataclass
class OpenedObject:
    """An object whose body is ready to stream; `close()` it if it will not be streamed."""

    size_bytes: int
    chunks: Iterator[bytes]
    close: Callable[[], None] = lambda: None


class ObjectStore(Protocol):
    """What the download endpoint needs from the bucket."""

    def presign(self, download: Download) -> str:
        """Return a presigned GET URL for the object."""

    def open(self, key: str) -> OpenedObject:
        """Start reading the object; raise ObjectMissingError if it is gone."""


def _chunks(body: object, chunk_bytes: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_bytes)  # type: ignore[attr-defined]
    finally:
        body.close()  # type: ignore[attr-defined]


class S3ObjectStore:
    """Downloads from one S3 bucket."""

    def __init__(
        self, client: S3Client, *, bucket: str, chunk_bytes: int = STREAM_CHUNK_BYTES
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._chunk_bytes = chunk_bytes

    def presign(self, download: Download) -> str:
        """Return a presigned GET URL that also names the file and its media type."""
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self._bucket,
                    "Key": download.key,
                    "ResponseContentDisposition": f'attachment; filename="{download.filename}"',
                    "ResponseContentType": download.content_type,
                },
                ExpiresIn=download.expires_in_seconds,
            )
        except (BotoCoreError, ClientError) as exc:
            raise translate_s3_error(exc, f"presign {download.key}") from exc
        return url

    def open(self, key: str) -> OpenedObject:
        """Start a GET of the object and return its size and a stream of its bytes."""
        try:
            answer = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissingError(f"{key} is not in the bucket") from exc
            raise translate_s3_error(exc, f"GetObject {key}") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, f"GetObject {key}") from exc
        body = answer["Body"]
        return OpenedObject(
            size_bytes=int(answer["ContentLength"]),
            chunks=_chunks(body, self._chunk_bytes),
            close=body.close,
        )
