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
from dataclasses import dataclass, field
from typing import Any, Final

from pipelines.compression.decoding import iter_decompressed
from pipelines.errors import PermanentError
from pipelines.formats import RecordStream, iter_records
from pipelines.manifest import ManifestObject
from pipelines.records import Record

# Stable problem codes: stored in reports and matched by tests and dashboards, never renamed.
OBJECT_MISSING: Final = "object-missing"
OBJECT_TRUNCATED: Final = "object-truncated"
SIZE_MISMATCH: Final = "size-mismatch"
SHA256_MISMATCH: Final = "sha256-mismatch"
CONTENT_SIZE_MISMATCH: Final = "content-size-mismatch"
CONTENT_SHA256_MISMATCH: Final = "content-sha256-mismatch"
COMPRESSION_CORRUPT: Final = "compression-corrupt"
FORMAT_CORRUPT: Final = "format-corrupt"
RECORD_COUNT_MISMATCH: Final = "record-count-mismatch"
TRAILER_MISSING: Final = "trailer-missing"
TRAILER_COUNT_MISMATCH: Final = "trailer-count-mismatch"
HEADER_MISSING: Final = "header-missing"
HEADER_MISMATCH: Final = "header-mismatch"
MANIFEST_MISSING: Final = "manifest-missing"
MANIFEST_INVALID: Final = "manifest-invalid"
MANIFEST_TOTALS_MISMATCH: Final = "manifest-totals-mismatch"
SHA256SUMS_MISSING: Final = "sha256sums-missing"
SHA256SUMS_MISMATCH: Final = "sha256sums-mismatch"
SIDECAR_MISMATCH: Final = "sidecar-mismatch"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an export: a stable code, a message for people, and where."""

    code: str
    message: str
    object_name: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """Return the problem as a JSON-ready dict."""
        data: dict[str, Any] = {
            "code": self.code,
            "object": self.object_name,
            "message": self.message,
        }
        if self.details:
            data["details"] = dict(self.details)
        return data


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
    problems[:0] = _stored_problems(entry, stored_tap)
    content_sha256 = content_tap.digest.hexdigest() if decoded else None
    if decoded:
        problems.extend(_content_problems(entry, content_tap.bytes, str(content_sha256)))
    if parsed and stream is not None:
        problems.extend(_count_problems(entry, counts))
        problems.extend(_metadata_problems(name, stream, counts, include_metadata, export_id))
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


def _stored_problems(entry: ManifestObject, tap: _Tap) -> list[Problem]:
    name = entry.name
    problems: list[Problem] = []
    size = tap.bytes
    details = {"expected": entry.size_bytes, "actual": size}
    if size < entry.size_bytes:
        problems.append(
            Problem(
                OBJECT_TRUNCATED,
                f"{name}: has {size} bytes but the manifest lists {entry.size_bytes}: "
                f"the last {entry.size_bytes - size} bytes are missing",
                name,
                details,
            )
        )
    elif size > entry.size_bytes:
        problems.append(
            Problem(
                SIZE_MISMATCH,
                f"{name}: has {size} bytes but the manifest lists {entry.size_bytes} "
                f"({size - entry.size_bytes} bytes too many)",
                name,
                details,
            )
        )
    digest = tap.digest.hexdigest()
    if digest != entry.sha256:
        problems.append(
            Problem(
                SHA256_MISMATCH,
                f"{name}: SHA-256 of the stored bytes is {digest}, "
                f"the manifest lists {entry.sha256}",
                name,
                {"expected": entry.sha256, "actual": digest},
            )
        )
    return problems


def _content_problems(entry: ManifestObject, size: int, digest: str) -> list[Problem]:
    name = entry.name
    problems: list[Problem] = []
    if size != entry.content_bytes:
        problems.append(
            Problem(
                CONTENT_SIZE_MISMATCH,
                f"{name}: content is {size} bytes uncompressed, the manifest lists "
                f"{entry.content_bytes}",
                name,
                {"expected": entry.content_bytes, "actual": size},
            )
        )
    if digest != entry.content_sha256:
        problems.append(
            Problem(
                CONTENT_SHA256_MISMATCH,
                f"{name}: SHA-256 of the uncompressed content is {digest}, the manifest lists "
                f"{entry.content_sha256}",
                name,
                {"expected": entry.content_sha256, "actual": digest},
            )
        )
    return problems


def _count_problems(entry: ManifestObject, counts: Mapping[str, int]) -> list[Problem]:
    problems: list[Problem] = []
    for table in sorted(set(entry.records) | set(counts), key=table_order):
        expected, actual = entry.records.get(table, 0), counts.get(table, 0)
        if expected != actual:
            problems.append(
                Problem(
                    RECORD_COUNT_MISMATCH,
                    f"{entry.name}: {table} has {actual} records, the manifest lists {expected}",
                    entry.name,
                    {"table": table, "expected": expected, "actual": actual},
                )
            )
    return problems


def _metadata_problems(
    name: str,
    stream: RecordStream,
    counts: Mapping[str, int],
    include_metadata: bool | None,
    export_id: str | None,
) -> list[Problem]:
    problems: list[Problem] = []
    if stream.header is None and include_metadata:
        problems.append(Problem(HEADER_MISSING, f"{name}: the export header is missing", name))
    elif stream.header is not None and export_id not in (None, stream.header.export_id):
        problems.append(
            Problem(
                HEADER_MISMATCH,
                f"{name}: the header names export {stream.header.export_id!r}, "
                f"the manifest {export_id!r}",
                name,
                {"expected": export_id, "actual": stream.header.export_id},
            )
        )
    if stream.trailer is None:
        if include_metadata:
            problems.append(
                Problem(
                    TRAILER_MISSING,
                    f"{name}: the closing metadata with record counts is missing",
                    name,
                )
            )
        return problems
    stated = stream.trailer.counts
    for table in sorted(set(stated) | set(counts), key=table_order):
        said, actual = stated.get(table, 0), counts.get(table, 0)
        if said != actual:
            problems.append(
                Problem(
                    TRAILER_COUNT_MISMATCH,
                    f"{name}: its metadata says {table} has {said} records, {actual} were read",
                    name,
                    {"table": table, "expected": said, "actual": actual},
                )
            )
    return problems


def table_order(table: str) -> tuple[int, str]:
    """Return a sort key listing tables in stream order (users, then files), others after."""
    order = {"users": 0, "files": 1}
    return order.get(table, len(order)), table
