"""The S3 multipart sink: R2-safe uploads that abort on any failure and can resume after a crash.

Every non-final part must be exactly the part size (R2 answers InvalidPart at completion
otherwise), so the sink refuses a short part that is not the last before sending anything more.
A whole object that fits in one part goes up as a single PUT carrying its digests as metadata;
a multipart object gets its final digests in a `<key>.sha256` sidecar, since metadata is fixed at
CreateMultipartUpload. Any failure, KeyboardInterrupt or generator close aborts the upload, unless
the caller's `abort_on_error` says the upload now belongs to someone else (a worker fenced out by
a new lease holder must leave the upload that holder is resuming). Right before the object becomes
visible (CompleteMultipartUpload, or the single PUT) the caller's `before_complete` runs: when it
raises, the sink neither completes nor aborts, and leaves the upload to its new owner. Resuming
answers UploadGoneError, before reading anything, when the upload was aborted or completed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.compression.decoding import detect_compression
from pipelines.digests import digest_stored
from pipelines.errors import PermanentError, RetryableError, SizeLimitError
from pipelines.parts import MAX_PART_SIZE_BYTES, MAX_PARTS, MIN_PART_SIZE_BYTES, Part
from pipelines.storage.reader import iter_object_bytes
from pipelines.storage.s3_errors import (
    UploadGoneError,
    is_upload_gone,
    translate_s3_error,
    translate_upload_error,
)
from pipelines.storage.sinks import (
    SIDECAR_SUFFIX,
    StoredObject,
    SummaryFn,
    UploadedPart,
    check_size,
    drain,
    sidecar_text,
    summary_metadata,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# ListParts pages hold at most 1,000 parts.
LIST_PARTS_PAGE: Final = 1000


class S3MultipartSink:
    """Upload one object to S3 or R2 from a stream of exact-size parts."""

    def __init__(
        self,
        client: S3Client,
        *,
        bucket: str,
        key: str,
        part_size: int,
        content_type: str,
        content_encoding: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_size: int | None = None,
        min_part_size: int = MIN_PART_SIZE_BYTES,
        summary: SummaryFn | None = None,
        sidecar: bool = True,
        on_upload_started: Callable[[str], None] | None = None,
        abort_on_error: Callable[[BaseException], bool] | None = None,
        before_complete: Callable[[], None] | None = None,
    ) -> None:
        if not min_part_size <= part_size <= MAX_PART_SIZE_BYTES:
            raise PermanentError(
                f"part size {part_size} is outside {min_part_size}..{MAX_PART_SIZE_BYTES} bytes"
            )
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._headers: dict[str, Any] = {"ContentType": content_type}
        if content_encoding:
            self._headers["ContentEncoding"] = content_encoding
        self._metadata = dict(metadata or {})
        self._max_size = max_size
        self._summary = summary
        self._sidecar = sidecar
        self._on_upload_started = on_upload_started
        self._abort_on_error = abort_on_error
        self._before_complete = before_complete

    @property
    def location(self) -> str:
        """Return the object's address as s3://bucket/key."""
        return f"s3://{self._bucket}/{self._key}"

    def write(self, parts: Iterable[Part]) -> StoredObject:
        """Upload every part and complete the object."""
        return drain(self.upload(parts))

    def upload(self, parts: Iterable[Part]) -> Generator[UploadedPart, None, StoredObject]:
        """Upload parts (single PUT if there is only one), yielding each once it is stored."""
        stream = iter(parts)
        first = next(stream, None)
        if first is None:
            raise PermanentError("an object needs at least one part")
        second = next(stream, None)
        if second is None:
            return self._put_single(first)
        upload_id = self._call("CreateMultipartUpload", self._create)
        if self._on_upload_started is not None:
            try:
                self._on_upload_started(upload_id)
            except BaseException:
                # The id was never recorded, so nobody else can own this upload: always abort.
                self._abort(upload_id)
                raise
        stored = yield from self._upload_rest(upload_id, chain([first, second], stream), [])
        return self._finish(stored, digested=True)

    def resume(
        self, parts: Iterable[Part], *, upload_id: str, completed: Sequence[UploadedPart]
    ) -> Generator[UploadedPart, None, StoredObject]:
        """Continue an upload after parts 1..N in `completed`; `parts` must start at N + 1.

        The recorded parts are checked against the server here, before the generator is
        returned and before `parts` is touched: UploadGoneError (the upload was aborted or
        completed) means nothing was read or stored, so the caller can start the object again.
        """
        kept = self._check_stored(upload_id, completed)
        return self._continue(upload_id, iter(parts), kept)

    def _check_stored(
        self, upload_id: str, completed: Sequence[UploadedPart]
    ) -> list[UploadedPart]:
        """Return `completed` in order once the server holds each part as recorded."""
        try:
            listed = {p["PartNumber"]: p for p in self._list_parts(upload_id)}
            kept = sorted(completed, key=lambda p: p.number)
            for index, done in enumerate(kept, start=1):
                found = listed.get(done.number)
                if done.number != index or found is None:
                    raise PermanentError(f"part {index} of upload {upload_id} is not stored")
                if found["Size"] != done.size or found["ETag"] != done.etag:
                    raise PermanentError(
                        f"part {done.number} of upload {upload_id} differs from the record"
                    )
        except (RetryableError, UploadGoneError):
            raise  # still resumable on the next attempt, or nothing left to abort
        except BaseException as error:
            self._abort_unless_handed_over(upload_id, error)
            raise
        return kept

    def _continue(
        self, upload_id: str, parts: Iterator[Part], kept: list[UploadedPart]
    ) -> Generator[UploadedPart, None, StoredObject]:
        stored = yield from self._upload_rest(upload_id, parts, kept)
        # A resumed run saw only the tail: digest the finished object by reading it back.
        return self._finish(stored, digested=False)

    def _create(self) -> str:
        answer = self._client.create_multipart_upload(
            Bucket=self._bucket, Key=self._key, Metadata=self._metadata, **self._headers
        )
        return answer["UploadId"]

    def _upload_rest(
        self, upload_id: str, parts: Iterator[Part], kept: list[UploadedPart]
    ) -> Generator[UploadedPart, None, StoredObject]:
        """Upload parts after `kept` and complete; abort on any failure or early close."""
        uploaded = list(kept)
        size = sum(p.size for p in kept)
        short: Part | None = None
        # Hash the object here only when nobody else does and every byte passes through.
        digest = hashlib.sha256() if self._summary is None and not kept else None
        try:
            for part in parts:
                self._check_part(part, expected=len(uploaded) + 1, short=short)
                if len(part.data) < self._part_size:
                    short = part
                check_size(size + len(part.data), self._max_size)
                etag = self._call("UploadPart", self._upload_part, upload_id, part)
                if digest is not None:
                    digest.update(part.data)
                done = UploadedPart(part.number, len(part.data), part.sha256, etag, part.resume)
                uploaded.append(done)
                size += len(part.data)
                yield done
        except BaseException as error:
            # GeneratorExit too: a consumer that stops early closes this generator.
            self._abort_unless_handed_over(upload_id, error)
            raise
        self._check_before_complete(f"upload {upload_id}")
        listing = [{"PartNumber": p.number, "ETag": p.etag} for p in uploaded]
        try:
            answer = self._call(
                "CompleteMultipartUpload",
                lambda: self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": listing},  # type: ignore[typeddict-item]
                ),
            )
        except BaseException as error:
            self._abort_unless_handed_over(upload_id, error)
            raise
        sha256 = digest.hexdigest() if digest is not None else None
        return StoredObject(
            self.location, size, tuple(uploaded), upload_id, answer.get("ETag"), sha256
        )

    def _check_part(self, part: Part, *, expected: int, short: Part | None) -> None:
        """Refuse anything R2 would reject at completion, before it is sent."""
        if short is not None:
            raise PermanentError(
                f"part {short.number} has {len(short.data)} bytes but is not the last; "
                f"R2 needs every non-final part to be exactly {self._part_size} bytes"
            )
        if len(part.data) > self._part_size:
            raise PermanentError(
                f"part {part.number} has {len(part.data)} bytes, over the {self._part_size} "
                "byte part size"
            )
        if part.number != expected:
            raise PermanentError(f"expected part {expected}, got part {part.number}")
        if part.number > MAX_PARTS:
            raise SizeLimitError(f"the export needs more than {MAX_PARTS} parts")

    def _upload_part(self, upload_id: str, part: Part) -> str:
        answer = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=upload_id,
            PartNumber=part.number,
            Body=part.data,
        )
        return answer["ETag"]

    def _put_single(self, part: Part) -> StoredObject:
        """Store a one-part object with a single PUT, digests included as metadata."""
        check_size(len(part.data), self._max_size)
        metadata = dict(self._metadata)
        if self._summary is not None:
            metadata.update(summary_metadata(self._summary()))
        self._check_before_complete("single PUT")
        answer = self._call(
            "PutObject",
            lambda: self._client.put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=part.data,
                Metadata=metadata,
                **self._headers,
            ),
        )
        done = UploadedPart(1, len(part.data), part.sha256, answer.get("ETag"), None)
        stored = StoredObject(self.location, len(part.data), (done,), None, done.etag, part.sha256)
        self._put_sidecar(part.sha256)
        return stored

    def _finish(self, stored: StoredObject, *, digested: bool) -> StoredObject:
        """Record the stored object's SHA-256 and write its sidecar."""
        sha256 = stored.sha256
        if digested and self._summary is not None:
            sha256 = self._summary().stored_sha256
        elif sha256 is None and self._sidecar:
            sha256 = self._read_back_sha256()
        if sha256 is not None:
            self._put_sidecar(sha256)
        return StoredObject(
            stored.location, stored.size, stored.parts, stored.upload_id, stored.etag, sha256
        )

    def _put_sidecar(self, sha256: str) -> None:
        if not self._sidecar:
            return
        name = self._key.rsplit("/", 1)[-1]
        self._call(
            "PutObject sidecar",
            lambda: self._client.put_object(
                Bucket=self._bucket,
                Key=self._key + SIDECAR_SUFFIX,
                Body=sidecar_text(sha256, name),
                ContentType="text/plain; charset=utf-8",
            ),
        )

    def _read_back_sha256(self) -> str:
        """Stream the finished object back and hash it."""
        blobs = iter_object_bytes(self._client, bucket=self._bucket, key=self._key)
        first = next(blobs, b"")
        summary = digest_stored(chain([first], blobs), compression=detect_compression(first))
        return summary.stored_sha256

    def _list_parts(self, upload_id: str) -> list[Any]:
        """Return every part the server holds for an upload."""
        found: list[Any] = []
        marker = 0
        while True:
            try:
                page = self._list_page(upload_id, marker)
            except (BotoCoreError, ClientError) as exc:
                raise translate_upload_error(exc, f"ListParts {self.location}") from exc
            found.extend(page.get("Parts", []))
            if not page.get("IsTruncated"):
                return found
            marker = int(page["NextPartNumberMarker"])

    def _list_page(self, upload_id: str, marker: int) -> Any:
        return self._client.list_parts(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=upload_id,
            MaxParts=LIST_PARTS_PAGE,
            PartNumberMarker=marker,
        )

    def _check_before_complete(self, what: str) -> None:
        """Run the caller's last check; if it raises, leave the object unwritten and re-raise."""
        if self._before_complete is None:
            return
        try:
            self._before_complete()
        except BaseException as error:
            logger.warning(
                "did not complete %s of %s (%s: %s); left as it is for its owner",
                what,
                self.location,
                type(error).__name__,
                error,
            )
            raise

    def _abort_unless_handed_over(self, upload_id: str, error: BaseException) -> None:
        """Abort after `error` unless `abort_on_error` says another owner continues the upload."""
        if self._abort_on_error is None or self._abort_on_error(error):
            self._abort(upload_id)
            return
        logger.info(
            "left multipart upload %s of %s open for its new owner (%s)",
            upload_id,
            self.location,
            type(error).__name__,
        )

    def _abort(self, upload_id: str) -> None:
        """Abort an upload; if that fails too, log the id so cleanup can abort the orphan."""
        try:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )
        except (BotoCoreError, ClientError) as exc:
            if is_upload_gone(exc):
                # Aborted already (closed twice, or by the attempt that gave it up) or completed.
                logger.info("multipart upload %s of %s is already gone", upload_id, self.location)
                return
            logger.warning(
                "could not abort multipart upload %s of %s; cleanup must abort it",
                upload_id,
                self.location,
                exc_info=True,
            )

    def _call(self, action: str, function: Callable[..., Any], *args: Any) -> Any:
        """Call boto3 and translate its errors."""
        try:
            return function(*args)
        except (BotoCoreError, ClientError) as exc:
            raise translate_s3_error(exc, f"{action} {self.location}") from exc
