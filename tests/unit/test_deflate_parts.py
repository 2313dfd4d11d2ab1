"""gzip parts deflated on threads: the bytes never depend on scheduling, errors and early stops
end the pool."""

from __future__ import annotations

import gzip
import random
import threading
import time
from dataclasses import dataclass

import pytest

from pipelines import deflate_parts
from pipelines.compression.frames import GzipCodec
from pipelines.deflate_parts import iter_deflate_parts
from pipelines.part_stream import Part


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


class JitteryGzip(GzipCodec):
    """Deflates like GzipCodec but takes a random while over each block, as a loaded machine."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def compress_block(self, data: bytes, history: bytes) -> tuple[bytes, int]:
        with self.lock:
            pause = self.rng.random() * 0.002
        time.sleep(pause)
        return super().compress_block(data, history)


class FailingGzip(GzipCodec):
    """Fails on the `fail_at`-th block."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.calls = 0
        self.lock = threading.Lock()

    def compress_block(self, data: bytes, history: bytes) -> tuple[bytes, int]:
        with self.lock:
            self.calls += 1
            if self.calls == self.fail_at:
                raise MemoryError("no memory for this block")
        return super().compress_block(data, history)


def csv_chunks(rows: int, seed: int = 1) -> list[Chunk]:
    rng = random.Random(seed)
    lines = [
        f"{i},{rng.getrandbits(48):x},user{i % 97}@example.com,path/{i}/{rng.random()}\n".encode()
        for i in range(rows)
    ]
    return [Chunk(b"".join(lines[i : i + 500]), i, 500) for i in range(0, rows, 500)]


def deflate(chunks: list[Chunk], codec: GzipCodec, part_size: int) -> list[Part]:
    return list(iter_deflate_parts(chunks, codec=codec, part_size=part_size))


def deflate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("deflate")]


@pytest.mark.parametrize("in_flight", [1, 3, 16])
def test_parts_are_the_same_bytes_however_blocks_are_scheduled(
    in_flight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = csv_chunks(60_000)
    part_size = 96 * 1024
    expected = deflate(chunks, GzipCodec(), part_size)
    assert len(expected) > 10
    monkeypatch.setattr(deflate_parts, "MAX_BLOCKS_IN_FLIGHT", in_flight)
    jittered = deflate(chunks, JitteryGzip(seed=in_flight), part_size)
    assert [p.data for p in jittered] == [p.data for p in expected]
    assert [p.resume for p in jittered] == [p.resume for p in expected]
    assert all(len(p.data) == part_size for p in jittered[:-1])
    assert gzip.decompress(b"".join(p.data for p in jittered)) == b"".join(c.data for c in chunks)


def test_blocks_shrink_at_a_part_end_so_padding_is_a_small_block_at_most() -> None:
    codec = GzipCodec()
    parts = deflate(csv_chunks(60_000), codec, 96 * 1024)
    small_block = codec.bound(deflate_parts.MIN_BLOCK_BYTES) + codec.min_padding_bytes
    for part in parts[:-1]:
        assert part.self_contained
        assert part.padding_bytes < small_block


def test_a_block_that_fails_stops_the_export_with_its_error_and_ends_the_pool() -> None:
    with pytest.raises(MemoryError, match="no memory for this block"):
        deflate(csv_chunks(20_000), FailingGzip(fail_at=7), 64 * 1024)
    assert deflate_threads() == []


def test_stopping_after_the_first_part_ends_the_pool() -> None:
    parts = iter_deflate_parts(csv_chunks(40_000), codec=GzipCodec(), part_size=64 * 1024)
    first = next(parts)
    assert len(first.data) == 64 * 1024
    parts.close()
    assert deflate_threads() == []


class OptimisticGzip(GzipCodec):
    """A codec whose size bound is wrong, to drive the overflow fallbacks."""

    def bound(self, size: int) -> int:
        return size // 8

    def largest_input(self, room: int) -> int:
        return max(0, room * 8)


def test_a_block_overrunning_its_bound_still_gives_exact_parts_that_decompress() -> None:
    chunks = [Chunk(random.Random(i).randbytes(3000), i, 1) for i in range(60)]
    expected = b"".join(c.data for c in chunks)
    for part_size in (700, 4096, 20_000):
        parts = deflate(chunks, OptimisticGzip(), part_size)
        assert all(len(p.data) == part_size for p in parts[:-1])
        assert any(not p.self_contained for p in parts)
        assert gzip.decompress(b"".join(p.data for p in parts)) == expected


def test_with_one_block_in_flight_an_overrun_object_resumes_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deflate_parts, "MAX_BLOCKS_IN_FLIGHT", 1)
    chunks = [Chunk(random.Random(i).randbytes(900) + b"row\n" * 400, i, 1) for i in range(80)]
    parts = deflate(chunks, OptimisticGzip(), 5000)
    resumable = [p for p in parts if p.resume is not None]
    assert resumable
    for part in resumable:
        assert part.resume is not None
        assert isinstance(part.resume.cursor, int)
        tail = chunks[part.resume.cursor + 1 :]
        again = iter_deflate_parts(tail, codec=OptimisticGzip(), part_size=5000, resume=part.resume)
        assert [p.data for p in again] == [p.data for p in parts[part.number :]]
