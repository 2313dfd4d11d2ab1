"""Verification of an export's bytes: what was stored against what the writer recorded.

`check_object` streams one stored object back through decompression and its format's reader,
recomputing SHA-256 of the stored and of the content bytes, counting bytes and records per table,
and compares them with its manifest entry and with the document's own header and trailer. Corrupt
or truncated data becomes a `Problem` saying what and where, never an exception; only failures of
the byte source itself (a dropped connection) propagate. Pure: no storage, no database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from pipelines.compression.decoding import iter_decompressed
from pipelines.errors import PermanentError
from pipelines.formats import RecordStream, iter_records
from pipelines.manifest import ManifestObject
from pipelines.records import Record
from pipelines.verification_problems import (
    COMPRESSION_CORRUPT,
    FORMAT_CORRUPT,
    Problem,
    content_problems,
    count_problems,
    metadata_problems,
    stored_problems,
)


@dataclass(frozen=True)
class ObjectCheck:
    """What reading one object back measured, and every problem found in it."""

    name: str
    stored_bytes: int
    stored_sha256: str
    content_bytes: int | None
    content_sha256: str | None
    records: Mapping[str, int]
    complete: bool
    problems: Sequence[Problem]


class _SourceFailure(Exception):
    """Carries an error of the byte source through the decoders, which must not judge it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _DecodeFailure(Exception):
    """Carries a decompression error through the format reader, so the two are told apart."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Tap:
    """Hash and count bytes as they pass, remembering where the last piece started."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.bytes = 0
        self.piece_start = 0

    def take(self, piece: bytes) -> bytes:
        self.piece_start = self.bytes
        self.digest.update(piece)
        self.bytes += len(piece)
        return piece


def _stored(blobs: Iterable[bytes], tap: _Tap) -> Iterator[bytes]:
    source = iter(blobs)
    while True:
        try:
            blob = next(source)
        except StopIteration:
            return
        except Exception as exc:
            raise _SourceFailure(exc) from exc
        yield tap.take(blob)


def _content(stored: Iterator[bytes], compression: str, tap: _Tap) -> Iterator[bytes]:
    pieces = iter_decompressed(stored, compression)
    while True:
        try:
            piece = next(pieces)
        except StopIteration:
            return
        except (PermanentError, ValueError) as exc:
            raise _DecodeFailure(exc) from exc
        yield tap.take(piece)


def check_object(
    blobs: Iterable[bytes],
    entry: ManifestObject,
    *,
    format: str,
    compression: str,
    include_metadata: bool | None = None,
    export_id: str | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> ObjectCheck:
    """Read one stored object back and compare everything measurable with its manifest entry."""
    name = entry.name
    problems: list[Problem] = []
    stored_tap, content_tap = _Tap(), _Tap()
    stored = _stored(blobs, stored_tap)
    content = _content(stored, compression, content_tap)
    counts: dict[str, int] = {}
    parsed = decodable = False
    stream = None
    try:
        stream = iter_records(content, format=format)
        for record in stream:
            if on_record is not None:
                on_record(record)
        parsed = decodable = True
    except _SourceFailure as failure:
        raise failure.error from None
    except _DecodeFailure as failure:
        problems.append(
            _decode_problem(name, compression, failure.error, (stored_tap, content_tap), stream)
        )
    except (PermanentError, ValueError) as exc:
        problems.append(_format_problem(name, format, exc, content_tap, stream))
        decodable = True
    # After a format error, or a reader that stopped early, decompress the rest anyway so the
    # content digest covers every byte.
    decoded = decodable and _drain(content, name, compression, (stored_tap, content_tap), problems)
    if stream is not None:
        counts = dict(stream.counts)
    _drain_stored(stored)
    problems[:0] = stored_problems(entry, stored_tap.bytes, stored_tap.digest.hexdigest())
    content_sha256 = content_tap.digest.hexdigest() if decoded else None
    if decoded:
        problems.extend(content_problems(entry, content_tap.bytes, str(content_sha256)))
    if parsed and stream is not None:
        problems.extend(count_problems(entry, counts))
        problems.extend(metadata_problems(name, stream, counts, include_metadata, export_id))
    return ObjectCheck(
        name=name,
        stored_bytes=stored_tap.bytes,
        stored_sha256=stored_tap.digest.hexdigest(),
        content_bytes=content_tap.bytes if decoded else None,
        content_sha256=content_sha256,
        records=counts,
        complete=parsed,
        problems=problems,
    )


def verify_object(
    blobs: Iterable[bytes],
    entry: ManifestObject,
    *,
    format: str,
    compression: str,
    include_metadata: bool | None = None,
    export_id: str | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> list[Problem]:
    """Return every problem found reading one stored object back against its manifest entry."""
    check = check_object(
        blobs,
        entry,
        format=format,
        compression=compression,
        include_metadata=include_metadata,
        export_id=export_id,
        on_record=on_record,
    )
    return list(check.problems)


def _drain(
    content: Iterator[bytes],
    name: str,
    compression: str,
    taps: tuple[_Tap, _Tap],
    problems: list[Problem],
) -> bool:
    """Decompress the rest after a format error, so the content digest can still be compared."""
    try:
        for _ in content:
            pass
    except _SourceFailure as failure:
        raise failure.error from None
    except _DecodeFailure as failure:
        problems.append(_decode_problem(name, compression, failure.error, taps, None))
        return False
    return True


def _drain_stored(stored: Iterator[bytes]) -> None:
    """Read the stored bytes to their end, so size and SHA-256 cover the whole object."""
    try:
        for _ in stored:
            pass
    except _SourceFailure as failure:
        raise failure.error from None


def _records_read(stream: RecordStream | None) -> int:
    return sum(stream.counts.values()) if stream is not None else 0


def _decode_problem(
    name: str,
    compression: str,
    error: Exception,
    taps: tuple[_Tap, _Tap],
    stream: RecordStream | None,
) -> Problem:
    stored, content = taps
    where = f"in stored bytes {stored.piece_start}..{stored.bytes}"
    if stored.bytes == stored.piece_start:
        where = f"at the end of the stored bytes ({stored.bytes})"
    records = _records_read(stream)
    return Problem(
        COMPRESSION_CORRUPT,
        f"{name}: cannot decompress ({compression}) {where}: {error}; "
        f"{content.bytes} content bytes and {records} records read before it",
        name,
        {
            "storedOffset": stored.piece_start,
            "storedRead": stored.bytes,
            "contentRead": content.bytes,
            "recordsRead": records,
        },
    )


def _format_problem(
    name: str, format: str, error: Exception, tap: _Tap, stream: RecordStream | None
) -> Problem:
    records = _records_read(stream)
    return Problem(
        FORMAT_CORRUPT,
        f"{name}: not a readable {format} export: {error} "
        f"(content bytes {tap.piece_start}..{tap.bytes}, after {records} records)",
        name,
        {"contentOffset": tap.piece_start, "contentRead": tap.bytes, "recordsRead": records},
    )
