"""The problems verification reports: stable codes, `Problem`, and the comparisons behind them.

Compares what reading an export back measured (sizes, SHA-256s, record counts, header and
trailer) with its manifest entry and turns each difference into a `Problem` people can act on.
Pure: it reads no bytes itself (`pipelines.verification` does), no storage, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pipelines.formats import RecordStream
from pipelines.manifest import ManifestObject

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


def stored_problems(entry: ManifestObject, size: int, digest: str) -> list[Problem]:
    """Return the problems of the stored bytes' size and SHA-256 against the manifest entry."""
    name = entry.name
    problems: list[Problem] = []
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


def content_problems(entry: ManifestObject, size: int, digest: str) -> list[Problem]:
    """Return the problems of the uncompressed size and SHA-256 against the manifest entry."""
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


def count_problems(entry: ManifestObject, counts: Mapping[str, int]) -> list[Problem]:
    """Return a problem for every table whose record count differs from the manifest's."""
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


def metadata_problems(
    name: str,
    stream: RecordStream,
    counts: Mapping[str, int],
    include_metadata: bool | None,
    export_id: str | None,
) -> list[Problem]:
    """Return the problems of the document's own header and trailer against what was read."""
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
