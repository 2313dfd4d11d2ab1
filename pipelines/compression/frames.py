"""Frame codecs: start, feed, flush and finish one gzip member or zstd frame, and pad a part.

Frames are independent, so a part of whole frames decompresses alone and a resumed export starts a
fresh frame at a part boundary. gzip is ISA-L's deflate (`isal`): a sixth of zlib 6's time for ~4 %
more bytes. Padding is format-level, skipped by every reader: a zstd skippable frame or empty gzip
members with an FEXTRA field. Deterministic (no timestamps, no threads); no I/O.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Any, Final

import zstandard
from isal import isal_zlib

from pipelines.errors import PermanentError

COMPRESSIONS: Final = ("none", "gzip", "zstd")

# zstd level 1 measured twice as fast as level 3 at the same ratio on export data.
DEFAULT_ZSTD_LEVEL: Final = 1
# gzip levels are ISA-L's, 0-3 (`igzip -0` to `-3`), not zlib's 1-9. On a 211 MB CSV export
# level 3 wrote 3.7-3.9 % more than `gzip -6` in 0.11-0.17 of its time; 1 and 2 wrote 5.5-6.5 %
# more to save ~8 % of an export's time; 0 uses a fixed table and wrote 44 % more.
MIN_GZIP_LEVEL: Final = 0
MAX_GZIP_LEVEL: Final = 3
DEFAULT_GZIP_LEVEL: Final = 3

# zstd blocks hold at most 128 KiB of input; a block that does not shrink is stored raw with a
# 3-byte header, so a frame never grows more than 3 bytes per block beyond its input.
ZSTD_BLOCK_BYTES: Final = 128 * 1024
ZSTD_BLOCK_HEADER_BYTES: Final = 3
# Frame header (at most 18 bytes), final empty block (3) and content checksum (4), rounded up.
ZSTD_FRAME_OVERHEAD_BYTES: Final = 32
ZSTD_SKIPPABLE_MAGIC: Final = 0x184D2A50
# Magic (4) plus little-endian length (4): the smallest skippable frame.
ZSTD_SKIPPABLE_HEADER_BYTES: Final = 8

# Worst-case growth of an ISA-L gzip member, as `GzipCodec.bound` uses it.
# Levels 1-3 build a Huffman table per block and store a block raw (5 bytes per 64 KiB) whenever
# that is smaller, so output stays within a few bytes per block of the input: random data measured
# at most 0.0011 bytes per input byte plus 23. The slope allows 1/64 (room for a 328-byte block
# header per 21 KiB) and the constant covers the gzip header and trailer (18), the final block
# and a sync flush's empty stored block (5), rounded up.
DEFLATE_SLOPE_SHIFT: Final = 6
DEFLATE_OVERHEAD_BYTES: Final = 64
# Level 0 codes with a fixed table and never stores raw: its longest literal code is 11 bits and
# its costliest match is under 12 bits a byte, so allow 12 bits (1.5 bytes) a byte. The constant
# covers the table's block header (at most 328 bytes, ISAL_DEF_MAX_HDR_SIZE), the gzip header and
# trailer and a sync flush, rounded up. Random bytes over the longest codes measured 1.375.
FIXED_TABLE_SLOPE_SHIFT: Final = 1
FIXED_TABLE_OVERHEAD_BYTES: Final = 400
# ISA-L's buffer size for levels 1-3 (zlib's memLevel scale). It sets the block size and so the
# bytes written: pinned so a default changing in the library cannot change output.
ISAL_MEM_LEVEL: Final = 8
# Header (10), XLEN (2), one subfield header (4), empty deflate block (2), CRC32 and ISIZE (8).
GZIP_PAD_MIN_BYTES: Final = 26
# XLEN is a 16-bit field.
GZIP_PAD_MAX_BYTES: Final = GZIP_PAD_MIN_BYTES - 4 + 0xFFFF
_GZIP_PAD_HEADER: Final = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"  # FEXTRA, MTIME 0, OS unknown
# RFC 1952 subfield id for the padding: two ASCII letters, registered nowhere, ignored by readers.
_GZIP_PAD_SUBFIELD_ID: Final = b"Pd"
_GZIP_EMPTY_BODY: Final = b"\x03\x00" + struct.pack("<II", 0, 0)  # final fixed block, CRC 0, size 0
# wbits (zlib's convention, which isal follows): 16 + 15 asks for a gzip wrapper, 32 KiB window.
_GZIP_WBITS: Final = 31


class FrameCodec(ABC):
    """Write one frame at a time; `bound` lets the caller end a frame before a part overflows."""

    name: str
    content_encoding: str
    min_padding_bytes: int

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

    @abstractmethod
    def bound(self, size: int) -> int:
        """Return the most bytes `size` input bytes fed after a flush, then finish, can add."""

    @abstractmethod
    def padding(self, size: int) -> bytes:
        """Return exactly `size` bytes (0 or >= min_padding_bytes) that readers skip."""


class ZstdCodec(FrameCodec):
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
    """gzip members (ISA-L deflate), padded with empty members carrying an FEXTRA field."""

    name = "gzip"
    content_encoding = "gzip"
    min_padding_bytes = GZIP_PAD_MIN_BYTES

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL) -> None:
        if not MIN_GZIP_LEVEL <= level <= MAX_GZIP_LEVEL:
            raise PermanentError(
                f"gzip level must be between {MIN_GZIP_LEVEL} and {MAX_GZIP_LEVEL} "
                f"(ISA-L deflate levels), got {level}"
            )
        self._level = level
        self._member: isal_zlib.Compress | None = None
        if level == 0:
            self._slope_shift, self._overhead = FIXED_TABLE_SLOPE_SHIFT, FIXED_TABLE_OVERHEAD_BYTES
        else:
            self._slope_shift, self._overhead = DEFLATE_SLOPE_SHIFT, DEFLATE_OVERHEAD_BYTES

    def start(self) -> None:
        self._member = isal_zlib.compressobj(
            self._level, isal_zlib.DEFLATED, _GZIP_WBITS, ISAL_MEM_LEVEL
        )

    def compress(self, data: bytes) -> bytes:
        return self._open().compress(data)

    def flush(self) -> bytes:
        return self._open().flush(isal_zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        out = self._open().flush(isal_zlib.Z_FINISH)
        self._member = None
        return out

    def bound(self, size: int) -> int:
        return size + (size >> self._slope_shift) + self._overhead

    def _open(self) -> isal_zlib.Compress:
        if self._member is None:
            raise RuntimeError("no gzip member is open: call start() first")
        return self._member

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
