"""Digests while streaming match digests of the finished object and of its content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from pipelines.digests import DigestTracker, digest_stored
from pipelines.parts import iter_parts


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


CHUNKS = [Chunk(f'{i},name {i},"q"\n'.encode() * 40, i, 40) for i in range(500)]
CONTENT = b"".join(c.data for c in CHUNKS)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_streaming_digests_match_the_stored_object(compression: str) -> None:
    tracker = DigestTracker(compression=compression)
    chunks = tracker.chunks(CHUNKS)
    parts = list(tracker.parts(iter_parts(chunks, compression=compression, part_size=16384)))
    stored = b"".join(p.data for p in parts)
    summary = tracker.summary()
    assert summary.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert summary.content_sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert summary.stored_bytes == len(stored)
    assert summary.content_bytes == len(CONTENT)
    assert summary.records == 500 * 40
    assert summary.parts == len(parts)
    assert summary.padding_bytes == sum(p.padding_bytes for p in parts)
    assert summary.compression_ratio == pytest.approx(len(CONTENT) / len(stored))
    assert all(p.sha256 == hashlib.sha256(p.data).hexdigest() for p in parts)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_digest_of_a_read_back_object_equals_the_streaming_digest(compression: str) -> None:
    tracker = DigestTracker(compression=compression)
    parts = iter_parts(tracker.chunks(CHUNKS), compression=compression, part_size=16384)
    blobs = [p.data for p in tracker.parts(parts)]
    streamed = tracker.summary()
    again = digest_stored(iter(blobs), compression=compression, records=streamed.records)
    assert again.stored_sha256 == streamed.stored_sha256
    assert again.content_sha256 == streamed.content_sha256
    assert again.content_bytes == streamed.content_bytes
    assert again.compression_ratio == streamed.compression_ratio


def test_compression_pays_off_on_export_like_data() -> None:
    tracker = DigestTracker(compression="zstd")
    parts = iter_parts(tracker.chunks(CHUNKS), compression="zstd", part_size=64 * 1024)
    for _ in tracker.parts(parts):
        pass
    summary = tracker.summary()
    assert summary.compression_ratio > 5
    assert summary.padding_ratio < 0.1


def test_an_empty_object_has_neutral_ratios() -> None:
    summary = DigestTracker(compression="none").summary()
    assert summary.compression_ratio == 1.0
    assert summary.padding_ratio == 0.0
    assert summary.content_sha256 == hashlib.sha256(b"").hexdigest()
