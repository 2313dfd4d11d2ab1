"""The bucket as downloads see it: presigned GET URLs, or an object streamed in bounded pieces.

The only API module that talks to S3; botocore errors are translated here. Opening an object
asks S3 for it before the response starts, so a missing object or a range outside it is a clear
answer, not a broken stream; the body is then read one `STREAM_CHUNK_BYTES` piece at a time. A
byte range is S3's own ranged GET, and `If-Range` is its `If-Match` on the same request.
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
# What S3 servers answer for a key that is not there (HEAD has no body, so only the status).
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class ObjectMissingError(PermanentError):
    """The object a completed export points at is not in the bucket."""


class RangeNotSatisfiableError(PermanentError):
    """The requested byte range lies outside the object, which holds `size_bytes`."""

    def __init__(self, message: str, *, size_bytes: int) -> None:
        super().__init__(message)
        self.size_bytes = size_bytes


class ValidatorChangedError(PermanentError):
    """The object's entity tag is not the one the client's `If-Range` names."""


@dataclass(frozen=True)
class Download:
    """How to hand one object to a client: its key, file name and media type."""

    key: str
    filename: str
    content_type: str
    expires_in_seconds: int


@dataclass
class OpenedObject:
    """An object (or one range of it) whose body is ready to stream; `close()` it if it will not
    be streamed. `content_range` is set when the body is a range of the object."""

    size_bytes: int
    chunks: Iterator[bytes]
    close: Callable[[], None] = lambda: None
    etag: str | None = None
    content_range: str | None = None


class ObjectStore(Protocol):
    """What the download endpoint needs from the bucket."""

    def presign(self, download: Download) -> str:
        """Return a presigned GET URL for the object."""

    def open(
        self, key: str, *, byte_range: str | None = None, if_match: str | None = None
    ) -> OpenedObject:
        """Start reading the object, or the `byte_range` of it (a `Range` header value) when its
        entity tag is `if_match` (any tag when None); raise ObjectMissingError if it is gone,
        RangeNotSatisfiableError or ValidatorChangedError for a range that cannot be served."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


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

    def open(
        self, key: str, *, byte_range: str | None = None, if_match: str | None = None
    ) -> OpenedObject:
        """Start a GET of the object (or of its range) and return its size and a byte stream."""
        extra: dict[str, str] = {}
        if byte_range is not None:
            extra["Range"] = byte_range
            if if_match is not None:
                extra["IfMatch"] = if_match
        try:
            answer = self._client.get_object(Bucket=self._bucket, Key=key, **extra)  # type: ignore[arg-type]
        except ClientError as exc:
            code = _error_code(exc)
            if code in MISSING_CODES:
                raise ObjectMissingError(f"{key} is not in the bucket") from exc
            if code in {"InvalidRange", "416"}:
                size = self._size(key)
                raise RangeNotSatisfiableError(
                    f"{byte_range} is outside {key}", size_bytes=size
                ) from exc
            if code in {"PreconditionFailed", "412"}:
                raise ValidatorChangedError(f"{key} no longer has the tag {if_match}") from exc
            raise translate_s3_error(exc, f"GetObject {key}") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, f"GetObject {key}") from exc
        body = answer["Body"]
        return OpenedObject(
            size_bytes=int(answer["ContentLength"]),
            chunks=_chunks(body, self._chunk_bytes),
            close=body.close,
            etag=answer.get("ETag"),
            content_range=answer.get("ContentRange") if byte_range is not None else None,
        )

    def _size(self, key: str) -> int:
        """Return the object's size in bytes."""
        try:
            return int(self._client.head_object(Bucket=self._bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _error_code(exc) in MISSING_CODES:
                raise ObjectMissingError(f"{key} is not in the bucket") from exc
            raise translate_s3_error(exc, f"HeadObject {key}") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, f"HeadObject {key}") from exc
