"""Frame codecs: start, feed, flush and finish one gzip member or zstd frame, and pad a part.

Each frame is independent (no shared history), so a part made of whole frames decompresses on its
own and a resumed export can start a fresh frame at a part boundary. Padding is format-level and
ignored by every standard reader: a zstd skippable frame, or empty gzip members whose header
carries an FEXTRA field. Everything is deterministic (no timestamps, no threads). No I/O here.
"""

from __future__ import annotations

import struct
import zlib
from abc import ABC, abstractmethod
from typing import Any, Final

import zstandard

from pipelines.errors import PermanentError

COMPRESSIONS: Final = ("none", "gzip", "zstd")

# zstd level 1 measured twice as fast as level 3 at the same ratio on export data.
DEFAULT_ZSTD_LEVEL: Final = 1
# gzip's own default: the compatibility choice when someone asks for gzip.
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

# zlib's deflateBound for default settings plus the gzip header and trailer (18) and the empty
# stored block a sync flush may add, rounded up generously.
DEFLATE_OVERHEAD_BYTES: Final = 64
# Header (10), XLEN (2), one subfield header (4), empty deflate block (2), CRC32 and ISIZE (8).
GZIP_PAD_MIN_BYTES: Final = 26
# XLEN is a 16-bit field.
GZIP_PAD_MAX_BYTES: Final = GZIP_PAD_MIN_BYTES - 4 + 0xFFFF
_GZIP_PAD_HEADER: Final = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"  # FEXTRA, MTIME 0, OS unknown
# RFC 1952 subfield id for the padding: two ASCII letters, registered nowhere, ignored by readers.
_GZIP_PAD_SUBFIELD_ID: Final = b"Pd"
_GZIP_EMPTY_BODY: Final = b"\x03\x00" + struct.pack("<II", 0, 0)  # final fixed block, CRC 0, size 0
# wbits for zlib: 16 + 15 asks for a gzip wrapper around a 32 KiB window.
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
    """gzip members (zlib deflate), padded with empty members carrying an FEXTRA field."""

    name = "gzip"
    content_encoding = "gzip"
    min_padding_bytes = GZIP_PAD_MIN_BYTES

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL) -> None:
        if not 0 <= level <= 9:
            raise PermanentError(f"gzip level must be between 0 and 9, got {level}")
        self._level = level
        self._member: Any = None

    def start(self) -> None:
        self._member = zlib.compressobj(self._level, zlib.DEFLATED, _GZIP_WBITS)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._member.compress(data)
        return out

    def flush(self) -> bytes:
        out: bytes = self._member.flush(zlib.Z_SYNC_FLUSH)
        return out

    def finish(self) -> bytes:
        out: bytes = self._member.flush(zlib.Z_FINISH)
        self._member = None
        return out

    def bound(self, size: int) -> int:
        return size + (size >> 12) + (size >> 14) + (size >> 25) + DEFLATE_OVERHEAD_BYTES

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
