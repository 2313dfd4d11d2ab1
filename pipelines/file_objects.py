"""Check that the file objects an export's `files` records point at exist in the bucket, intact.

`FileObjectChecker` takes `files` records as verification reads them and hands them through a
bounded queue to a fixed pool of threads that HEAD each object: it must exist with the recorded
size, and its SHA-256 must match when the object carries one (metadata `sha256` or a full-object
`ChecksumSHA256`), or, with `deep`, when its bytes are streamed and hashed. Memory is the queue
plus the problems kept, never the list of keys. Only `S3ObjectInspector` talks to storage.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.errors import ExportError, RetryableError
from pipelines.records import Record, Table
from pipelines.storage.reader import iter_object_bytes
from pipelines.storage.s3_errors import translate_s3_error
from pipelines.verification_problems import Problem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# Threads issuing HEADs at once; the shared S3 client pools 16 connections.
DEFAULT_WORKERS: Final = 16
# Records waiting per worker: enough to keep every thread busy, small enough to stay bounded.
QUEUE_PER_WORKER: Final = 8
# Problems kept per code; beyond this only the count grows, so a bucket that lost everything
# does not turn the report into millions of lines.
LISTED_PER_CODE: Final = 1000

FILE_OBJECT_MISSING: Final = "file-object-missing"
FILE_OBJECT_SIZE_MISMATCH: Final = "file-object-size-mismatch"
FILE_OBJECT_SHA256_MISMATCH: Final = "file-object-sha256-mismatch"
FILE_OBJECT_UNREADABLE: Final = "file-object-unreadable"
FILE_RECORD_INVALID: Final = "file-record-invalid"
NO_OBJECT_KEYS_NOTE: Final = "file objects not checked: export has no object keys"
_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True, slots=True)
class FileRef:
    """What a `files` record says about its object."""

    file_id: str
    object_key: str
    size_bytes: int
    sha256: str | None


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a HEAD tells about an object: its size and the SHA-256 it carries, if any."""

    size: int
    sha256: str | None


class ObjectInspector(Protocol):
    """Look at objects in a bucket."""

    def head(self, key: str) -> ObjectInfo | None: ...

    def sha256(self, key: str) -> str: ...


@dataclass
class FileCheckResult:
    """What checking file objects found: how many were checked, problems and notes."""

    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def omitted(self) -> int:
        """Return how many problems were counted but not listed."""
        return sum(self.problem_counts.values()) - len(self.problems)


class S3ObjectInspector:
    """HEAD and hash objects of one bucket."""

    def __init__(self, client: S3Client, *, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    @property
    def bucket(self) -> str:
        """Return the bucket name."""
        return self._bucket

    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's size and carried SHA-256, or None when it does not exist."""
        try:
            answer = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if str(error.get("Code", "")) in _NOT_FOUND_CODES or status == 404:
                return None
            raise translate_s3_error(exc, f"HeadObject s3://{self._bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, f"HeadObject s3://{self._bucket}/{key}") from exc
        return ObjectInfo(
            size=int(answer["ContentLength"]),
            sha256=carried_sha256(answer.get("Metadata", {}), answer.get("ChecksumSHA256")),
        )

    def sha256(self, key: str) -> str:
        """Stream the object and return the SHA-256 of its bytes."""
        digest = hashlib.sha256()
        for piece in iter_object_bytes(self._client, bucket=self._bucket, key=key):
            digest.update(piece)
        return digest.hexdigest()


def carried_sha256(metadata: Mapping[str, str], checksum: str | None) -> str | None:
    """Return the hex SHA-256 an object carries in metadata or as a full-object checksum."""
    stated = metadata.get("sha256", "").strip().lower()
    if len(stated) == 64 and all(char in "0123456789abcdef" for char in stated):
        return stated
    # A multipart object's checksum is a checksum of part checksums, marked "-N": not comparable.
    if checksum and "-" not in checksum:
        try:
            raw = base64.b64decode(checksum, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) == hashlib.sha256().digest_size:
            return raw.hex()
    return None


def file_ref(record: Record) -> FileRef | None:
    """Return what a `files` record says about its object, or None for other records."""
    if record.table.name != "files":
        return None
    columns = _columns(record.table)
    if columns is None:
        return None
    id_at, key_at, size_at, sha_at = columns
    values = record.values
    size_text = values[size_at]
    if values[key_at] is None or size_text is None or not size_text.lstrip("-").isdigit():
        raise ValueError(
            f"file {values[id_at]}: object key {values[key_at]!r} or size {size_text!r} unusable"
        )
    return FileRef(
        file_id=str(values[id_at]),
        object_key=str(values[key_at]),
        size_bytes=int(size_text),
        sha256=values[sha_at],
    )


# An export has one `files` layout; a few more cover readers that build tables afresh.
@functools.lru_cache(maxsize=16)
def _columns(table: Table) -> tuple[int, int, int, int] | None:
    """Return the positions of id, object_key, size_bytes and sha256, or None without keys."""
    names = table.column_names
    if "object_key" not in names:
        return None
    id_at, key_at = names.index("id"), names.index("object_key")
    return id_at, key_at, names.index("size_bytes"), names.index("sha256")


_STOP: Final = object()


class FileObjectChecker:
    """Check file objects on a pool of threads fed through a bounded queue; a context manager."""

    def __init__(
        self,
        inspector: ObjectInspector,
        *,
        bucket: str,
        workers: int = DEFAULT_WORKERS,
        deep: bool = False,
        listed_per_code: int = LISTED_PER_CODE,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker is needed")
        self._inspector = inspector
        self._bucket = bucket
        self._deep = deep
        self._listed_per_code = listed_per_code
        self._queue: queue.Queue[object] = queue.Queue(maxsize=workers * QUEUE_PER_WORKER)
        self._lock = threading.Lock()
        self._result = FileCheckResult()
        self._files_without_keys = 0
        self._failure: ExportError | None = None
        self._threads = [
            threading.Thread(target=self._work, name=f"file-objects-{n}", daemon=True)
            for n in range(workers)
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> FileObjectChecker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def submit(self, record: Record) -> None:
        """Queue the object of a `files` record for checking; blocks while the queue is full."""
        if self._failure is not None:
            raise self._failure
        try:
            ref = file_ref(record)
        except ValueError as exc:
            self._add(Problem(FILE_RECORD_INVALID, str(exc), None))
            return
        if ref is None:
            if record.table.name == "files":
                self._files_without_keys += 1
            return
        self._queue.put(ref)

    def finish(self) -> FileCheckResult:
        """Wait for every queued check and return the result; raise a retryable storage error."""
        self._stop()
        if self._failure is not None:
            raise self._failure
        if self._files_without_keys:
            self._result.notes.append(NO_OBJECT_KEYS_NOTE)
        return self._result

    def _stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if not isinstance(item, FileRef):
                return
            if self._failure is not None:
                continue  # drain the queue without more requests once storage is failing
            try:
                problem = self._check(item)
            except RetryableError as exc:
                logger.warning("checking file objects in %s failed: %s", self._bucket, exc)
                self._failure = exc
                continue
            except ExportError as exc:
                problem = Problem(
                    FILE_OBJECT_UNREADABLE,
                    f"file {item.file_id}: object {item.object_key} in bucket {self._bucket} "
                    f"could not be checked: {exc}",
                    None,
                    {"fileId": item.file_id, "objectKey": item.object_key},
                )
            with self._lock:
                self._result.checked += 1
            if problem is not None:
                self._add(problem)

    def _check(self, ref: FileRef) -> Problem | None:
        info = self._inspector.head(ref.object_key)
        where = f"file {ref.file_id}: object {ref.object_key} in bucket {self._bucket}"
        details: dict[str, object] = {"fileId": ref.file_id, "objectKey": ref.object_key}
        if info is None:
            return Problem(FILE_OBJECT_MISSING, f"{where} is missing", None, details)
        if info.size != ref.size_bytes:
            return Problem(
                FILE_OBJECT_SIZE_MISMATCH,
                f"{where} has {info.size} bytes, the files record says {ref.size_bytes}",
                None,
                details | {"expected": ref.size_bytes, "actual": info.size},
            )
        if ref.sha256 is None:
            return None
        actual = info.sha256
        if actual is None and self._deep:
            actual = self._inspector.sha256(ref.object_key)
        if actual is not None and actual != ref.sha256.lower():
            return Problem(
                FILE_OBJECT_SHA256_MISMATCH,
                f"{where} has SHA-256 {actual}, the files record says {ref.sha256}",
                None,
                details | {"expected": ref.sha256, "actual": actual},
            )
        return None

    def _add(self, problem: Problem) -> None:
        with self._lock:
            count = self._result.problem_counts.get(problem.code, 0) + 1
            self._result.problem_counts[problem.code] = count
            if count <= self._listed_per_code:
                self._result.problems.append(problem)
