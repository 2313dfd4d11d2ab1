"""Read compressed exports back: across gzip members and zstd frames, skipping padding.

Output is produced in bounded pieces, so a small, highly compressed object cannot expand into one
huge buffer. Truncated or corrupt input raises PermanentError. No I/O here: the caller supplies
the stored bytes as an iterable of blobs.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Final

import zstandard

from pipelines.errors import PermanentError

# Largest piece of decompressed output held at once; big enough that per-call overhead vanishes.
OUTPUT_PIECE_BYTES: Final = 1024 * 1024
# zstd input fed per call: the decompressor has no output cap, so small input slices bound its
# output (8 KiB of export data expands to a few MiB even at ratios in the hundreds).
ZSTD_INPUT_SLICE_BYTES: Final = 8 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
# Skippable frames use magics 0x184D2A50..0x184D2A5F, stored little-endian.
_ZSTD_SKIPPABLE_TAIL: Final = b"\x2a\x4d\x18"
_GZIP_WBITS: Final = 31


def detect_compression(prefix: bytes) -> str:
    """Name the compression of stored bytes from their first four bytes."""
    if prefix.startswith(_GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(_ZSTD_MAGIC):
        return "zstd"
    if len(prefix) >= 4 and prefix[0] & 0xF0 == 0x50 and prefix[1:4] == _ZSTD_SKIPPABLE_TAIL:
        return "zstd"
    return "none"


def iter_decompressed(blobs: Iterable[bytes], compression: str) -> Iterator[bytes]:
    """Yield the content of stored bytes, reading across frames and members."""
    if compression == "none":
        yield from (blob for blob in blobs if blob)
    elif compression == "gzip":
        yield from _iter_gunzip(blobs)
    elif compression == "zstd":
        yield from _iter_unzstd(blobs)
    else:
        raise PermanentError(f"unknown compression {compression!r}")


def _iter_gunzip(blobs: Iterable[bytes]) -> Iterator[bytes]:
    """Inflate concatenated gzip members, empty padding members included."""
    member = zlib.decompressobj(_GZIP_WBITS)
    in_member = False
    try:
        for blob in blobs:
            pending = blob
            while pending:
                in_member = True
                out = member.decompress(pending, OUTPUT_PIECE_BYTES)
                if out:
                    yield out
                if member.eof:
                    pending = member.unused_data
                    member = zlib.decompressobj(_GZIP_WBITS)
                    in_member = False
                else:
                    pending = member.unconsumed_tail
    except zlib.error as exc:
        raise PermanentError(f"corrupt gzip data: {exc}") from exc
    if in_member:
        raise PermanentError("truncated gzip data: the last member has no end")


def _iter_unzstd(blobs: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress concatenated zstd frames, skippable frames included."""
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False
    try:
        for blob in blobs:
            for start in range(0, len(blob), ZSTD_INPUT_SLICE_BYTES):
                pending = blob[start : start + ZSTD_INPUT_SLICE_BYTES]
                while pending:
                    in_frame = True
                    out = frame.decompress(pending)
                    if out:
                        yield out
                    pending = b""
                    if frame.eof:
                        pending = frame.unused_data
                        frame = decompressor.decompressobj()
                        in_frame = False
    except zstandard.ZstdError as exc:
        raise PermanentError(f"corrupt zstd data: {exc}") from exc
    if in_frame:
        raise PermanentError("truncated zstd data: the last frame has no end")
