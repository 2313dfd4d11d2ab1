"""Exact-size parts: sizes, round trips, self-contained parts and byte-identical resumes."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.compression import ZstdCodec, iter_decompressed
from pipelines.errors import SizeLimitError
from pipelines.parts import (
    MAX_PART_SIZE_BYTES,
    MIB,
    Part,
    ResumePoint,
    choose_part_size,
    iter_framed_parts,
    iter_parts,
)


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


WORDS = [b"alice", b"bob", b",", b"\n", b'"', b"\xc3\xa9t\xc3\xa9", b"=SUM(A1)", b" ", b"0123"]
text_blobs = st.lists(st.sampled_from(WORDS), max_size=400).map(b"".join)
chunk_data = st.one_of(text_blobs, st.binary(max_size=1500), st.just(b""))
chunk_lists = st.lists(st.tuples(chunk_data, st.booleans(), st.integers(0, 5)), max_size=40)
compressions = st.sampled_from(["none", "gzip", "zstd"])
part_sizes = st.integers(min_value=128, max_value=6000)


def make_chunks(spec: list[tuple[bytes, bool, int]]) -> list[Chunk]:
    return [
        Chunk(data, i if has_cursor else None, n) for i, (data, has_cursor, n) in enumerate(spec)
    ]


def chunks_after(chunks: list[Chunk], point: ResumePoint) -> list[Chunk]:
    if point.cursor is None:
        return chunks
    assert isinstance(point.cursor, int)
    return chunks[point.cursor + 1 :]


def run(chunks: list[Chunk], compression: str, part_size: int, **kw: object) -> list[Part]:
    return list(iter_parts(chunks, compression=compression, part_size=part_size, **kw))  # type: ignore[arg-type]


def content(parts: list[Part], compression: str) -> bytes:
    return b"".join(iter_decompressed((p.data for p in parts), compression))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=chunk_lists, compression=compressions, part_size=part_sizes)
def test_parts_round_trip_with_exact_sizes_and_counts(
    spec: list[tuple[bytes, bool, int]], compression: str, part_size: int
) -> None:
    chunks = make_chunks(spec)
    parts = run(chunks, compression, part_size)
    assert parts, "an object always has at least one part"
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert all(len(p.data) == part_size for p in parts[:-1])
    assert len(parts[-1].data) <= part_size
    assert content(parts, compression) == b"".join(c.data for c in chunks)
    assert sum(p.raw_bytes for p in parts) == sum(len(c.data) for c in chunks)
    assert sum(p.records for p in parts) == sum(c.records for c in chunks)
    assert parts[-1].resume is None


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=chunk_lists, compression=st.sampled_from(["gzip", "zstd"]), part_size=part_sizes)
def test_every_self_contained_part_decompresses_alone(
    spec: list[tuple[bytes, bool, int]], compression: str, part_size: int
) -> None:
    chunks = make_chunks(spec)
    parts = run(chunks, compression, part_size)
    alone = [content([p], compression) for p in parts if p.self_contained]
    if all(p.self_contained for p in parts):
        assert b"".join(alone) == b"".join(c.data for c in chunks)
    for part in parts:
        if part.self_contained and part.number < len(parts):
            assert part.padding_bytes > 0


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=chunk_lists, compression=compressions, part_size=part_sizes)
def test_resume_from_any_recorded_point_reproduces_the_object(
    spec: list[tuple[bytes, bool, int]], compression: str, part_size: int
) -> None:
    chunks = make_chunks(spec)
    parts = run(chunks, compression, part_size)
    assert all(p.resume is not None for p in parts[:-1])
    for part in parts:
        point = part.resume
        if point is None:
            continue
        assert point.next_part == part.number + 1
        assert point.stored_bytes == part.number * part_size
        assert point.records == sum(p.records for p in parts[: part.number])
        assert point.raw_bytes == sum(p.raw_bytes for p in parts[: part.number])
        resumed = run(chunks_after(chunks, point), compression, part_size, resume=point)
        assert resumed == parts[part.number :]


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=chunk_lists, compression=compressions, part_size=part_sizes)
def test_output_is_identical_on_every_run(
    spec: list[tuple[bytes, bool, int]], compression: str, part_size: int
) -> None:
    chunks = make_chunks(spec)
    assert run(chunks, compression, part_size) == run(chunks, compression, part_size)


class OptimisticZstd(ZstdCodec):
    """A codec whose size bound is wrong, to drive the overflow fallbacks."""

    def bound(self, size: int) -> int:
        return size // 8


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec=chunk_lists, part_size=part_sizes)
def test_a_frame_overrunning_its_bound_still_gives_exact_parts_and_resumes(
    spec: list[tuple[bytes, bool, int]], part_size: int
) -> None:
    chunks = make_chunks(spec)
    parts = list(iter_framed_parts(chunks, codec=OptimisticZstd(), part_size=part_size))
    assert all(len(p.data) == part_size for p in parts[:-1])
    assert content(parts, "zstd") == b"".join(c.data for c in chunks)
    for part in parts:
        if part.resume is not None:
            tail = chunks_after(chunks, part.resume)
            again = iter_framed_parts(
                tail, codec=OptimisticZstd(), part_size=part_size, resume=part.resume
            )
            assert list(again) == parts[part.number :]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_incompressible_chunks_smaller_than_a_part_never_split(compression: str) -> None:
    part_size = 64 * 1024
    chunks = [Chunk(random.Random(i).randbytes(20_000), i, 1) for i in range(40)]
    parts = run(chunks, compression, part_size)
    assert all(p.self_contained for p in parts)
    assert all(p.resume is not None for p in parts[:-1])
    assert all(len(p.data) == part_size for p in parts[:-1])


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_a_chunk_larger_than_a_part_resumes_from_the_cursor_before_it(compression: str) -> None:
    part_size = 4096
    noise = random.Random(7).randbytes(30_000)
    chunks = [Chunk(b"head\n", 0, 1), Chunk(noise, 1, 3), Chunk(b"tail\n", 2, 1)]
    parts = run(chunks, compression, part_size)
    assert len(parts) > 6
    assert all(p.self_contained for p in parts)
    inside = [p.resume for p in parts if p.resume is not None and p.resume.cursor == 0]
    assert len(inside) >= 5
    assert all(point.skip_bytes > 0 for point in inside)
    for point in inside:
        assert run(chunks[1:], compression, part_size, resume=point) == parts[point.next_part - 1 :]
    assert content(parts, compression) == b"".join(c.data for c in chunks)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    spec=chunk_lists,
    compression=compressions,
    part_size=part_sizes,
    cuts=st.lists(st.integers(0, 60_000), max_size=30),
)
def test_stored_bytes_do_not_depend_on_chunk_sizes(
    spec: list[tuple[bytes, bool, int]], compression: str, part_size: int, cuts: list[int]
) -> None:
    whole = b"".join(data for data, _, _ in spec)
    bounds = sorted({0, len(whole), *(c % (len(whole) + 1) for c in cuts)})
    rechunked = [Chunk(whole[a:b], None, 0) for a, b in itertools.pairwise(bounds)]
    first = [p.data for p in run(make_chunks(spec), compression, part_size)]
    assert [p.data for p in run(rechunked, compression, part_size)] == first


def test_an_empty_stream_gives_one_valid_empty_part() -> None:
    for compression in ("none", "gzip", "zstd"):
        parts = run([], compression, 1024)
        assert len(parts) == 1
        assert content(parts, compression) == b""


def test_uncompressed_resume_skips_the_uploaded_prefix() -> None:
    chunks = [Chunk(b"a" * 700, 0, 1), Chunk(b"b" * 700, None, 1), Chunk(b"c" * 700, 2, 1)]
    parts = run(chunks, "none", 1000)
    first = parts[0].resume
    assert first == ResumePoint(0, 2, 300, 1000, 1000, 1)
    assert run(chunks[1:], "none", 1000, resume=first) == parts[1:]


def test_choose_part_size_keeps_the_default_for_small_objects() -> None:
    assert choose_part_size(10 * MIB) == 8 * MIB
    assert choose_part_size(0, minimum=5 * MIB) == 5 * MIB


def test_choose_part_size_grows_so_an_object_fits_in_ten_thousand_parts() -> None:
    expected = 200 * 1024 * MIB  # 200 GiB
    size = choose_part_size(expected)
    assert size % MIB == 0
    assert expected / size <= 10_000
    assert size - MIB < expected / 10_000 < size


def test_choose_part_size_refuses_an_object_too_large_for_s3() -> None:
    assert choose_part_size(10_000 * MAX_PART_SIZE_BYTES) == MAX_PART_SIZE_BYTES
    with pytest.raises(SizeLimitError):
        choose_part_size(10_000 * MAX_PART_SIZE_BYTES + 1)


def mixed_stream(seed: int) -> list[Chunk]:
    """Alternate incompressible noise, long runs and short repeats: hard cases for a size bound."""
    rng = random.Random(seed)
    chunks = []
    for index in range(120):
        kind = index % 3
        if kind == 0:
            data = rng.randbytes(rng.randint(1, 9000))
        elif kind == 1:
            data = bytes([rng.randrange(256)]) * rng.randint(1, 50_000)
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(3, 7))) * 700
        chunks.append(Chunk(data, index, 1))
    return chunks


@pytest.mark.parametrize(
    ("compression", "level"),
    [("gzip", 1), ("gzip", 2), ("gzip", 6), ("gzip", 9), ("zstd", -7), ("zstd", 1), ("zstd", 19)],
)
def test_size_bound_holds_at_every_level(compression: str, level: int) -> None:
    chunks = mixed_stream(level + 100)
    parts = run(chunks, compression, 3000, level=level)
    assert all(p.self_contained for p in parts)
    assert all(len(p.data) == 3000 for p in parts[:-1])
    assert content(parts, compression) == b"".join(c.data for c in chunks)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_padding_stays_under_half_a_percent_of_an_8_mib_part(compression: str) -> None:
    rng = random.Random(5)
    rows = [f"{rng.getrandbits(64):x},{rng.randint(0, 10**9)},path/{i}\n" for i in range(600_000)]
    text = "".join(rows).encode()
    chunks = [Chunk(text[i : i + 65536], i, 1) for i in range(0, len(text), 65536)]
    parts = run(chunks, compression, 8 * MIB)
    stored = sum(len(p.data) for p in parts)
    assert sum(p.padding_bytes for p in parts) / stored < 0.005
