"""What every part writer shares: part and resume-point types, and the chunk stream's bookkeeping.

A part writer reads serialized chunks, compresses their bytes in pieces cut at offsets of the
uncompressed stream, and emits exact-size parts. `ChunkStream` holds what does not depend on the
compression: skipping what earlier parts already hold on resume, crediting each chunk's records
and cursor to the part that holds its last byte, and the running totals. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pipelines.compression.frames import FrameCodec


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


class PartTotals:
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


class ChunkStream(ABC):
    """Feed a compressing part writer the uncompressed stream, crediting chunks as it goes.

    `pending` holds received bytes not yet compressed; a subclass takes pieces off its front
    (`compress_pending`), calls `consumed` for each, and ends parts with `resumable_part`.
    """

    def __init__(self, resume: ResumePoint | None) -> None:
        self.totals = PartTotals(resume)
        self.fed = self.totals.raw  # uncompressed stream offset handed to the compressor
        self.resuming = resume is not None
        cursor_at = self.fed - (resume.skip_bytes if resume else 0)
        self.seen = cursor_at  # uncompressed stream offset of the chunks received
        self.cursor: tuple[object | None, int] = (resume.cursor if resume else None, cursor_at)
        self.events: deque[tuple[int, int, object | None]] = deque()
        self.pending = bytearray()

    @abstractmethod
    def compress_pending(self, *, final: bool) -> Iterator[Part]:
        """Compress what `pending` holds, yielding finished parts; when final, end the object."""

    def skip_and_feed(self, chunks: Iterable[ChunkLike]) -> Iterator[Part]:
        """Drop what earlier parts hold, then queue each chunk and yield finished parts."""
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
            yield from self.compress_pending(final=False)
        yield from self.compress_pending(final=True)

    def take(self, size: int) -> bytes:
        """Remove and return the first `size` pending bytes, counting them as fed."""
        piece = bytes(self.pending[:size])
        del self.pending[:size]
        self.fed += len(piece)
        self.totals.pending_raw += len(piece)
        self.settle()
        return piece

    def settle(self) -> None:
        """Credit chunks whose last byte has been fed to the part being filled."""
        while self.events and self.events[0][0] <= self.fed:
            end, records, cursor = self.events.popleft()
            self.totals.pending_records += records
            if cursor is not None:
                self.cursor = (cursor, end)

    def resumable_part(self, data: bytes, *, padding: int, self_contained: bool) -> Part:
        """Build a part ending at the current offset, resumable from the last cursor before it."""
        self.settle()
        cursor, cursor_at = self.cursor
        part = self.totals.make_part(
            data, padding=padding, self_contained=self_contained, cursor=cursor, resumable=True
        )
        assert part.resume is not None
        resume = dataclasses.replace(part.resume, skip_bytes=self.fed - cursor_at)
        return dataclasses.replace(part, resume=resume)

    def last_part(self, data: bytes, *, self_contained: bool) -> Part:
        """Build the object's final part."""
        self.settle()
        return self.totals.make_part(
            data, padding=0, self_contained=self_contained, cursor=None, resumable=False
        )

    def cut_part(self, data: bytes) -> Part:
        """Build a part cut inside a frame: not self-contained and not a resume point."""
        return self.totals.make_part(
            data, padding=0, self_contained=False, cursor=None, resumable=False
        )


class FramedPartWriter(ChunkStream):
    """A part writer whose parts are whole frames, padded to the part size with `codec` padding."""

    def __init__(self, codec: FrameCodec, part_size: int, resume: ResumePoint | None) -> None:
        super().__init__(resume)
        self.part_size = part_size
        self.reserve = codec.min_padding_bytes
        self.padding = codec.padding
        self.buf = bytearray()  # output of the part being filled
        self.contained = True  # the part being filled started with a fresh frame

    def padded_part(self) -> Iterator[Part]:
        """Pad the part (its frame just ended) to the exact size and yield it as a resume point.

        Yields nothing when a frame overran its bound and left too little room to pad: that part
        is cut mid-frame by `cut_overflow` instead.
        """
        room = self.part_size - len(self.buf)
        if room != 0 and room < self.reserve:
            return
        pad = self.padding(room)
        yield self.resumable_part(
            bytes(self.buf) + pad, padding=len(pad), self_contained=self.contained
        )
        self.buf.clear()
        self.contained = True

    def cut_overflow(self, *, final: bool) -> Iterator[Part]:
        """Cut a frame that overran its bound at the exact part size (never seen in practice)."""
        while len(self.buf) > self.part_size or (not final and len(self.buf) == self.part_size):
            yield self.cut_part(bytes(self.buf[: self.part_size]))
            del self.buf[: self.part_size]
            self.contained = False
