"""Frame codecs: write gzip members and zstd frames a piece at a time, and pad a part.

Frames are independent, so a part of whole frames decompresses alone and a resumed export starts a
fresh frame at a part boundary. zstd is written as a stream (start, feed, flush, finish). gzip is
written in blocks, each deflated alone with the 32 KiB before it as its dictionary and ended on a
byte boundary (as pigz does), so blocks can be compressed on several threads and joined; the
member's CRC-32 is combined from theirs. Deflate is zlib-ng's (`zlib-ng`): at level 6 less than
half of zlib 6's time for output 4 % smaller on export data. Padding is format-level, skipped by
every reader: a zstd skippable frame or empty gzip members with an FEXTRA field. Deterministic (no
timestamps; the same bytes however many threads); no I/O.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Any, Final

import zstandard
from zlib_ng import zlib_ng

from pipelines.errors import PermanentError

COMPRESSIONS: Final = ("none", "gzip", "zstd")

# zstd level 1 measured twice as fast as level 3 at the same ratio on export data.
DEFAULT_ZSTD_LEVEL: Final = 1
# gzip levels are gzip's own 1-9. On a 211 MB CSV export zlib-ng level 6 took 0.48 of zlib 6's
# time and wrote 3.7 % less; level 1 (static codes only) wrote 52 % more than level 6.
MIN_GZIP_LEVEL: Final = 1
MAX_GZIP_LEVEL: Final = 9
DEFAULT_GZIP_LEVEL: Final = 6

# zstd blocks hold at most 128 KiB of input; a block that does not shrink is stored raw with a
# 3-byte header, so a frame never grows more than 3 bytes per block beyond its input.
ZSTD_BLOCK_BYTES: Final = 128 * 1024
ZSTD_BLOCK_HEADER_BYTES: Final = 3
# Frame header (at most 18 bytes), final empty block (3) and content checksum (4), rounded up.
ZSTD_FRAME_OVERHEAD_BYTES: Final = 32
ZSTD_SKIPPABLE_MAGIC: Final = 0x184D2A50
# Magic (4) plus little-endian length (4): the smallest skippable frame.
ZSTD_SKIPPABLE_HEADER_BYTES: Final = 8

# Worst-case growth of a zlib-ng gzip member, as `GzipCodec.bound` uses it.
# Levels 2-9 build Huffman tables per block and store a block raw (5 bytes per 64 KiB) whenever
# that is smaller, so output stays within a few bytes per block of the input (zlib's deflateBound
# allows 1/4096 + 1/16384). The slope allows 1/64 and the constant covers the gzip header and
# trailer (18), the final block and a sync flush's empty stored block (5), rounded up.
DEFLATE_SLOPE_SHIFT: Final = 6
DEFLATE_OVERHEAD_BYTES: Final = 64
# Level 1 (zlib-ng's deflate_quick) codes with the static tables and never stores raw: literals
# take at most 9 bits, matches less per byte, so allow 1/8 more (zlib-ng's own
# DEFLATE_QUICK_OVERHEAD) plus a block header, the gzip wrapper and a sync flush, rounded up.
STATIC_CODES_SLOPE_SHIFT: Final = 3
STATIC_CODES_OVERHEAD_BYTES: Final = 128
# zlib's memLevel: it sets the block size and so the bytes written, pinned so a default changing
# in the library cannot change output.
DEFLATE_MEM_LEVEL: Final = 8
# Header (10), XLEN (2), one subfield header (4), empty deflate block (2), CRC32 and ISIZE (8).
GZIP_PAD_MIN_BYTES: Final = 26
# XLEN is a 16-bit field.
GZIP_PAD_MAX_BYTES: Final = GZIP_PAD_MIN_BYTES - 4 + 0xFFFF
_GZIP_PAD_HEADER: Final = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"  # FEXTRA, MTIME 0, OS unknown
# RFC 1952 subfield id for the padding: two ASCII letters, registered nowhere, ignored by readers.
_GZIP_PAD_SUBFIELD_ID: Final = b"Pd"
_GZIP_EMPTY_BODY: Final = b"\x03\x00" + struct.pack("<II", 0, 0)  # final fixed block, CRC 0, size 0
# Negative wbits asks for raw deflate (the member's header and trailer are written here) with a
# 32 KiB window, which is also how much history primes the next block.
_RAW_DEFLATE_WBITS: Final = -15
DEFLATE_HISTORY_BYTES: Final = 32 * 1024
# A member's header: no optional fields, MTIME 0, XFL 0, OS unknown.
GZIP_MEMBER_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# A final, empty block with the fixed codes ends the deflate stream after sync-flushed blocks.
_DEFLATE_FINAL_EMPTY_BLOCK: Final = b"\x03\x00"


class FrameCodec(ABC):
    """What every codec tells the parts stage: a bound on its output, and padding."""

    name: str
    content_encoding: str
    min_padding_bytes: int

    @abstractmethod
    def bound(self, size: int) -> int:
        """Return the most bytes a frame can add for `size` input bytes (flushed, then ended)."""

    @abstractmethod
    def padding(self, size: int) -> bytes:
        """Return exactly `size` bytes (0 or >= min_padding_bytes) that readers skip."""


class StreamCodec(FrameCodec):
    """Write one frame at a time as a stream; `bound` lets the caller end it before a part fills."""

    @abstractmethod
    def start(self) -> None:
        """Begin a new, independent frame."""

    @abstractmethod
    def compress(self, data: bytes) -> bytes:
        """Feed bytes into the open frame and return whatever output is ready."""

    @abstractmethod
    def flush(self) -> bytes:
        """Emit everything fed so far without ending the frame."""

    @abstractmethod
    def finish(self) -> bytes:
        """End the open frame and return its last bytes."""


class ZstdCodec(StreamCodec):
    """zstd frames with content checksums, padded with skippable frames."""

    name = "zstd"
    content_encoding = "zstd"
    min_padding_bytes = ZSTD_SKIPPABLE_HEADER_BYTES

    def __init__(self, level: int = DEFAULT_ZSTD_LEVEL) -> None:
        if not -7 <= level <= 22:
            raise PermanentError(f"zstd level must be between -7 and 22, got {level}")
        # threads stay at 0: multi-threaded zstd output differs from single-threaded output,
        # and a resumed export must reproduce the bytes of an uninterrupted one.
        self._compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._frame: Any = None

    def start(self) -> None:
        self._frame = self._compressor.compressobj()

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._frame.compress(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self) -> bytes:
        out: bytes = self._frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        self._frame = None
        return out

    def bound(self, size: int) -> int:
        blocks = size // ZSTD_BLOCK_BYTES + 2
        return size + blocks * ZSTD_BLOCK_HEADER_BYTES + ZSTD_FRAME_OVERHEAD_BYTES

    def padding(self, size: int) -> bytes:
        if size == 0:
            return b""
        if size < ZSTD_SKIPPABLE_HEADER_BYTES:
            raise ValueError(f"a skippable frame needs at least 8 bytes, asked for {size}")
        body = size - ZSTD_SKIPPABLE_HEADER_BYTES
        return struct.pack("<II", ZSTD_SKIPPABLE_MAGIC, body) + bytes(body)


class GzipCodec(FrameCodec):
    """gzip members (zlib-ng deflate) written in blocks, padded with empty FEXTRA members.

    A member is `GZIP_MEMBER_HEADER`, then blocks from `compress_block` in order, each primed with
    the member's previous 32 KiB, then `trailer`. Blocks are independent calls, safe on any
    thread; deflate releases the GIL, so blocks compressed side by side use several cores.
    """

    name = "gzip"
    content_encoding = "gzip"
    min_padding_bytes = GZIP_PAD_MIN_BYTES
    header = GZIP_MEMBER_HEADER
    history_bytes = DEFLATE_HISTORY_BYTES

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL) -> None:
        if not MIN_GZIP_LEVEL <= level <= MAX_GZIP_LEVEL:
            raise PermanentError(
                f"gzip level must be between {MIN_GZIP_LEVEL} and {MAX_GZIP_LEVEL}, got {level}"
            )
        self.level = level
        if level == 1:
            self._slope_shift = STATIC_CODES_SLOPE_SHIFT
            self._overhead = STATIC_CODES_OVERHEAD_BYTES
        else:
            self._slope_shift, self._overhead = DEFLATE_SLOPE_SHIFT, DEFLATE_OVERHEAD_BYTES

    def compress_block(self, data: bytes, history: bytes) -> tuple[bytes, int]:
        """Deflate `data` after `history` (the member's preceding bytes, up to 32 KiB).

        Return the block, ended on a byte boundary by a sync flush, and the CRC-32 of `data`.
        """
        if history:
            deflate = zlib_ng.compressobj(
                self.level,
                zlib_ng.DEFLATED,
                _RAW_DEFLATE_WBITS,
                DEFLATE_MEM_LEVEL,
                zlib_ng.Z_DEFAULT_STRATEGY,
                history[-DEFLATE_HISTORY_BYTES:],
            )
        else:
            deflate = zlib_ng.compressobj(
                self.level, zlib_ng.DEFLATED, _RAW_DEFLATE_WBITS, DEFLATE_MEM_LEVEL
            )
        block = deflate.compress(data) + deflate.flush(zlib_ng.Z_SYNC_FLUSH)
        return block, zlib_ng.crc32(data)

    @staticmethod
    def combine_crc(crc: int, block_crc: int, block_size: int) -> int:
        """Return the CRC-32 of a member's content extended by a block's."""
        return zlib_ng.crc32_combine(crc, block_crc, block_size)

    @staticmethod
    def trailer(crc: int, size: int) -> bytes:
        """End a member whose content has CRC-32 `crc` and `size` bytes."""
        return _DEFLATE_FINAL_EMPTY_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)

    def bound(self, size: int) -> int:
        return size + (size >> self._slope_shift) + self._overhead

    def largest_input(self, room: int) -> int:
        """Return the most input whose `bound` fits in `room` bytes (0 when none does)."""
        budget = room - self._overhead
        if budget <= 0:
            return 0
        scale = 1 << self._slope_shift
        size = budget * scale // (scale + 1)
        while self.bound(size + 1) <= room:
            size += 1
        return size

    def padding(self, size: int) -> bytes:
        if size != 0 and size < GZIP_PAD_MIN_BYTES:
            raise ValueError(f"a gzip padding member needs at least 26 bytes, asked for {size}")
        pieces = []
        remaining = size
        while remaining:
            take = min(remaining, GZIP_PAD_MAX_BYTES)
            if 0 < remaining - take < GZIP_PAD_MIN_BYTES:
                take = remaining - GZIP_PAD_MIN_BYTES
            pieces.append(_gzip_pad_member(take))
            remaining -= take
        return b"".join(pieces)


def _gzip_pad_member(size: int) -> bytes:
    """Return one empty gzip member of exactly `size` bytes."""
    filler = size - GZIP_PAD_MIN_BYTES
    xlen = filler + 4
    subfield = _GZIP_PAD_SUBFIELD_ID + struct.pack("<H", filler) + bytes(filler)
    return _GZIP_PAD_HEADER + struct.pack("<H", xlen) + subfield + _GZIP_EMPTY_BODY


def default_level(compression: str) -> int:
    """Return the level used when a request names a compression but no level."""
    return DEFAULT_GZIP_LEVEL if compression == "gzip" else DEFAULT_ZSTD_LEVEL


def open_codec(compression: str, level: int | None = None) -> FrameCodec | None:
    """Return the codec for a compression name, or None for uncompressed output."""
    if compression == "none":
        return None
    chosen = default_level(compression) if level is None else level
    if compression == "zstd":
        return ZstdCodec(chosen)
    if compression == "gzip":
        return GzipCodec(chosen)
    raise PermanentError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
