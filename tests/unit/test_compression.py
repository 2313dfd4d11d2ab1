"""Frames, padding and readers: standard tools and our reader agree on padded, multi-frame data."""

from __future__ import annotations

import gzip
import hashlib
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from system_tools import system_tool

from pipelines.compression import detect_compression, iter_decompressed, open_codec
from pipelines.compression.frames import (
    DEFAULT_GZIP_LEVEL,
    GZIP_PAD_MAX_BYTES,
    GZIP_PAD_MIN_BYTES,
    MAX_GZIP_LEVEL,
    MIN_GZIP_LEVEL,
    GzipCodec,
)
from pipelines.deflate_parts import BLOCK_BYTES
from pipelines.errors import PermanentError
from pipelines.parts import iter_parts


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


def gzip_member(codec: GzipCodec, blob: bytes, block: int = 700) -> bytes:
    """Write `blob` as one member of `block`-byte blocks, as the parts stage does."""
    out = [codec.header]
    crc, history = 0, b""
    for start in range(0, len(blob), block):
        piece = blob[start : start + block]
        deflated, piece_crc = codec.compress_block(piece, history)
        out.append(deflated)
        crc = codec.combine_crc(crc, piece_crc, len(piece))
        history = (history + piece)[-codec.history_bytes :]
    out.append(codec.trailer(crc, len(blob)))
    return b"".join(out)


def framed(compression: str, blobs: list[bytes], pad: int) -> bytes:
    codec = open_codec(compression)
    assert codec is not None
    out = []
    for blob in blobs:
        if isinstance(codec, GzipCodec):
            out.append(gzip_member(codec, blob))
        else:
            codec.start()
            out += [codec.compress(blob), codec.finish()]
        out.append(codec.padding(pad))
    return b"".join(out)


@pytest.mark.parametrize(
    "size",
    [0, 26, 27, 100, GZIP_PAD_MAX_BYTES, GZIP_PAD_MAX_BYTES + 1, GZIP_PAD_MAX_BYTES + 26, 200_000],
)
def test_gzip_padding_has_the_exact_size_and_holds_no_content(size: int) -> None:
    codec = open_codec("gzip")
    assert codec is not None
    pad = codec.padding(size)
    assert len(pad) == size
    assert gzip.decompress(pad + gzip.compress(b"x", mtime=0)) == b"x"
    assert b"".join(iter_decompressed([pad], "gzip")) == b""


@pytest.mark.parametrize("size", [0, 8, 9, 5000])
def test_zstd_padding_is_a_skippable_frame_of_the_exact_size(size: int) -> None:
    codec = open_codec("zstd")
    assert codec is not None
    pad = codec.padding(size)
    assert len(pad) == size
    assert b"".join(iter_decompressed([pad], "zstd")) == b""


@pytest.mark.parametrize(("compression", "size"), [("gzip", 25), ("zstd", 7)])
def test_padding_too_small_to_encode_is_refused(compression: str, size: int) -> None:
    codec = open_codec(compression)
    assert codec is not None
    with pytest.raises(ValueError, match="needs at least"):
        codec.padding(size)


def test_real_gzip_reads_members_and_padding() -> None:
    gzip_tool = system_tool("gzip", package="gzip")
    blob = framed("gzip", [b"one\n", b"two\n" * 1000, b""], pad=GZIP_PAD_MIN_BYTES + 300)
    result = subprocess.run([gzip_tool, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"one\n" + b"two\n" * 1000
    assert gzip.decompress(blob) == result.stdout


def test_real_zstd_reads_frames_and_skippable_padding() -> None:
    zstd_tool = system_tool("zstd", package="zstd")
    blob = framed("zstd", [b"one\n", b"two\n" * 1000, b""], pad=300)
    result = subprocess.run([zstd_tool, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"one\n" + b"two\n" * 1000
    reader = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    assert reader.decompress(blob) == result.stdout


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_real_tools_read_the_whole_object_and_each_part_alone(compression: str) -> None:
    tool = system_tool(compression, package=compression)
    lines = [f"{i},user{i % 97},path/{i}\n".encode() * (i % 13) for i in range(3000)]
    chunks = [Chunk(line, i, 1) for i, line in enumerate(lines)]
    parts = list(iter_parts(chunks, compression=compression, part_size=8192))
    assert len(parts) > 2
    assert sum(p.padding_bytes for p in parts) > 0
    blob = b"".join(p.data for p in parts)
    result = subprocess.run([tool, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"".join(lines)
    alone = [
        subprocess.run([tool, "-dc"], input=p.data, capture_output=True, check=True).stdout
        for p in parts
    ]
    assert b"".join(alone) == result.stdout


@settings(max_examples=100, deadline=None)
@given(
    blobs=st.lists(st.binary(max_size=2000), max_size=6),
    pad=st.integers(30, 400),
    compression=st.sampled_from(["gzip", "zstd"]),
    cut=st.integers(1, 997),
)
def test_reader_reads_across_frames_in_any_slicing(
    blobs: list[bytes], pad: int, compression: str, cut: int
) -> None:
    blob = framed(compression, blobs, pad)
    pieces = [blob[i : i + cut] for i in range(0, len(blob), cut)]
    assert b"".join(iter_decompressed(pieces, compression)) == b"".join(blobs)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_data_is_reported(compression: str) -> None:
    blob = framed(compression, [b"payload " * 100], pad=0)
    with pytest.raises(PermanentError, match="truncated"):
        b"".join(iter_decompressed([blob[:-3]], compression))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_data_is_reported(compression: str) -> None:
    blob = bytearray(framed(compression, [bytes(range(256)) * 40], pad=0))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(PermanentError, match="corrupt"):
        b"".join(iter_decompressed([bytes(blob)], compression))


def test_reader_output_comes_in_bounded_pieces() -> None:
    blob = framed("gzip", [b"\0" * (20 * 1024 * 1024)], pad=0)
    sizes = [len(piece) for piece in iter_decompressed([blob], "gzip")]
    assert sum(sizes) == 20 * 1024 * 1024
    assert max(sizes) <= 1024 * 1024


def test_compression_is_detected_from_magic_bytes() -> None:
    assert detect_compression(framed("gzip", [b"x"], 0)) == "gzip"
    assert detect_compression(framed("zstd", [b"x"], 0)) == "zstd"
    zstd = open_codec("zstd")
    assert zstd is not None
    assert detect_compression(zstd.padding(16)) == "zstd"
    assert detect_compression(b'{"users": []}') == "none"
    assert detect_compression(b"") == "none"


@pytest.mark.parametrize(
    ("compression", "level"), [("gzip", -1), ("gzip", 0), ("gzip", 10), ("zstd", 23), ("brotli", 1)]
)
def test_invalid_compression_settings_are_refused(compression: str, level: int) -> None:
    with pytest.raises(PermanentError):
        open_codec(compression, level)


def test_gzip_levels_are_gzips_own_scale() -> None:
    with pytest.raises(PermanentError, match="between 1 and 9"):
        open_codec("gzip", 0)
    assert (MIN_GZIP_LEVEL, DEFAULT_GZIP_LEVEL, MAX_GZIP_LEVEL) == (1, 6, 9)


GZIP_LEVELS = list(range(MIN_GZIP_LEVEL, MAX_GZIP_LEVEL + 1))
BLOCK = BLOCK_BYTES  # what the parts stage deflates per block


def hard_inputs(size: int) -> Iterator[tuple[str, bytes]]:
    """Yield inputs that deflate badly: noise, noise over long codes, noise between runs."""
    rng = random.Random(size)
    yield "random", rng.randbytes(size)
    # The static tables (level 1) code bytes 144-255 with their longest, 9-bit literal codes.
    yield "long codes", bytes(rng.randrange(144, 256) for _ in range(size))
    mixed = bytearray()
    while len(mixed) < size:
        if rng.random() < 0.5:
            mixed += rng.randbytes(rng.randint(1, 3000))
        else:
            mixed += bytes([rng.randrange(256)]) * rng.randint(1, 3000)
    yield "mixed", bytes(mixed[:size])


def block_sizes(codec: GzipCodec, data: bytes, block: int) -> list[tuple[int, int]]:
    """Deflate `data` as one member's blocks of `block` bytes; return (in, out) per block."""
    sizes = []
    history = b""
    for start in range(0, max(len(data), 1), block):
        piece = data[start : start + block]
        deflated, _ = codec.compress_block(piece, history)
        history = (history + piece)[-codec.history_bytes :]
        sizes.append((len(piece), len(deflated)))
    return sizes


@pytest.mark.parametrize("level", GZIP_LEVELS)
def test_gzip_bound_covers_a_block_and_the_trailer_on_incompressible_input(level: int) -> None:
    codec = GzipCodec(level)
    trailer = len(codec.trailer(0, 0))
    checked = 0
    for size in (0, 1, 100, 5000, BLOCK, 200_000, 1_100_000):
        for kind, data in hard_inputs(size):
            for block in (size or 1, 1000, BLOCK, 70_000):
                for fed, out in block_sizes(codec, data, block):
                    assert out + trailer <= codec.bound(fed), (kind, size, block, fed, out)
                    checked += 1
    assert checked > 100


def test_gzip_bound_is_tight_enough_to_waste_little_of_a_part() -> None:
    noise = random.Random(3).randbytes(BLOCK)
    for level in GZIP_LEVELS:
        codec = GzipCodec(level)
        ((fed, out),) = block_sizes(codec, noise, BLOCK)
        # The bound decides where a part ends: slack beyond the real output becomes padding.
        assert codec.bound(fed) - out < (BLOCK // 4 if level == 1 else BLOCK // 32), level


@pytest.mark.parametrize("level", GZIP_LEVELS)
@given(room=st.integers(0, 10**7))
def test_largest_input_is_the_inverse_of_the_bound(level: int, room: int) -> None:
    codec = GzipCodec(level)
    size = codec.largest_input(room)
    assert size == 0 or codec.bound(size) <= room
    assert codec.bound(size + 1) > room


def gzip_parts(level: int, lines: list[bytes], part_size: int) -> list[bytes]:
    chunks = [Chunk(line, i, 1) for i, line in enumerate(lines)]
    return [
        p.data for p in iter_parts(chunks, compression="gzip", level=level, part_size=part_size)
    ]


def csv_lines(count: int) -> list[bytes]:
    return [
        f"{i},user{i % 97}@example.com,path/{i}/\u00e9t\u00e9.csv\n".encode() for i in range(count)
    ]


@pytest.mark.parametrize("level", GZIP_LEVELS)
def test_gzip_output_is_the_same_bytes_on_every_run(level: int) -> None:
    lines = csv_lines(20_000)
    first = gzip_parts(level, lines, 64 * 1024)
    assert gzip_parts(level, lines, 64 * 1024) == first
    assert len(first) > 2


def test_gzip_output_is_the_same_bytes_in_a_fresh_process() -> None:
    script = (
        "import hashlib, sys\n"
        "sys.path.insert(0, 'tests')  # the test helpers' folder, as pytest puts it on the path\n"
        "from tests.unit.test_compression import csv_lines, gzip_parts\n"
        f"for level in range({MIN_GZIP_LEVEL}, {MAX_GZIP_LEVEL + 1}):\n"
        "    parts = gzip_parts(level, csv_lines(20_000), 64 * 1024)\n"
        "    print(hashlib.sha256(b''.join(parts)).hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
    )
    here = [
        hashlib.sha256(b"".join(gzip_parts(level, csv_lines(20_000), 64 * 1024))).hexdigest()
        for level in GZIP_LEVELS
    ]
    assert child.stdout.split() == here


@pytest.mark.parametrize("level", GZIP_LEVELS)
def test_gzip_tool_and_python_read_every_level_whole_and_part_by_part(level: int) -> None:
    gzip_tool = system_tool("gzip", package="gzip")
    lines = [*csv_lines(6000), random.Random(level).randbytes(30_000), *csv_lines(3000)]
    parts = gzip_parts(level, lines, 16 * 1024)
    assert len(parts) > 4
    expected = b"".join(lines)
    whole = b"".join(parts)
    result = subprocess.run([gzip_tool, "-dc"], input=whole, capture_output=True, check=True)
    assert result.stdout == expected
    assert gzip.decompress(whole) == expected
    alone = [gzip.decompress(part) for part in parts]
    assert b"".join(alone) == expected
    tool = [
        subprocess.run(["gzip", "-dc"], input=p, capture_output=True, check=True).stdout
        for p in parts
    ]
    assert tool == alone
