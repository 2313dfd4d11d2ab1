"""Frames, padding and readers: standard tools and our reader agree on padded, multi-frame data."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from dataclasses import dataclass

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.compression import detect_compression, iter_decompressed, open_codec
from pipelines.compression.frames import GZIP_PAD_MAX_BYTES, GZIP_PAD_MIN_BYTES
from pipelines.errors import PermanentError
from pipelines.parts import iter_parts


@dataclass(frozen=True)
class Chunk:
    data: bytes
    cursor: object | None
    records: int


def framed(compression: str, blobs: list[bytes], pad: int) -> bytes:
    codec = open_codec(compression)
    assert codec is not None
    out = []
    for blob in blobs:
        codec.start()
        out += [codec.compress(blob), codec.finish(), codec.padding(pad)]
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


@pytest.mark.skipif(shutil.which("gzip") is None, reason="needs the gzip tool")
def test_real_gzip_reads_members_and_padding() -> None:
    blob = framed("gzip", [b"one\n", b"two\n" * 1000, b""], pad=GZIP_PAD_MIN_BYTES + 300)
    result = subprocess.run(["gzip", "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"one\n" + b"two\n" * 1000
    assert gzip.decompress(blob) == result.stdout


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd tool")
def test_real_zstd_reads_frames_and_skippable_padding() -> None:
    blob = framed("zstd", [b"one\n", b"two\n" * 1000, b""], pad=300)
    result = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"one\n" + b"two\n" * 1000
    reader = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    assert reader.decompress(blob) == result.stdout


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.skipif(not (shutil.which("gzip") and shutil.which("zstd")), reason="needs tools")
def test_real_tools_read_the_whole_object_and_each_part_alone(compression: str) -> None:
    lines = [f"{i},user{i % 97},path/{i}\n".encode() * (i % 13) for i in range(3000)]
    chunks = [Chunk(line, i, 1) for i, line in enumerate(lines)]
    parts = list(iter_parts(chunks, compression=compression, part_size=8192))
    assert len(parts) > 2
    assert sum(p.padding_bytes for p in parts) > 0
    blob = b"".join(p.data for p in parts)
    result = subprocess.run([compression, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == b"".join(lines)
    alone = [
        subprocess.run([compression, "-dc"], input=p.data, capture_output=True, check=True).stdout
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


@pytest.mark.parametrize(("compression", "level"), [("gzip", 10), ("zstd", 23), ("brotli", 1)])
def test_invalid_compression_settings_are_refused(compression: str, level: int) -> None:
    with pytest.raises(PermanentError):
        open_codec(compression, level)
