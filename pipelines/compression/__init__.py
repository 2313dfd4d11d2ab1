"""Compression for exports: gzip members and zstd frames that can end at part boundaries.

`frames` writes independent members/frames plus format-level padding; `decoding` reads them back
across frame boundaries and recognises a compression from its magic bytes. No I/O here.
"""

from __future__ import annotations

from pipelines.compression.decoding import detect_compression, iter_decompressed
from pipelines.compression.frames import (
    COMPRESSIONS,
    FrameCodec,
    GzipCodec,
    ZstdCodec,
    default_level,
    open_codec,
)

__all__ = [
    "COMPRESSIONS",
    "FrameCodec",
    "GzipCodec",
    "ZstdCodec",
    "default_level",
    "detect_compression",
    "iter_decompressed",
    "open_codec",
]
