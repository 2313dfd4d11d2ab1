"""Where export parts go: the sink interface, its result types, and the local and null sinks.

A sink pulls parts from the `iter_parts` stage and stores them. `upload(parts)` is a generator that
yields one `UploadedPart` per stored part (so the caller can record progress for a resume) and
returns the `StoredObject`; `write(parts)` drives it to the end. Nothing half-written is ever
visible: a local file appears by atomic rename, an S3 object by completing its upload.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pipelines.digests import DigestSummary
from pipelines.errors import PermanentError, RetryableError, SizeLimitError
from pipelines.parts import Part, ResumePoint

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Content types for compressed exports: the object is the compressed file itself.
COMPRESSED_CONTENT_TYPES = {"gzip": "application/gzip", "zstd": "application/zstd"}
SIDECAR_SUFFIX = ".sha256"
# File errors no retry can fix; others (a full disk, an I/O error) may pass.
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EROFS}
)


@dataclass(frozen=True, slots=True)
class UploadedPart:
    """A part the sink has stored: what a resume needs to trust it and carry on after it."""

    number: int
    size: int
    sha256: str
    etag: str | None
    resume: ResumePoint | None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A finished object. `sha256` is None when the sink never saw every stored byte."""

    location: str
    size: int
    parts: tuple[UploadedPart, ...]
    upload_id: str | None
    etag: str | None
    sha256: str | None


class Sink(Protocol):
    """Store one object's parts."""

    def upload(self, parts: Iterable[Part]) -> Generator[UploadedPart, None, StoredObject]: ...

    def write(self, parts: Iterable[Part]) -> StoredObject: ...


def drain(progress: Generator[T, None, StoredObject]) -> StoredObject:
    """Run a sink's upload generator to the end and return its object."""
    while True:
        try:
            next(progress)
        except StopIteration as stop:
            result: StoredObject = stop.value
            return result


def content_headers(compression: str, content_type: str) -> tuple[str, str | None]:
    """Return the Content-Type and Content-Encoding for an export object.

    A compressed export is served as the compressed file (application/gzip, application/zstd)
    with no Content-Encoding: with `Content-Encoding: gzip` browsers and HTTP clients decode on
    download and save plain bytes under a `.gz` name whose SHA-256 no longer matches SHA256SUMS.
    """
    if compression == "none":
        return content_type, None
    return COMPRESSED_CONTENT_TYPES[compression], None


def sidecar_text(sha256: str, name: str) -> bytes:
    """Return a one-line checksum file in the format `sha256sum -c` reads."""
    return f"{sha256}  {name}\n".encode()


def check_size(total: int, max_size: int | None) -> None:
    """Raise SizeLimitError when `total` stored bytes exceed the configured maximum."""
    if max_size is not None and total > max_size:
        raise SizeLimitError(
            f"the export grew past EXPORT_MAX_SIZE: more than {max_size} bytes would be stored"
        )


class NullSink:
    """Count parts and bytes and store nothing: for benchmarks and dry runs."""

    def __init__(self) -> None:
        self.parts = 0
        self.bytes = 0

    def upload(self, parts: Iterable[Part]) -> Generator[UploadedPart, None, StoredObject]:
        """Count each part and yield it as stored."""
        uploaded = []
        for part in parts:
            self.parts += 1
            self.bytes += len(part.data)
            done = UploadedPart(part.number, len(part.data), part.sha256, None, part.resume)
            uploaded.append(done)
            yield done
        return StoredObject("null:", self.bytes, tuple(uploaded), None, None, None)

    def write(self, parts: Iterable[Part]) -> StoredObject:
        """Count every part."""
        return drain(self.upload(parts))


class LocalFileSink:
    """Write an object to a local file: temp file, fsync, atomic rename, nothing half-written."""

    def __init__(
        self,
        path: Path,
        *,
        max_size: int | None = None,
        sidecar: bool = False,
    ) -> None:
        self._path = path
        self._max_size = max_size
        self._sidecar = sidecar

    def upload(self, parts: Iterable[Part]) -> Generator[UploadedPart, None, StoredObject]:
        """Write parts to a temporary file and rename it into place once all are written."""
        uploaded = []
        digest = hashlib.sha256()
        size = 0
        with _atomic_file(self._path) as handle:
            for part in parts:
                check_size(size + len(part.data), self._max_size)
                _write_all(handle, part.data)
                digest.update(part.data)
                size += len(part.data)
                done = UploadedPart(part.number, len(part.data), part.sha256, None, part.resume)
                uploaded.append(done)
                yield done
        sha256 = digest.hexdigest()
        if self._sidecar:
            sidecar = self._path.with_name(self._path.name + SIDECAR_SUFFIX)
            with _atomic_file(sidecar) as handle:
                _write_all(handle, sidecar_text(sha256, self._path.name))
        return StoredObject(str(self._path), size, tuple(uploaded), None, None, sha256)

    def write(self, parts: Iterable[Part]) -> StoredObject:
        """Write every part and publish the file."""
        return drain(self.upload(parts))


def _write_all(handle: int, data: bytes) -> None:
    """Write all of `data` to a file descriptor."""
    view = memoryview(data)
    while view:
        written = os.write(handle, view)
        view = view[written:]


@contextlib.contextmanager
def _atomic_file(path: Path) -> Generator[int, None, None]:
    """Yield a descriptor of a temp file beside `path`; fsync and rename it there on success."""
    try:
        handle, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise PermanentError(f"cannot create a file beside {path}: {exc}") from exc
    try:
        try:
            yield handle
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temp_name, path)
        _fsync_directory(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        if isinstance(exc, OSError):
            kind = PermanentError if exc.errno in _PERMANENT_ERRNOS else RetryableError
            raise kind(f"writing {path} failed: {exc}") from exc
        raise


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def summary_metadata(summary: DigestSummary) -> dict[str, str]:
    """Return the digests as S3 user metadata (x-amz-meta-*)."""
    return {
        "sha256": summary.stored_sha256,
        "content-sha256": summary.content_sha256,
        "content-bytes": str(summary.content_bytes),
        "records": str(summary.records),
        "compression": summary.compression,
    }


SummaryFn = Callable[[], DigestSummary]
