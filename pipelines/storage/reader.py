"""Stream a stored export back: raw bytes from S3 or a file, and its content across frames.

Reads in bounded pieces (never a whole object in memory) and detects the compression from the
first bytes when the caller does not know it. Used by verification, restore and resumed uploads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Final

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.compression.decoding import detect_compression, iter_decompressed
from pipelines.errors import PermanentError, RetryableError
from pipelines.storage.s3_errors import translate_s3_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Bytes per read: large enough to amortise call overhead, small enough to stay bounded.
READ_BYTES: Final = 1024 * 1024


def iter_object_bytes(
    client: S3Client, *, bucket: str, key: str, piece_bytes: int = READ_BYTES
) -> Iterator[bytes]:
    """Yield the stored bytes of an S3 object in pieces."""
    action = f"GetObject s3://{bucket}/{key}"
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(piece_bytes)
        finally:
            body.close()
    except (BotoCoreError, ClientError) as exc:
        raise translate_s3_error(exc, action) from exc


def iter_file_bytes(path: Path, *, piece_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """Yield the bytes of a local file in pieces."""
    try:
        with path.open("rb") as handle:
            while piece := handle.read(piece_bytes):
                yield piece
    except FileNotFoundError as exc:
        raise PermanentError(f"{path} does not exist") from exc
    except OSError as exc:
        raise RetryableError(f"reading {path} failed: {exc}") from exc


def iter_content(blobs: Iterable[bytes], compression: str | None = None) -> Iterator[bytes]:
    """Yield the uncompressed content of stored bytes, detecting the compression if not given."""
    stream = iter(blobs)
    if compression is None:
        first = next(stream, b"")
        compression = detect_compression(first)
        stream = chain([first], stream)
    return iter_decompressed(stream, compression)
