"""Verify one finished export where it is stored, and report every problem found.

`verify_export` reads the manifest, checks its totals, `SHA256SUMS` and any sidecars against it,
streams every data object back through `verification.check_object`, and feeds the `files` records
to a `FileObjectChecker` on the way when the export carries object keys. The result is a
`VerificationReport` whose `as_json()` is what `data_exports.verification_report` stores.
Storage comes in as a `Location` and a checker factory; nothing here opens a connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from pipelines.companions import check_manifest_totals, check_sha256sums, check_sidecar
from pipelines.file_objects import NO_OBJECT_KEYS_NOTE, FileCheckResult, FileObjectChecker
from pipelines.locations import Location
from pipelines.manifest import (
    MANIFEST_NAME,
    SHA256SUMS_NAME,
    Manifest,
    ManifestError,
    ManifestObject,
    parse_manifest,
)
from pipelines.records import Record
from pipelines.storage.sinks import SIDECAR_SUFFIX
from pipelines.verification import check_object
from pipelines.verification_problems import (
    MANIFEST_INVALID,
    MANIFEST_MISSING,
    OBJECT_MISSING,
    SHA256SUMS_MISSING,
    Problem,
)

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


class VerifyProgress(Protocol):
    """Told how far verification has read, for a progress bar."""

    def start(self, total_bytes: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...


@dataclass
class VerificationReport:
    """The outcome of verifying one export: what was read, every problem, and notes."""

    location: str
    export_id: str | None = None
    objects_checked: int = 0
    stored_bytes: int = 0
    records: dict[str, int] = field(default_factory=dict)
    file_objects_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_omitted: int = 0
    notes: list[str] = field(default_factory=list)
    deep: bool = False
    duration_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Return True when no problem was found."""
        return not self.problems and not self.problems_omitted

    def problem_counts(self) -> dict[str, int]:
        """Return how many listed problems carry each code."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.code] = counts.get(problem.code, 0) + 1
        return counts

    def as_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict, for storing and for `--json`."""
        return {
            "reportVersion": REPORT_VERSION,
            "exportId": self.export_id,
            "location": self.location,
            "passed": self.passed,
            "deep": self.deep,
            "objectsChecked": self.objects_checked,
            "storedBytes": self.stored_bytes,
            "records": dict(self.records),
            "fileObjectsChecked": self.file_objects_checked,
            "problemCounts": self.problem_counts(),
            "problemsOmitted": self.problems_omitted,
            "problems": [problem.as_json() for problem in self.problems],
            "notes": list(self.notes),
            "durationSeconds": round(self.duration_seconds, 3),
        }


CheckerFactory = Callable[[], FileObjectChecker]


def verify_export(
    location: Location,
    *,
    file_checker: CheckerFactory | None = None,
    progress: VerifyProgress | None = None,
    deep: bool = False,
) -> VerificationReport:
    """Verify the export at `location`; `file_checker` builds the checker for file objects."""
    started = time.monotonic()
    report = VerificationReport(location=location.address, deep=deep)
    try:
        manifest = _load_manifest(location, report)
        if manifest is not None:
            _verify_manifest(location, manifest, report, file_checker, progress)
    finally:
        report.duration_seconds = time.monotonic() - started
    logger.info(
        "export %s at %s: verification %s with %d problem(s) in %.2f s",
        report.export_id,
        report.location,
        "passed" if report.passed else "failed",
        len(report.problems) + report.problems_omitted,
        report.duration_seconds,
    )
    return report


def _load_manifest(location: Location, report: VerificationReport) -> Manifest | None:
    data = location.read_small(MANIFEST_NAME)
    if data is None:
        report.problems.append(
            Problem(MANIFEST_MISSING, f"{location.address} has no {MANIFEST_NAME}", MANIFEST_NAME)
        )
        return None
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        report.problems.append(Problem(MANIFEST_INVALID, str(exc), MANIFEST_NAME))
        return None
    report.export_id = manifest.export_id
    report.problems.extend(check_manifest_totals(orjson.loads(data), manifest))
    return manifest


def _verify_manifest(
    location: Location,
    manifest: Manifest,
    report: VerificationReport,
    file_checker: CheckerFactory | None,
    progress: VerifyProgress | None,
) -> None:
    names = set(location.names())
    sums = location.read_small(SHA256SUMS_NAME) if SHA256SUMS_NAME in names else None
    if sums is None:
        report.problems.append(
            Problem(SHA256SUMS_MISSING, f"{location.address} has no {SHA256SUMS_NAME}")
        )
    else:
        report.problems.extend(check_sha256sums(sums, manifest.objects))
    _note_unlisted(names, manifest.objects, report)
    if progress is not None:
        progress.start(sum(item.size_bytes for item in manifest.objects))
    has_keys = bool(manifest.options.get("includeSystemFields"))
    if not has_keys:
        report.notes.append(NO_OBJECT_KEYS_NOTE)
    checker = file_checker() if file_checker is not None and has_keys else None
    if checker is None and has_keys:
        report.notes.append(
            "file objects not checked: this verification had no bucket to check them in"
            " (`exportctl verify --skip-file-objects` asks for that)"
        )
    if checker is None:
        _verify_objects(
            location, manifest, names=names, report=report, on_record=None, progress=progress
        )
        return
    with checker:
        _verify_objects(
            location,
            manifest,
            names=names,
            report=report,
            on_record=checker.submit,
            progress=progress,
        )
        _add_file_results(report, checker.finish())


def _verify_objects(
    location: Location,
    manifest: Manifest,
    *,
    names: set[str],
    report: VerificationReport,
    on_record: Callable[[Record], None] | None,
    progress: VerifyProgress | None,
) -> None:
    include_metadata = manifest.options.get("includeMetadata")
    for entry in manifest.objects:
        if entry.name not in names and location.size(entry.name) is None:
            report.problems.append(
                Problem(
                    OBJECT_MISSING,
                    f"{entry.name} is listed in the manifest but not stored at {location.address}",
                    entry.name,
                )
            )
            continue
        sidecar = entry.name + SIDECAR_SUFFIX
        if sidecar in names:
            report.problems.extend(check_sidecar(location.read_small(sidecar) or b"", entry))
        blobs = location.iter_bytes(entry.name)
        if progress is not None:
            blobs = _reporting(blobs, entry.name, progress)
        check = check_object(
            blobs,
            entry,
            format=manifest.format,
            compression=manifest.compression,
            include_metadata=include_metadata if isinstance(include_metadata, bool) else None,
            export_id=manifest.export_id,
            on_record=on_record,
        )
        report.objects_checked += 1
        report.stored_bytes += check.stored_bytes
        for table, count in check.records.items():
            report.records[table] = report.records.get(table, 0) + count
        report.problems.extend(check.problems)


def _reporting(blobs: Iterable[bytes], name: str, progress: VerifyProgress) -> Iterator[bytes]:
    for blob in blobs:
        progress.advance(name, len(blob))
        yield blob


def _note_unlisted(
    names: set[str], objects: Sequence[ManifestObject], report: VerificationReport
) -> None:
    known = {MANIFEST_NAME, SHA256SUMS_NAME}
    for item in objects:
        known |= {item.name, item.name + SIDECAR_SUFFIX}
    for name in sorted(names - known):
        report.notes.append(f"{name} is stored beside the export but not listed in the manifest")


def _add_file_results(report: VerificationReport, result: FileCheckResult) -> None:
    report.file_objects_checked = result.checked
    report.problems.extend(result.problems)
    report.problems_omitted += result.omitted
    report.notes.extend(result.notes)
