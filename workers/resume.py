"""Write one export object so that a worker killed mid-upload can be continued by another.

While a fresh object streams, the upload id is recorded as soon as CreateMultipartUpload answers
and every stored part is recorded with its size, SHA-256, ETag and resume point (source position,
serializer state and the parts stage's offsets) in `export_upload_parts`, fenced by the lease.
A later attempt that finds an open upload continues after the last resumable recorded part with
`S3MultipartSink.resume`: frames end at part boundaries, so the tail is byte for byte what the
first run would have written. A resumed run saw only the tail, so its digests come from reading
the finished object back (`digest_stored`). An attempt that stops midway aborts its upload before
it returns, rather than when its generator is collected; one that finds its lease taken stops
without aborting: the new holder is continuing it. Right before the object is completed the
lease is renewed once more, fenced by the token, so a worker fenced out after its last part never
completes the upload its successor is resuming (nor overwrites the successor's object).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import psycopg
from psycopg.rows import dict_row

from pipelines.digests import digest_stored
from pipelines.export import ExportCursor, WrittenObject, with_export_cursors, write_object
from pipelines.manifest import content_type
from pipelines.options import ExportOptions
from pipelines.parts import Part, ResumePoint, iter_parts
from pipelines.records import ExportHeader, SourceBatch, export_tables
from pipelines.serializers import ENCODERS
from pipelines.serializers import ResumePoint as SerializerPoint
from pipelines.sources import SourcePosition
from pipelines.storage.reader import iter_object_bytes
from pipelines.storage.s3_sink import S3MultipartSink
from pipelines.storage.sinks import Sink, StoredObject, SummaryFn, UploadedPart, drain
from pipelines.storage.stores import S3Store
from workers.heartbeat import LeaseKeeper
from workers.state import Lease, LeaseLostError, record_part, renew, set_fields

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

OpenBatches = Callable[[SourcePosition | None], Iterable[SourceBatch]]


@dataclass(frozen=True)
class ObjectJob:
    """One object to write: where, in what form, and how it is cut."""

    name: str
    options: ExportOptions
    header: ExportHeader
    store: S3Store
    s3: S3Client
    part_size: int
    max_size: int | None
    level: int | None


@dataclass(frozen=True)
class RecordedPart:
    """A part some earlier attempt stored and recorded."""

    part: UploadedPart
    resumable: bool


def point_to_json(point: ResumePoint | None) -> dict[str, Any]:
    """Return a part's resume point as the JSON stored in `export_upload_parts`."""
    if point is None:
        return {"resumable": False}
    cursor = point.cursor
    source = serializer = None
    if isinstance(cursor, ExportCursor):
        if isinstance(cursor.source, SourcePosition):
            source = cursor.source.as_json()
        if cursor.serializer is not None:
            serializer = cursor.serializer.to_fields()
    return {
        "resumable": True,
        "source": source,
        "serializer": serializer,
        "next_part": point.next_part,
        "skip_bytes": point.skip_bytes,
        "stored_bytes": point.stored_bytes,
        "raw_bytes": point.raw_bytes,
        "records": point.records,
    }


def point_from_json(data: dict[str, Any]) -> ResumePoint | None:
    """Rebuild a resume point stored by `point_to_json`."""
    if not data.get("resumable"):
        return None
    cursor: ExportCursor | None = None
    if data["source"] is not None or data["serializer"] is not None:
        source = SourcePosition.from_json(data["source"]) if data["source"] else None
        serializer = SerializerPoint.from_fields(data["serializer"]) if data["serializer"] else None
        cursor = ExportCursor(source, serializer)
    return ResumePoint(
        cursor=cursor,
        next_part=int(data["next_part"]),
        skip_bytes=int(data["skip_bytes"]),
        stored_bytes=int(data["stored_bytes"]),
        raw_bytes=int(data["raw_bytes"]),
        records=int(data["records"]),
    )


def load_parts(conn: psycopg.Connection[Any], upload_id: str) -> list[RecordedPart]:
    """Return the recorded parts of an upload in part order (at most 10,000 small rows)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "SELECT part_number, size_bytes, sha256, etag, resume_cursor FROM export_upload_parts"
            " WHERE upload_id = %s ORDER BY part_number",
            (upload_id,),
        )
        rows = cursor.fetchall()
    found = []
    for row in rows:
        point = point_from_json(row["resume_cursor"])
        number, size = row["part_number"], row["size_bytes"]
        part = UploadedPart(number, size, row["sha256"], row["etag"], point)
        found.append(RecordedPart(part, point is not None))
    return found


def resumable_prefix(recorded: list[RecordedPart]) -> list[UploadedPart]:
    """Return parts 1..k up to the last resumable part of the unbroken run from part 1."""
    run: list[UploadedPart] = []
    for expected, item in enumerate(recorded, start=1):
        if item.part.number != expected:
            break
        run.append(item.part)
    while run and run[-1].resume is None:
        run.pop()
    return run


class PartLog:
    """Record the upload id and each stored part, fenced by the lease; check the lease each part."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        lease: Lease,
        keeper: LeaseKeeper,
        *,
        export_id: str,
        shard_id: str | None,
        lease_seconds: int,
        delay_seconds: float = 0.0,
    ) -> None:
        self._conn = conn
        self._lease = lease
        self._keeper = keeper
        self._export_id = export_id
        self._shard_id = shard_id
        self._lease_seconds = lease_seconds
        self._delay = delay_seconds
        self.upload_id: str | None = None
        self.lease_lost = False
        self._raw = 0
        self._records = 0

    def upload_started(self, upload_id: str) -> None:
        """Record a new multipart upload on the leased row before any part is sent."""
        self.upload_id = upload_id
        set_fields(self._conn, self._lease, {"multipart_upload_id": upload_id})

    def continue_after(self, point: ResumePoint, upload_id: str) -> None:
        """Continue counting after the parts an earlier attempt stored."""
        self.upload_id = upload_id
        self._raw = point.raw_bytes
        self._records = point.records

    def should_abort(self, error: BaseException) -> bool:
        """Return whether a failure aborts the upload: not once another worker holds the lease."""
        return not (self.lease_lost or isinstance(error, LeaseLostError))

    def confirm_lease(self) -> None:
        """Renew the lease with one fenced query right before completion; raise if it is gone."""
        try:
            self._keeper.check()
            # Renewing (not only reading) keeps the lease live for the completion call itself.
            renew(self._conn, self._lease, lease_seconds=self._lease_seconds)
        except LeaseLostError:
            self.lease_lost = True
            raise

    def part_stored(self, part: UploadedPart) -> None:
        """Record one stored part of the current multipart upload."""
        try:
            self._record(part)
        except LeaseLostError:
            self.lease_lost = True
            raise

    def _record(self, part: UploadedPart) -> None:
        self._keeper.check()
        if self.upload_id is None or part.etag is None:
            return  # a single-PUT object: nothing to resume
        raw = records = 0
        if part.resume is not None:
            raw, records = part.resume.raw_bytes - self._raw, part.resume.records - self._records
            self._raw, self._records = part.resume.raw_bytes, part.resume.records
        record_part(
            self._conn,
            self._lease,
            export_id=self._export_id,
            shard_id=self._shard_id,
            upload_id=self.upload_id,
            number=part.number,
            size=part.size,
            content_size=raw,
            records=records,
            sha256=part.sha256,
            etag=part.etag,
            resume=point_to_json(part.resume),
            lease_seconds=self._lease_seconds,
        )
        if self._delay:
            time.sleep(self._delay)  # test hook: WORKER_TEST_PART_DELAY_SECONDS


def write_fresh(batches: Iterable[SourceBatch], job: ObjectJob, log: PartLog) -> WrittenObject:
    """Write the object from the start, recording the upload and every part."""
    opened: list[_ClosingSink] = []

    def open_sink(summary: SummaryFn) -> Sink:
        sink = _ClosingSink(_sink(job, log, summary=summary, on_upload_started=log.upload_started))
        opened.append(sink)
        return sink

    try:
        return write_object(
            batches,
            name=job.name,
            options=job.options,
            header=job.header,
            open_sink=open_sink,
            part_size=job.part_size,
            level=job.level,
            on_part=log.part_stored,
        )
    finally:
        for sink in opened:
            sink.close()


def write_resumed(
    open_batches: OpenBatches,
    job: ObjectJob,
    log: PartLog,
    *,
    upload_id: str,
    kept: list[UploadedPart],
) -> WrittenObject:
    """Continue an upload after `kept` (ending at a resumable part) and complete the object.

    Raises UploadGoneError, having read and stored nothing, when the upload no longer exists.
    """
    started = time.monotonic()
    point = kept[-1].resume
    assert point is not None
    cursor = point.cursor if isinstance(point.cursor, ExportCursor) else None
    source = cursor.source if cursor is not None else None
    serializer = cursor.serializer if cursor is not None else None
    tables = export_tables(job.options.include_system_fields)
    counts = {table.name: 0 for table in tables}
    if serializer is not None:
        counts.update(serializer.counts)
    tail = {"records": 0}

    def tail_parts() -> Iterator[Part]:
        # Opened when the sink pulls its first part, after it has checked the recorded ones.
        chunks = ENCODERS[job.options.format](
            open_batches(cast(SourcePosition | None, source)),
            tables=tables,
            header=job.header,
            include_metadata=job.options.include_metadata,
            resume=serializer,
        )
        yield from iter_parts(
            with_export_cursors(chunks, counts),
            compression=job.options.compression,
            level=job.level,
            part_size=job.part_size,
            resume=point,
        )

    progress = _sink(job, log).resume(
        _counted(tail_parts(), tail), upload_id=upload_id, completed=kept
    )
    log.continue_after(point, upload_id)
    try:
        while True:
            try:
                uploaded = next(progress)
            except StopIteration as stop:
                stored = stop.value
                break
            log.part_stored(uploaded)
    finally:
        progress.close()  # abort now (unless handed over) if writing stopped midway
    records = point.records + tail["records"]
    blobs = iter_object_bytes(job.s3, bucket=job.store.bucket, key=job.store.key(job.name))
    digests = digest_stored(blobs, compression=job.options.compression, records=records)
    digests = replace(digests, parts=len(stored.parts))
    logger.info(
        "export %s: resumed %s after part %d of upload %s",
        job.header.export_id,
        job.name,
        len(kept),
        upload_id,
    )
    return WrittenObject(
        name=job.name,
        stored=stored,
        digests=digests,
        counts=counts,
        part_size=job.part_size,
        seconds=time.monotonic() - started,
    )


def _sink(
    job: ObjectJob,
    log: PartLog,
    *,
    summary: SummaryFn | None = None,
    on_upload_started: Callable[[str], None] | None = None,
) -> S3MultipartSink:
    """Return the object's sink: it completes only under the lease, and never aborts once lost."""
    return S3MultipartSink(
        job.s3,
        bucket=job.store.bucket,
        key=job.store.key(job.name),
        part_size=job.part_size,
        content_type=content_type(job.options.format, job.options.compression),
        max_size=job.max_size,
        summary=summary,
        on_upload_started=on_upload_started,
        abort_on_error=log.should_abort,
        before_complete=log.confirm_lease,
    )


class _ClosingSink:
    """A sink whose upload can be closed (aborting it, unless handed over) once writing stops.

    `write_object` leaves its upload generator to the garbage collector when an error is raised
    outside it (recording a part failed, Dramatiq's time limit): the abort would come at some
    later moment, after the attempt was settled, or never once the S3 client is gone.
    """

    def __init__(self, sink: S3MultipartSink) -> None:
        self._sink = sink
        self._progress: Generator[UploadedPart, None, StoredObject] | None = None

    def upload(self, parts: Iterable[Part]) -> Generator[UploadedPart, None, StoredObject]:
        """Start the upload, keeping its generator to close."""
        self._progress = self._sink.upload(parts)
        return self._progress

    def write(self, parts: Iterable[Part]) -> StoredObject:
        """Upload every part and complete the object."""
        return drain(self.upload(parts))

    def close(self) -> None:
        """Close the upload: a no-op once it completed, an abort if it stopped midway."""
        if self._progress is not None:
            self._progress.close()


def _counted(parts: Iterable[Part], tail: dict[str, int]) -> Iterator[Part]:
    """Count the records of the parts this run stores (skipped chunks were counted before)."""
    for part in parts:
        tail["records"] += part.records
        yield part
