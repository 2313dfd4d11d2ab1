"""Cut a stream of serialized chunks into multipart parts of exactly the part size.

R2 rejects a multipart upload whose non-final parts differ in size, so every part but the last is
exactly `part_size` bytes. With gzip or zstd each part holds whole frames, padded to the part size
with format-level padding, so it decompresses on its own; frames end at offsets of the
uncompressed stream that depend only on its bytes, never on chunk sizes. zstd is written here,
gzip by `deflate_parts` (blocks deflated on two threads). Uncompressed output is cut at exact
offsets. Either way each part records a `ResumePoint`: the last cursor at or before its end plus
the uncompressed bytes to drop after it, from which a fresh run reproduces the rest of the object
byte for byte. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Final

from pipelines.compression.frames import GzipCodec, StreamCodec, open_codec
from pipelines.deflate_parts import iter_deflate_parts
from pipelines.errors import PermanentError, SizeLimitError
from pipelines.part_stream import ChunkLike, FramedPartWriter, Part, PartTotals, ResumePoint

__all__ = [
    "DEFAULT_PART_SIZE_BYTES",
    "MAX_PARTS",
    "MAX_PART_SIZE_BYTES",
    "MIB",
    "MIN_PART_SIZE_BYTES",
    "ChunkLike",
    "Part",
    "ResumePoint",
    "choose_part_size",
    "iter_framed_parts",
    "iter_parts",
]

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
    if isinstance(codec, GzipCodec):
        return iter_deflate_parts(chunks, codec=codec, part_size=part_size, resume=resume)
    assert isinstance(codec, StreamCodec)
    return iter_framed_parts(chunks, codec=codec, part_size=part_size, resume=resume)


def iter_framed_parts(
    chunks: Iterable[ChunkLike],
    *,
    codec: StreamCodec,
    part_size: int,
    resume: ResumePoint | None = None,
) -> Iterator[Part]:
    """Yield exact-size parts made of whole frames, cut where the uncompressed stream allows."""
    return _FramedWriter(codec, part_size, resume).skip_and_feed(chunks)


class _FramedWriter(FramedPartWriter):
    """Compress the uncompressed stream in fixed units, closing a part before one could overflow.

    Units are cut at fixed offsets of the uncompressed stream, so the output depends only on its
    bytes, never on how they were chunked. Before each unit the writer checks a safe bound on
    what the unit can add; if the part might overflow it flushes (making the bound exact), and if
    it still might, it ends the frame, pads the part and starts the next with a fresh frame.
    """

    def __init__(self, codec: StreamCodec, part_size: int, resume: ResumePoint | None) -> None:
        super().__init__(codec, part_size, resume)
        self.codec = codec
        self.unit = _unit_bytes(codec, part_size)
        self.frame_open = False
        self.flushed = 0  # length of buf at the last flush; later output is bounded by the codec
        self.unflushed = 0  # uncompressed bytes fed since the last flush

    def compress_pending(self, *, final: bool) -> Iterator[Part]:
        """Feed whole units; when final, the last partial unit too, then end the object."""
        while len(self.pending) >= self.unit:
            yield from self.feed(self.unit)
        if final:
            yield from self.close()

    def close(self) -> Iterator[Part]:
        """Feed the last partial unit, end the frame and yield the final part."""
        if self.pending:
            yield from self.feed(len(self.pending))
        if not self.frame_open:
            self.codec.start()  # an empty export is still one valid, empty frame
        self.buf += self.codec.finish()
        yield from self.cut_overflow(final=True)
        yield self.last_part(bytes(self.buf), self_contained=self.contained)

    def fits(self, size: int) -> bool:
        """Tell whether `size` more input and the frame's end surely fit, leaving room to pad."""
        bound = self.codec.bound(self.unflushed + size)
        return self.flushed + bound + self.reserve <= self.part_size

    def feed(self, size: int) -> Iterator[Part]:
        """Compress the next `size` pending bytes, first closing the part if they might not fit."""
        if self.frame_open and not self.fits(size):
            if self.unflushed:
                self.buf += self.codec.flush()
                self.flushed, self.unflushed = len(self.buf), 0
            if not self.fits(size):
                yield from self.end_part()
        if not self.frame_open:
            self.codec.start()
            self.frame_open = True
            self.flushed, self.unflushed = len(self.buf), 0
        self.buf += self.codec.compress(self.take(size))
        self.unflushed += size
        yield from self.cut_overflow(final=False)

    def end_part(self) -> Iterator[Part]:
        """End the frame, pad the part to the exact size and yield it as a resume point."""
        self.buf += self.codec.finish()
        self.frame_open = False
        yield from self.padded_part()

    def cut_overflow(self, *, final: bool) -> Iterator[Part]:
        """Cut an overrun frame at the exact part size, keeping the flush offset in step."""
        for part in super().cut_overflow(final=final):
            self.flushed -= self.part_size
            yield part


def _unit_bytes(codec: StreamCodec, part_size: int) -> int:
    """Return the largest unit, up to UNIT_BYTES, that surely fits in an empty part."""
    unit = min(UNIT_BYTES, part_size)
    while unit > 0 and codec.bound(unit) + codec.min_padding_bytes > part_size:
        unit = min(unit - 1, part_size - codec.min_padding_bytes - codec.bound(0))
    if unit <= 0:
        raise PermanentError(f"a part of {part_size} bytes cannot hold a {codec.name} frame")
    return unit


def _iter_plain_parts(
    chunks: Iterable[ChunkLike], *, part_size: int, resume: ResumePoint | None
) -> Iterator[Part]:
    """Yield uncompressed output cut at exact part offsets.

    A chunk's records belong to the part holding its last byte, in a fresh run and a resumed one.
    """
    totals = PartTotals(resume)
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
    totals: PartTotals, data: bytes, last_cursor: tuple[object | None, int], part_size: int
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
