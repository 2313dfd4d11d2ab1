"""The composition that writes one export object: rows → serializer → digests → parts → sink.

`write_object` pulls batches through the chosen serializer, hashes content and stored bytes as they
pass, cuts exact-size parts (frames ending at part boundaries when compressed) and hands them to a
sink. Reading, serializing and compressing run on three threads joined by short queues, so the
database, the serializer and compression, hashing and upload (which release the GIL) overlap; the
stages and their order are unchanged, so the bytes are too. Memory is one part plus a few batches.
`write_user_export` adds the manifest and `SHA256SUMS` beside the object. The caller owns the
database transaction and the sink's storage.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, TypeVar

from pipelines.digests import DigestSummary, DigestTracker
from pipelines.manifest import Manifest, ManifestObject, object_name
from pipelines.options import ExportOptions
from pipelines.parts import iter_parts
from pipelines.records import ExportHeader, SourceBatch, export_tables
from pipelines.serializers import ENCODERS, Chunk, ResumePoint
from pipelines.storage.sinks import Sink, StoredObject, SummaryFn, UploadedPart

logger = logging.getLogger(__name__)

GENERATOR_NAME = "data-export"
GENERATOR_VERSION = "0.1.0"

# Chunks (about one batch each, ~1 MB) queued between the serializing and the compressing thread:
# enough to ride out jitter on either side, few enough that memory stays a few batches.
HANDOFF_CHUNKS: Final = 4
# Batches read ahead of the serializer: the database produces the next while this one is
# serialized (COPY stops sending while the socket is full). Two keep it busy.
PREFETCH_BATCHES: Final = 2
# How often a producer blocked on a full queue checks whether the consumer has gone away.
HANDOFF_POLL_SECONDS: Final = 0.1

T = TypeVar("T")


@dataclass(frozen=True)
class _Finished:
    """The producer's last word: the error that stopped it, or None at the end of the stream."""

    error: BaseException | None


@dataclass(frozen=True)
class ExportCursor:
    """Where an interrupted export restarts: the source's position and the serializer's state."""

    source: object
    serializer: ResumePoint | None


@dataclass(frozen=True)
class WrittenObject:
    """One stored object and what the writer measured while writing it."""

    name: str
    stored: StoredObject
    digests: DigestSummary
    counts: dict[str, int]
    part_size: int
    seconds: float

    def manifest_entry(self, *, user_range: dict[str, str | None] | None = None) -> ManifestObject:
        """Return this object as the manifest lists it."""
        return ManifestObject(
            name=self.name,
            size_bytes=self.digests.stored_bytes,
            sha256=self.stored.sha256 or self.digests.stored_sha256,
            content_sha256=self.digests.content_sha256,
            content_bytes=self.digests.content_bytes,
            records=self.counts,
            part_size_bytes=self.part_size,
            parts=len(self.stored.parts),
            user_range=user_range,
        )


def make_header(
    *, export_id: str, export_type: str, options: ExportOptions, snapshot_time: datetime
) -> ExportHeader:
    """Return the header an export states about itself."""
    return ExportHeader(
        export_id=export_id,
        export_type="bulk" if export_type == "bulk" else "user",
        snapshot_time=snapshot_time,
        generator_name=GENERATOR_NAME,
        generator_version=GENERATOR_VERSION,
        options=options.as_json(),
    )


def write_object(
    batches: Iterable[SourceBatch],
    *,
    name: str,
    options: ExportOptions,
    header: ExportHeader,
    open_sink: Callable[[SummaryFn], Sink],
    part_size: int,
    level: int | None = None,
    on_part: Callable[[UploadedPart], None] | None = None,
) -> WrittenObject:
    """Serialize, compress, digest and store one object, reporting each stored part.

    `open_sink` receives the digest summary callable, so a sink that stores the object in one
    request can attach the final digests to it.
    """
    started = time.monotonic()
    tables = export_tables(options.include_system_fields)
    counts = {table.name: 0 for table in tables}
    encoder = ENCODERS[options.format]
    tracker = DigestTracker(compression=options.compression)

    prefetched = handed_off(batches, depth=PREFETCH_BATCHES)
    chunks = encoder(
        prefetched, tables=tables, header=header, include_metadata=options.include_metadata
    )
    handoff = handed_off(with_export_cursors(chunks, counts))
    parts = iter_parts(
        tracker.chunks(handoff),
        compression=options.compression,
        level=level,
        part_size=part_size,
    )
    try:
        progress = open_sink(tracker.summary).upload(tracker.parts(parts))
        while True:
            try:
                uploaded = next(progress)
            except StopIteration as stop:
                stored: StoredObject = stop.value
                break
            if on_part is not None:
                on_part(uploaded)
    finally:
        # Stop and join both threads, serializer first, before the caller touches the
        # connection again.
        handoff.close()
        prefetched.close()
    digests = tracker.summary()
    seconds = time.monotonic() - started
    logger.info(
        "export %s: wrote %s (%d bytes, %d records, %d parts) in %.2f s",
        header.export_id,
        name,
        digests.stored_bytes,
        digests.records,
        digests.parts,
        seconds,
    )
    return WrittenObject(
        name=name,
        stored=stored,
        digests=digests,
        counts=counts,
        part_size=part_size,
        seconds=seconds,
    )


def with_export_cursors(chunks: Iterable[Chunk], counts: dict[str, int]) -> Iterator[Chunk]:
    """Pack each chunk's serializer state beside its source cursor, keeping `counts` current.

    A part's resume point carries the cursor of the chunk it ends after; with the serializer's
    own resume state packed beside the source position, one cursor restarts both.
    """
    for chunk in chunks:
        if chunk.resume is not None:
            counts.update(chunk.resume.counts)
        if chunk.cursor is None:
            yield chunk
        else:
            yield replace(chunk, cursor=ExportCursor(chunk.cursor, chunk.resume))


def handed_off(items: Iterable[T], *, depth: int = HANDOFF_CHUNKS) -> Generator[T, None, None]:
    """Yield `items`, produced on a background thread up to `depth` ahead of the consumer.

    The producer's exception is raised here; closing this generator stops the producer, closes
    its iterator on its own thread and joins it.
    """
    handover: queue.Queue[T | _Finished] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: T | _Finished) -> bool:
        while not stop.is_set():
            try:
                handover.put(item, timeout=HANDOFF_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_Finished(None))
        except BaseException as exc:  # handed to the consumer and raised there
            put(_Finished(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="export-stage", daemon=True)
    thread.start()
    try:
        while True:
            item = handover.get()
            if isinstance(item, _Finished):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def user_object_name(options: ExportOptions) -> str:
    """Return the file name of a user export's single object."""
    return object_name("export", options.format, options.compression)


def build_manifest(
    *,
    header: ExportHeader,
    options: ExportOptions,
    objects: Iterable[ManifestObject],
    extra: dict[str, object] | None = None,
) -> Manifest:
    """Return the manifest describing an export's objects."""
    return Manifest(
        export_id=header.export_id,
        export_type=header.export_type,
        format=options.format,
        compression=options.compression,
        created_at=datetime.now(UTC).isoformat(),
        snapshot_time=header.snapshot_time.isoformat(),
        options=options.as_json(),
        objects=list(objects),
        generator=f"{GENERATOR_NAME} {GENERATOR_VERSION}",
        extra=extra or {},
    )
