"""Digests computed while an export streams: SHA-256 of stored and of uncompressed bytes, counts.

`DigestTracker` taps the chunk stream and the part stream as they pass, so nothing is read twice.
A run resumed after a crash sees only the tail of the object and cannot finish these hashes
(hash states cannot be saved): digest the stored object instead with `digest_stored`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipelines.compression.decoding import iter_decompressed
from pipelines.parts import ChunkLike, Part

C = TypeVar("C", bound=ChunkLike)


@dataclass(frozen=True, slots=True)
class DigestSummary:
    """What the writer records about one object, and what verification recomputes."""

    compression: str
    stored_sha256: str
    stored_bytes: int
    content_sha256: str
    content_bytes: int
    records: int
    padding_bytes: int
    parts: int

    @property
    def compression_ratio(self) -> float:
        """Return uncompressed bytes per stored byte (1.0 for an empty object)."""
        return self.content_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def padding_ratio(self) -> float:
        """Return the share of stored bytes that is padding."""
        return self.padding_bytes / self.stored_bytes if self.stored_bytes else 0.0


class DigestTracker:
    """Hash chunks and parts as they stream past; ask for `summary()` when both are exhausted."""

    def __init__(self, *, compression: str) -> None:
        self._compression = compression
        self._stored = hashlib.sha256()
        # Uncompressed output is the stored bytes: one hash serves both.
        self._content = self._stored if compression == "none" else hashlib.sha256()
        self._stored_bytes = 0
        self._content_bytes = 0
        self._records = 0
        self._padding = 0
        self._parts = 0

    def chunks(self, chunks: Iterable[C]) -> Iterator[C]:
        """Pass chunks through, hashing their uncompressed bytes and counting records."""
        for chunk in chunks:
            if self._content is not self._stored:
                self._content.update(chunk.data)
            self._content_bytes += len(chunk.data)
            self._records += chunk.records
            yield chunk

    def parts(self, parts: Iterable[Part]) -> Iterator[Part]:
        """Pass parts through, hashing the bytes that will be stored."""
        for part in parts:
            self._stored.update(part.data)
            self._stored_bytes += len(part.data)
            self._padding += part.padding_bytes
            self._parts += 1
            yield part

    def summary(self) -> DigestSummary:
        """Return the digests of everything seen so far."""
        return DigestSummary(
            compression=self._compression,
            stored_sha256=self._stored.hexdigest(),
            stored_bytes=self._stored_bytes,
            content_sha256=self._content.hexdigest(),
            content_bytes=self._content_bytes,
            records=self._records,
            padding_bytes=self._padding,
            parts=self._parts,
        )


def digest_stored(blobs: Iterable[bytes], *, compression: str, records: int = 0) -> DigestSummary:
    """Digest a stored object read back as blobs; `records` comes from whoever counted them."""
    stored = hashlib.sha256()
    counts = {"stored": 0}

    def tap(source: Iterable[bytes]) -> Iterator[bytes]:
        for blob in source:
            stored.update(blob)
            counts["stored"] += len(blob)
            yield blob

    content = hashlib.sha256()
    content_bytes = 0
    for piece in iter_decompressed(tap(blobs), compression):
        content.update(piece)
        content_bytes += len(piece)
    return DigestSummary(
        compression=compression,
        stored_sha256=stored.hexdigest(),
        stored_bytes=counts["stored"],
        content_sha256=content.hexdigest(),
        content_bytes=content_bytes,
        records=records,
        padding_bytes=0,
        parts=0,
    )
