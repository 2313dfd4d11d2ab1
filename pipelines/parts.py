"""Cut a stream of serialized chunks into multipart parts of exactly the part size.

R2 rejects a multipart upload whose non-final parts differ in size, so every part but the last is
exactly `part_size` bytes. With gzip or zstd each part holds whole frames, padded to the part size
with format-level padding, so it decompresses on its own; frames end at fixed offsets of the
uncompressed stream, so the bytes written depend only on the content, not on chunk sizes.
Uncompressed output is cut at exact offsets. Either way each part records a `ResumePoint`: the
last cursor at or before its end plus the uncompressed bytes to drop after it, from which a fresh
run reproduces the rest of the object byte for byte. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from pipelines.compression.frames import FrameCodec, open_codec
from pipelines.errors import PermanentError, SizeLimitError

MIB: Final = 1024 * 1024
# Large enough that per-part request overhead vanishes, small enough to hold a few in memory.
DEFAULT_PART_SIZE_BYTES: Final = 8 * MIB
# S3 and R2 limits for non-final parts and part count.
MIN_PART_SIZE_BYTES: Final = 5 * MIB
MAX_PART_SIZE_BYTES: Final = 5 * 1024 * MIB
MAX_PARTS: Final = 10_000
# Uncompressed bytes compressed per step. A part is closed before a step that might overflow it,
# so the padding per part is at most about one unit: 16 KiB is 0.2 % of an 8 MiB part.
UNIT_BYTES: Final = 16 * 1024


class ChunkLike(Protocol):
    """What the parts stage reads from a serializer: bytes, a resume cursor, a record count."""

    @property
    def data(self) -> bytes: ...

    @property
    def cursor(self) -> object | None: ...

    @property
    def records(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a fresh run restarts so that it continues the object at part `next_part`.

    Restart the chunk stream just after `cursor` (from the very start when None) and pass this
    point to `iter_parts`: it drops the first `skip_bytes` uncompressed bytes (already in earlier
    parts) and numbers parts from `next_part`. The totals count everything in the earlier parts;
    `raw_bytes` is also the uncompressed offset where part `next_part` begins.
    """

    cursor: object | None
    next_part: int
    skip_bytes: int
    stored_bytes: int
    raw_bytes: int
    records: int


@dataclass(frozen=True, slots=True)
class Part:
    """One multipart part: exactly the part size unless it is the last."""

    number: int
    data: bytes
    raw_bytes: int
    records: int
    padding_bytes: int
    self_contained: bool
    resume: ResumePoint | None
    sha256: str

    @property
    def resume_cursor(self) -> object | None:
        """Return the source cursor at the end of this part, if the part is a resume point."""
        return self.resume.cursor if self.resume is not None else None


def choose_part_size(expected_bytes: int, minimum: int = DEFAULT_PART_SIZE_BYTES) -> int:
    """Return the smallest part size, in whole MiB and at least `minimum`, fitting 10,000 parts."""
    if expected_bytes > MAX_PARTS * MAX_PART_SIZE_BYTES:
        raise SizeLimitError(
            f"an object of {expected_bytes} bytes cannot fit in {MAX_PARTS} parts of at most "
            f"{MAX_PART_SIZE_BYTES} bytes"
        )
    needed = math.ceil(expected_bytes / MAX_PARTS)
    size = max(minimum, math.ceil(needed / MIB) * MIB)
    return min(size, MAX_PART_SIZE_BYTES)


def iter_parts(
    chunks: Iterable[ChunkLike],
    *,
    compression: str,
    level: int | None = None,
    part_size: int,
    resume: ResumePoint | None = None,
) -> Iterator[Part]:
    """Yield the parts of one object from its chunks; resume from `resume` when given."""
    if part_size <= 0:
        raise PermanentError(f"part size must be positive, got {part_size}")
    codec = open_codec(compression, level)
    if codec is None:
        return _iter_plain_parts(chunks, part_size=part_size, resume=resume)
    return iter_framed_parts(chunks, codec=codec, part_size=part_size, resume=resume)


class _Totals:
    """Running counts for the parts emitted so far and the part being filled."""

    def __init__(self, resume: ResumePoint | None) -> None:
        self.number = resume.next_part if resume else 1
        self.stored = resume.stored_bytes if resume else 0
        self.raw = resume.raw_bytes if resume else 0
        self.records = resume.records if resume else 0
        self.pending_raw = 0
        self.pending_records = 0

    def make_part(
        self, data: bytes, *, padding: int, self_contained: bool, cursor: object, resumable: bool
    ) -> Part:
        """Build the next part and advance the totals past it."""
        self.stored += len(data)
        self.raw += self.pending_raw
        self.records += self.pending_records
        point = None
        if resumable:
            point = ResumePoint(cursor, self.number + 1, 0, self.stored, self.raw, self.records)
        part = Part(
            number=self.number,
            data=data,
            raw_bytes=self.pending_raw,
            records=self.pending_records,
            padding_bytes=padding,
            self_contained=self_contained,
            resume=point,
            sha256=hashlib.sha256(data).hexdigest(),
        )
        self.number += 1
        self.pending_raw = 0
        self.pending_records = 0
        return part


def iter_framed_parts(
    chunks: Iterable[ChunkLike],
    *,
    codec: FrameCodec,
    part_size: int,
    resume: ResumePoint | None = None,
) -> Iterator[Part]:
    """Yield exact-size parts made of whole frames, cut where the uncompressed stream allows."""
    writer = _FramedWriter(codec, part_size, resume)
    yield from writer.skip_and_feed(chunks)
    yield from writer.close()


class _FramedWriter:
    """Compress the uncompressed stream in fixed units, closing a part before one could overflow.

    Units are cut at fixed offsets of the uncompressed stream, so the output depends only on its
    bytes, never on how they were chunked. Before each unit the writer checks a safe bound on
    what the unit can add; if the part might overflow it flushes (making the bound exact), and if
    it still might, it ends the frame, pads the part and starts the next with a fresh frame.
    """

    def __init__(self, codec: FrameCodec, part_size: int, resume: ResumePoint | None) -> None:
        self.codec = codec
        self.part_size = part_size
        self.reserve = codec.min_padding_bytes
        self.unit = _unit_bytes(codec, part_size)
        self.totals = _Totals(resume)
        self.buf = bytearray()
        self.frame_open = False
        self.flushed = 0  # length of buf at the last flush; later output is bounded by the codec
        self.unflushed = 0  # uncompressed bytes fed since the last flush
        self.contained = True  # the part being filled started with a fresh frame
        self.fed = self.totals.raw  # uncompressed stream offset fed to the codec
        self.resuming = resume is not None
        cursor_at = self.fed - (resume.skip_bytes if resume else 0)
        self.seen = cursor_at  # uncompressed stream offset of the chunks received
        self.cursor: tuple[object | None, int] = (resume.cursor if resume else None, cursor_at)
        self.events: deque[tuple[int, int, object | None]] = deque()
        self.pending = bytearray()

    def skip_and_feed(self, chunks: Iterable[ChunkLike]) -> Iterator[Part]:
        """Drop what earlier parts hold, then feed whole units and yield finished parts."""
        start = self.fed
        for chunk in chunks:
            data = chunk.data
            self.seen += len(data)
            if self.resuming and self.seen <= start:
                # Entirely inside earlier parts: counted by the run that wrote them.
                if chunk.cursor is not None:
                    self.cursor = (chunk.cursor, self.seen)
                continue
            before = self.seen - len(data)
            if before < start:
                data = data[start - before :]  # the head of this chunk is in earlier parts
            self.events.append((self.seen, chunk.records, chunk.cursor))
            self.pending += data
            while len(self.pending) >= self.unit:
                yield from self.feed(bytes(self.pending[: self.unit]))
                del self.pending[: self.unit]

    def close(self) -> Iterator[Part]:
        """Feed the last partial unit, end the frame and yield the final part."""
        if self.pending:
            yield from self.feed(bytes(self.pending))
            self.pending.clear()
        self.settle()
        if not self.frame_open:
            self.codec.start()  # an empty export is still one valid, empty frame
        self.buf += self.codec.finish()
        yield from self.cut_overflow(final=True)
        yield self.totals.make_part(
            bytes(self.buf),
            padding=0,
            self_contained=self.contained,
            cursor=None,
            resumable=False,
        )

    def fits(self, size: int) -> bool:
        """Tell whether `size` more input and the frame's end surely fit, leaving room to pad."""
        bound = self.codec.bound(self.unflushed + size)
        return self.flushed + bound + self.reserve <= self.part_size

    def feed(self, piece: bytes) -> Iterator[Part]:
        """Compress one unit, first closing the part if the unit might not fit in it."""
        if self.frame_open and not self.fits(len(piece)):
            if self.unflushed:
                self.buf += self.codec.flush()
                self.flushed, self.unflushed = len(self.buf), 0
            if not self.fits(len(piece)):
                yield from self.end_part()
        if not self.frame_open:
            self.codec.start()
            self.frame_open = True
            self.flushed, self.unflushed = len(self.buf), 0
        self.buf += self.codec.compress(piece)
        self.unflushed += len(piece)
        self.fed += len(piece)
        self.totals.pending_raw += len(piece)
        self.settle()
        yield from self.cut_overflow(final=False)

    def settle(self) -> None:
        """Credit chunks whose last byte has been fed to the part being filled."""
        while self.events and self.events[0][0] <= self.fed:
            end, records, cursor = self.events.popleft()
            self.totals.pending_records += records
            if cursor is not None:
                self.cursor = (cursor, end)

    def end_part(self) -> Iterator[Part]:
        """End the frame, pad the part to the exact size and yield it as a resume point."""
        self.settle()
        self.buf += self.codec.finish()
        self.frame_open = False
        room = self.part_size - len(self.buf)
        if room != 0 and room < self.reserve:
            return  # the frame overran its bound: this part will be cut mid-frame instead
        pad = self.codec.padding(room)
        cursor, cursor_at = self.cursor
        part = self.totals.make_part(
            bytes(self.buf) + pad,
            padding=len(pad),
            self_contained=self.contained,
            cursor=cursor,
            resumable=True,
        )
        yield _with_skip(part, self.fed - cursor_at)
        self.buf.clear()
        self.contained = True

    def cut_overflow(self, *, final: bool) -> Iterator[Part]:
        """Cut a frame that overran its bound at the exact part size (never seen in practice)."""
        while len(self.buf) > self.part_size or (not final and len(self.buf) == self.part_size):
            yield self.totals.make_part(
                bytes(self.buf[: self.part_size]),
                padding=0,
                self_contained=False,
                cursor=None,
                resumable=False,
            )
            del self.buf[: self.part_size]
            self.flushed -= self.part_size
            self.contained = False


def _unit_bytes(codec: FrameCodec, part_size: int) -> int:
    """Return the largest unit, up to UNIT_BYTES, that surely fits in an empty part."""
    unit = min(UNIT_BYTES, part_size)
    while unit > 0 and codec.bound(unit) + codec.min_padding_bytes > part_size:
        unit = min(unit - 1, part_size - codec.min_padding_bytes - codec.bound(0))
    if unit <= 0:
        raise PermanentError(f"a part of {part_size} bytes cannot hold a {codec.name} frame")
    return unit


def _with_skip(part: Part, skip: int) -> Part:
    """Return `part` with its resume point's skip set."""
    assert part.resume is not None
    return dataclasses.replace(part, resume=dataclasses.replace(part.resume, skip_bytes=skip))


def _iter_plain_parts(
    chunks: Iterable[ChunkLike], *, part_size: int, resume: ResumePoint | None
) -> Iterator[Part]:
    """Yield uncompressed output cut at exact part offsets.

    A chunk's records belong to the part holding its last byte, in a fresh run and a resumed one.
    """
    totals = _Totals(resume)
    skip = resume.skip_bytes if resume else 0
    # Absolute offset in the object of the end of the chunks seen so far.
    position = (totals.number - 1) * part_size - skip
    last_cursor: tuple[object | None, int] = (None, 0)
    if resume is not None:
        last_cursor = (resume.cursor, position)
    buf = bytearray()
    emitted = False
    for chunk in chunks:
        data = chunk.data
        position += len(data)
        if skip:
            dropped = min(skip, len(data))
            skip -= dropped
            data = data[dropped:]
            if not data:
                # Counted in an earlier part by the run that wrote it.
                if chunk.cursor is not None:
                    last_cursor = (chunk.cursor, position)
                continue
        buf += data
        while len(buf) > part_size:
            yield _plain_part(totals, bytes(buf[:part_size]), last_cursor, part_size)
            del buf[:part_size]
            emitted = True
        totals.pending_records += chunk.records
        if chunk.cursor is not None:
            last_cursor = (chunk.cursor, position)
    if buf or not emitted:
        totals.pending_raw = len(buf)
        yield totals.make_part(
            bytes(buf), padding=0, self_contained=True, cursor=None, resumable=False
        )


def _plain_part(
    totals: _Totals, data: bytes, last_cursor: tuple[object | None, int], part_size: int
) -> Part:
    """Build an uncompressed part whose resume point is the last cursor at or before its end."""
    cursor, cursor_end = last_cursor
    totals.pending_raw = len(data)
    part = totals.make_part(data, padding=0, self_contained=True, cursor=cursor, resumable=True)
    assert part.resume is not None
    point = ResumePoint(
        cursor=cursor,
        next_part=part.resume.next_part,
        skip_bytes=part.resume.stored_bytes - cursor_end,
        stored_bytes=part.resume.stored_bytes,
        raw_bytes=part.resume.raw_bytes,
        records=part.resume.records,
    )
    return Part(
        number=part.number,
        data=part.data,
        raw_bytes=part.raw_bytes,
        records=part.records,
        padding_bytes=0,
        self_contained=True,
        resume=point,
        sha256=part.sha256,
    )
