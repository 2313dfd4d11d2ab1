"""Cut a gzip export into exact-size parts, deflating its blocks on two threads.

Deflate is the slowest stage of a gzip export, and one core cannot keep up with the database and
the serializer. Each part is one gzip member (padded to the part size, as `parts` describes); the
member is a run of blocks that `GzipCodec.compress_block` deflates independently, each primed
with the 32 KiB before it, so blocks are compressed side by side on a small thread pool and joined
in order.

Where a part ends, and how large each block is, follows one sequential rule that depends only on
the content: the next block is `block` bytes if the part surely has room for it given the exact
sizes of the blocks before it; otherwise the largest block that surely fits, if it is not tiny;
otherwise the part is ended. The writer decides without waiting whenever the blocks still in
flight could not change the answer even at their worst-case sizes, and waits for them only near
the end of a part, so the bytes are the same however the threads are scheduled. That holds while
blocks stay within `GzipCodec.bound`, which the tests check on incompressible input at every
level; a block that overran it would still give exact-size parts that decompress (cut mid-member,
as `parts` does for zstd), only not necessarily the same bytes on every run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from pipelines.compression.frames import GzipCodec
from pipelines.errors import PermanentError
from pipelines.part_stream import ChunkLike, FramedPartWriter, Part, ResumePoint

# Uncompressed bytes per block, as pigz uses: large enough that per-block costs (a dictionary, a
# sync flush, fresh code tables) are ~0.1 % of the output, small enough that waiting for blocks
# in flight near a part's end serializes only a few percent of the work.
BLOCK_BYTES: Final = 128 * 1024
# Near a part's end blocks shrink to what surely fits; below this the part is ended instead.
MIN_BLOCK_BYTES: Final = 4 * 1024
# Threads deflating blocks, and blocks handed to them at once (one queued behind each).
DEFLATE_THREADS: Final = 2
MAX_BLOCKS_IN_FLIGHT: Final = 2 * DEFLATE_THREADS


def iter_deflate_parts(
    chunks: Iterable[ChunkLike],
    *,
    codec: GzipCodec,
    part_size: int,
    resume: ResumePoint | None = None,
) -> Iterator[Part]:
    """Yield exact-size parts, each one gzip member (the last may be cut short), for `chunks`."""
    with ThreadPoolExecutor(DEFLATE_THREADS, thread_name_prefix="deflate") as pool:
        writer = _DeflateWriter(codec, part_size, resume, pool)
        try:
            yield from writer.skip_and_feed(chunks)
        finally:
            writer.cancel()


class _DeflateWriter(FramedPartWriter):
    """Hand blocks to the pool, join their output in order and end members at part boundaries."""

    def __init__(
        self,
        codec: GzipCodec,
        part_size: int,
        resume: ResumePoint | None,
        pool: ThreadPoolExecutor,
    ) -> None:
        super().__init__(codec, part_size, resume)
        self.codec = codec
        self.pool = pool
        self.block = _block_bytes(codec, part_size)
        # Blocks handed to the pool, oldest first: (future, input size, worst-case output size).
        self.in_flight: deque[tuple[Future[tuple[bytes, int]], int, int]] = deque()
        self.in_flight_bound = 0
        self.member_open = False
        self.history = b""  # the open member's last 32 KiB of content
        self.crc = 0
        self.member_bytes = 0

    def compress_pending(self, *, final: bool) -> Iterator[Part]:
        """Deflate whole blocks; when final, the rest too, then end the object."""
        while len(self.pending) >= self.block or (final and self.pending):
            size = yield from self.plan_block(min(self.block, len(self.pending)))
            self.dispatch(size)
            yield from self.join_finished(wait=len(self.in_flight) >= MAX_BLOCKS_IN_FLIGHT)
        if final:
            yield from self.close()

    def plan_block(self, wanted: int) -> Generator[Part, None, int]:
        """Return the next block's size, ending the part first when not even a small one fits.

        Parts it ends are yielded; the size is the generator's return value.
        """
        if self.room() >= self.in_flight_bound + self.codec.bound(wanted):
            return wanted
        yield from self.join_finished(wait=True, everything=True)
        size = min(wanted, self.codec.largest_input(self.room()))
        if size >= min(MIN_BLOCK_BYTES, wanted):
            return size
        yield from self.end_part()
        return wanted

    def room(self) -> int:
        """Return the bytes left for blocks in the part being filled, padding's minimum kept."""
        used = len(self.buf) + (0 if self.member_open else len(self.codec.header))
        return self.part_size - self.reserve - used

    def dispatch(self, size: int) -> None:
        """Take the next `size` pending bytes and hand them to the pool as the next block."""
        if not self.member_open:
            self.buf += self.codec.header
            self.member_open = True
        data = self.take(size)
        future = self.pool.submit(self.codec.compress_block, data, self.history)
        bound = self.codec.bound(size)
        self.in_flight.append((future, size, bound))
        self.in_flight_bound += bound
        keep = self.codec.history_bytes
        self.history = data[-keep:] if len(data) >= keep else (self.history + data)[-keep:]

    def join_finished(self, *, wait: bool, everything: bool = False) -> Iterator[Part]:
        """Join finished blocks' output in order: the oldest when `wait`, all when `everything`."""
        while self.in_flight:
            future, size, bound = self.in_flight[0]
            if not (wait or future.done()):
                return
            block, block_crc = future.result()
            self.in_flight.popleft()
            self.in_flight_bound -= bound
            self.buf += block
            self.crc = self.codec.combine_crc(self.crc, block_crc, size)
            self.member_bytes += size
            yield from self.cut_overflow(final=False)
            wait = everything

    def end_part(self) -> Iterator[Part]:
        """End the member, pad the part to the exact size and yield it as a resume point."""
        yield from self.join_finished(wait=True, everything=True)
        self.write_trailer()
        yield from self.padded_part()

    def write_trailer(self) -> None:
        """End the open member (every block joined) with its CRC-32 and size."""
        self.buf += self.codec.trailer(self.crc, self.member_bytes)
        self.member_open = False
        self.history = b""
        self.crc = 0
        self.member_bytes = 0

    def close(self) -> Iterator[Part]:
        """End the last member (an empty export is one empty member) and yield the final part."""
        yield from self.join_finished(wait=True, everything=True)
        if not self.member_open:
            self.buf += self.codec.header
            self.member_open = True
        self.write_trailer()
        yield from self.cut_overflow(final=True)
        yield self.last_part(bytes(self.buf), self_contained=self.contained)

    def cancel(self) -> None:
        """Drop blocks still in flight (the export stopped early); the pool joins the running."""
        for future, _, _ in self.in_flight:
            future.cancel()
        self.in_flight.clear()


def _block_bytes(codec: GzipCodec, part_size: int) -> int:
    """Return the largest block, up to BLOCK_BYTES, that surely fits in an empty part."""
    room = part_size - codec.min_padding_bytes - len(codec.header)
    block = min(BLOCK_BYTES, codec.largest_input(room))
    if block <= 0:
        raise PermanentError(f"a part of {part_size} bytes cannot hold a gzip member")
    return block
