"""Verification: every kind of damage to an export is named precisely, and all of it is reported."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from pipelines.errors import PermanentError, RetryableError
from pipelines.export import build_manifest, make_header, user_object_name, write_object
from pipelines.file_objects import (
    FILE_OBJECT_MISSING,
    FILE_OBJECT_SHA256_MISMATCH,
    FILE_OBJECT_SIZE_MISMATCH,
    NO_OBJECT_KEYS_NOTE,
    FileObjectChecker,
    ObjectInfo,
    carried_sha256,
)
from pipelines.locations import LocalLocation, parse_s3_url
from pipelines.manifest import (
    MANIFEST_NAME,
    SHA256SUMS_NAME,
    ManifestObject,
    render_manifest,
    render_sha256sums,
)
from pipelines.options import ExportOptions
from pipelines.records import Record, Row, RowBatch, export_tables
from pipelines.storage.sinks import LocalFileSink
from pipelines.verification import check_object, verify_object
from pipelines.verification_problems import (
    COMPRESSION_CORRUPT,
    CONTENT_SHA256_MISMATCH,
    FORMAT_CORRUPT,
    MANIFEST_MISSING,
    MANIFEST_TOTALS_MISMATCH,
    OBJECT_MISSING,
    OBJECT_TRUNCATED,
    RECORD_COUNT_MISMATCH,
    SHA256_MISMATCH,
    SHA256SUMS_MISMATCH,
    SIZE_MISMATCH,
    TRAILER_COUNT_MISMATCH,
    TRAILER_MISSING,
    Problem,
)
from pipelines.verifier import VerificationReport, verify_export

FORMATS = ("json", "jsonl", "csv", "xml")
COMPRESSIONS = ("none", "gzip", "zstd")
EXPORT_ID = "7f000000-0000-4000-8000-00000000e001"
OWNER = "0b5f7c1e-0000-4000-8000-000000000001"
# The one record the "missing record" tests cut out; its values hold no newline.
VICTIM = "1b5f7c1e-0000-4000-8000-000000000007"
# Small parts so compressed objects hold many frames.
PART_SIZE_BYTES = 4096
FILE_COUNT = 60


def _file_id(index: int) -> str:
    return f"1b5f7c1e-0000-4000-8000-{index:012d}"


def _rows() -> tuple[list[Row], list[Row]]:
    users: list[Row] = [
        (OWNER, "a@example.com", '=HYPERLINK("x")', "user", '{"k": "é"}',
         "2024-03-01 12:00:00+00", "2024-03-01 12:00:00+00", None, "f"),
    ]  # fmt: skip
    files: list[Row] = []
    for index in range(FILE_COUNT):
        body = f"body {index}\n".encode()
        path = 'a,"b"\r\nc]]>' if index == 3 else f"docs/{index}.txt"
        files.append(
            (_file_id(index), OWNER, path, str(len(body)), "text/plain",
             hashlib.sha256(body).hexdigest(), "2024-03-01 12:00:00+00",
             "2024-03-01 12:00:00+00", "{}", f"files/{index}", None)
        )  # fmt: skip
    return users, files


def _bodies() -> dict[str, bytes]:
    return {f"files/{index}": f"body {index}\n".encode() for index in range(FILE_COUNT)}


def _export(
    directory: Path, fmt: str, compression: str, *, metadata: bool = True
) -> tuple[Path, ManifestObject]:
    """Write a one-object export with manifest and SHA256SUMS into `directory`."""
    options = ExportOptions(
        format=fmt, compression=compression, include_metadata=metadata, include_system_fields=True
    )
    header = make_header(
        export_id=EXPORT_ID,
        export_type="user",
        options=options,
        snapshot_time=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
    )
    users, files = _rows()
    tables = export_tables(True)
    batches = [RowBatch(tables[0], users, 1), RowBatch(tables[1], files[:25], 2)]
    batches.append(RowBatch(tables[1], files[25:], 3))
    name = user_object_name(options)
    directory.mkdir(parents=True, exist_ok=True)
    written = write_object(
        batches,
        name=name,
        options=options,
        header=header,
        open_sink=lambda _summary: LocalFileSink(directory / name),
        part_size=PART_SIZE_BYTES,
    )
    entry = written.manifest_entry()
    manifest = build_manifest(header=header, options=options, objects=[entry])
    (directory / MANIFEST_NAME).write_bytes(render_manifest(manifest))
    (directory / SHA256SUMS_NAME).write_bytes(render_sha256sums([entry]))
    return directory / name, entry


def _pieces(data: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _codes(problems: Sequence[Problem]) -> list[str]:
    return [problem.code for problem in problems]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_intact_object_has_no_problems_and_counts_every_record(
    tmp_path: Path, fmt: str, compression: str
) -> None:
    path, entry = _export(tmp_path, fmt, compression)
    seen: list[Record] = []
    check = check_object(
        _pieces(path.read_bytes()),
        entry,
        format=fmt,
        compression=compression,
        include_metadata=True,
        export_id=EXPORT_ID,
        on_record=seen.append,
    )
    assert check.problems == []
    assert check.records == {"users": 1, "files": FILE_COUNT}
    assert len(seen) == 1 + FILE_COUNT
    assert check.stored_sha256 == entry.sha256
    assert check.content_sha256 == entry.content_sha256
    assert check.complete


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_byte_is_a_stored_sha256_mismatch_naming_the_object(
    tmp_path: Path, fmt: str, compression: str
) -> None:
    path, entry = _export(tmp_path, fmt, compression)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    problems = verify_object(
        _pieces(bytes(data)), entry, format=fmt, compression=compression, include_metadata=True
    )
    mismatch = [p for p in problems if p.code == SHA256_MISMATCH]
    assert len(mismatch) == 1
    assert mismatch[0].object_name == entry.name
    assert entry.name in mismatch[0].message
    assert entry.sha256 in mismatch[0].message
    assert mismatch[0].details["actual"] == hashlib.sha256(bytes(data)).hexdigest()
    # The size is right, so nothing claims it is not. (A compressed object's flipped byte may sit
    # in padding the decoder skips: only the stored digest can see it there.)
    assert OBJECT_TRUNCATED not in _codes(problems)
    assert SIZE_MISMATCH not in _codes(problems)
    if compression == "none":
        assert CONTENT_SHA256_MISMATCH in _codes(problems)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_object_names_the_missing_bytes_and_where_reading_stopped(
    tmp_path: Path, fmt: str, compression: str
) -> None:
    path, entry = _export(tmp_path, fmt, compression)
    data = path.read_bytes()
    cut = len(data) - 100
    problems = verify_object(_pieces(data[:cut]), entry, format=fmt, compression=compression)
    truncated = [p for p in problems if p.code == OBJECT_TRUNCATED]
    assert len(truncated) == 1
    assert f"has {cut} bytes but the manifest lists {len(data)}" in truncated[0].message
    assert "the last 100 bytes are missing" in truncated[0].message
    assert SHA256_MISMATCH in _codes(problems)
    reading = [p for p in problems if p.code in {COMPRESSION_CORRUPT, FORMAT_CORRUPT}]
    assert reading, problems
    assert "records read" in reading[0].message or "records)" in reading[0].message
    assert "recordsRead" in reading[0].details


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_record_with_recomputed_digests_is_caught_by_counts(
    tmp_path: Path, fmt: str
) -> None:
    path, entry = _export(tmp_path, fmt, "none")
    lines = path.read_bytes().split(b"\n")
    victims = [line for line in lines if VICTIM.encode() in line]
    assert len(victims) == 1
    data = b"\n".join(line for line in lines if VICTIM.encode() not in line)
    digest = hashlib.sha256(data).hexdigest()
    forged = ManifestObject(
        name=entry.name,
        size_bytes=len(data),
        sha256=digest,
        content_sha256=digest,
        content_bytes=len(data),
        records=entry.records,
    )
    problems = verify_object(
        _pieces(data), forged, format=fmt, compression="none", include_metadata=True
    )
    assert sorted(_codes(problems)) == [RECORD_COUNT_MISMATCH, TRAILER_COUNT_MISMATCH]
    count = next(p for p in problems if p.code == RECORD_COUNT_MISMATCH)
    assert count.message == (
        f"{entry.name}: files has {FILE_COUNT - 1} records, the manifest lists {FILE_COUNT}"
    )
    assert count.details == {"table": "files", "expected": FILE_COUNT, "actual": FILE_COUNT - 1}
    trailer = next(p for p in problems if p.code == TRAILER_COUNT_MISMATCH)
    assert f"says files has {FILE_COUNT} records, {FILE_COUNT - 1} were read" in trailer.message


def test_wrong_manifest_counts_name_each_table_and_both_numbers(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "jsonl", "zstd")
    wrong = ManifestObject(
        name=entry.name,
        size_bytes=entry.size_bytes,
        sha256=entry.sha256,
        content_sha256=entry.content_sha256,
        content_bytes=entry.content_bytes,
        records={"users": 2, "files": FILE_COUNT + 5},
    )
    problems = verify_object(_pieces(path.read_bytes()), wrong, format="jsonl", compression="zstd")
    assert [(p.code, p.details["table"], p.details["expected"], p.details["actual"])
            for p in problems] == [
        (RECORD_COUNT_MISMATCH, "users", 2, 1),
        (RECORD_COUNT_MISMATCH, "files", FILE_COUNT + 5, FILE_COUNT),
    ]  # fmt: skip


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "csv", "gzip")
    wrong = ManifestObject(
        name=entry.name,
        size_bytes=entry.size_bytes - 1,
        sha256="0" * 64,
        content_sha256="1" * 64,
        content_bytes=entry.content_bytes + 3,
        records={"users": 0, "files": FILE_COUNT},
    )
    problems = verify_object(_pieces(path.read_bytes()), wrong, format="csv", compression="gzip")
    assert _codes(problems) == [
        SIZE_MISMATCH,
        SHA256_MISMATCH,
        "content-size-mismatch",
        CONTENT_SHA256_MISMATCH,
        RECORD_COUNT_MISMATCH,
    ]
    assert all(p.object_name == entry.name for p in problems)


def test_metadata_cut_off_at_a_line_boundary_is_a_missing_trailer(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "jsonl", "none")
    data = path.read_bytes()
    body = data[: data.rstrip(b"\n").rfind(b"\n") + 1]  # drop the metadata line
    problems = verify_object(
        _pieces(body), entry, format="jsonl", compression="none", include_metadata=True
    )
    assert TRAILER_MISSING in _codes(problems)
    assert OBJECT_TRUNCATED in _codes(problems)


def test_a_failing_byte_source_raises_instead_of_becoming_a_problem(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "json", "zstd")
    data = path.read_bytes()

    def dropping() -> Iterator[bytes]:
        yield data[:500]
        raise RetryableError("connection reset")

    with pytest.raises(RetryableError, match="connection reset"):
        verify_object(dropping(), entry, format="json", compression="zstd")

    def vanished() -> Iterator[bytes]:
        yield from ()
        raise PermanentError("object vanished")

    with pytest.raises(PermanentError, match="object vanished"):
        verify_object(vanished(), entry, format="json", compression="zstd")


def test_unknown_format_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "json", "none")
    problems = verify_object(_pieces(path.read_bytes()), entry, format="yaml", compression="none")
    assert _codes(problems) == [FORMAT_CORRUPT]
    assert "unknown export format 'yaml'" in problems[0].message


# --- the whole export in a directory ---------------------------------------------------------


def test_intact_directory_export_passes_and_reports_counts(tmp_path: Path) -> None:
    _export(tmp_path, "xml", "zstd")
    report = verify_export(LocalLocation(tmp_path))
    assert report.passed, report.problems
    assert report.export_id == EXPORT_ID
    assert report.objects_checked == 1
    assert report.records == {"users": 1, "files": FILE_COUNT}
    document = orjson.loads(orjson.dumps(report.as_json()))
    assert document["passed"] is True
    assert document["problems"] == []
    # Object keys are there, but nobody gave a bucket to check them in.
    assert any("had no bucket to check them in" in note for note in report.notes)


def test_directory_export_lists_problems_of_every_kind(tmp_path: Path) -> None:
    path, entry = _export(tmp_path, "json", "gzip")
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / SHA256SUMS_NAME).write_text(f"{'a' * 64}  {entry.name}\n")
    document = orjson.loads((tmp_path / MANIFEST_NAME).read_bytes())
    document["totals"]["records"]["files"] = 1
    document["objects"].append({**document["objects"][0], "name": "lost.json.gz"})
    (tmp_path / MANIFEST_NAME).write_bytes(orjson.dumps(document))
    (tmp_path / "stray.txt").write_text("x")
    report = verify_export(LocalLocation(tmp_path))
    codes = set(report.problem_counts())
    assert {MANIFEST_TOTALS_MISMATCH, SHA256SUMS_MISMATCH, SHA256_MISMATCH, OBJECT_MISSING} <= codes
    missing = next(p for p in report.problems if p.code == OBJECT_MISSING)
    assert missing.object_name == "lost.json.gz"
    assert any("stray.txt" in note for note in report.notes)
    assert not report.passed
    assert report.as_json()["passed"] is False


def test_directory_without_manifest_fails_with_one_clear_problem(tmp_path: Path) -> None:
    report = verify_export(LocalLocation(tmp_path))
    assert _codes(list(report.problems)) == [MANIFEST_MISSING]
    assert not report.passed


def test_export_without_system_fields_notes_file_objects_were_not_checked(
    tmp_path: Path,
) -> None:
    options = ExportOptions(format="jsonl", compression="none")
    header = make_header(
        export_id=EXPORT_ID, export_type="user", options=options, snapshot_time=datetime.now(UTC)
    )
    tables = export_tables(False)
    users, _ = _rows()
    written = write_object(
        [RowBatch(tables[0], [row[:7] for row in users], 1)],
        name="export.jsonl",
        options=options,
        header=header,
        open_sink=lambda _summary: LocalFileSink(tmp_path / "export.jsonl"),
        part_size=PART_SIZE_BYTES,
    )
    entry = written.manifest_entry()
    manifest = build_manifest(header=header, options=options, objects=[entry])
    (tmp_path / MANIFEST_NAME).write_bytes(render_manifest(manifest))
    (tmp_path / SHA256SUMS_NAME).write_bytes(render_sha256sums([entry]))
    built: list[FileObjectChecker] = []

    def factory() -> FileObjectChecker:
        checker = FileObjectChecker(_MemoryInspector({}), bucket="b")
        built.append(checker)
        return checker

    report = verify_export(LocalLocation(tmp_path), file_checker=factory)
    assert report.passed
    assert NO_OBJECT_KEYS_NOTE in report.notes
    assert built == []


# --- file objects ------------------------------------------------------------------------------


class _MemoryInspector:
    """An in-memory bucket that records how many HEADs run at once."""

    def __init__(self, objects: dict[str, bytes], *, carry_sha256: bool = False) -> None:
        self.objects = objects
        self.carry = carry_sha256
        self.active = 0
        self.peak = 0
        self.heads = 0
        self._lock = threading.Lock()

    def head(self, key: str) -> ObjectInfo | None:
        with self._lock:
            self.active += 1
            self.heads += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.002)
        with self._lock:
            self.active -= 1
        body = self.objects.get(key)
        if body is None:
            return None
        digest = hashlib.sha256(body).hexdigest() if self.carry else None
        return ObjectInfo(size=len(body), sha256=digest)

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.objects[key]).hexdigest()


def _damaged_bucket() -> dict[str, bytes]:
    bodies = _bodies()
    del bodies["files/5"]
    bodies["files/6"] += b"damaged\n"
    body = bodies["files/8"]
    bodies["files/8"] = bytes([body[0] ^ 1]) + body[1:]
    return bodies


def _check_files(tmp_path: Path, inspector: _MemoryInspector, *, deep: bool) -> VerificationReport:
    _export(tmp_path, "csv", "zstd")
    return verify_export(
        LocalLocation(tmp_path),
        file_checker=lambda: FileObjectChecker(
            inspector, bucket="files-bucket", workers=4, deep=deep
        ),
        deep=deep,
    )


def test_missing_and_resized_file_objects_name_the_file_and_key(tmp_path: Path) -> None:
    inspector = _MemoryInspector(_damaged_bucket())
    report = _check_files(tmp_path, inspector, deep=False)
    problems = {p.code: p for p in report.problems}
    assert set(problems) == {FILE_OBJECT_MISSING, FILE_OBJECT_SIZE_MISMATCH}
    missing = problems[FILE_OBJECT_MISSING]
    assert (
        missing.message == f"file {_file_id(5)}: object files/5 in bucket files-bucket is missing"
    )
    resized = problems[FILE_OBJECT_SIZE_MISMATCH]
    size = len(b"body 6\n")
    assert resized.message == (
        f"file {_file_id(6)}: object files/6 in bucket files-bucket has {size + 8} bytes, "
        f"the files record says {size}"
    )
    assert resized.details["fileId"] == _file_id(6)
    assert report.file_objects_checked == FILE_COUNT


def test_altered_file_object_is_caught_by_carried_checksum_or_deep_read(tmp_path: Path) -> None:
    carried = _check_files(
        tmp_path / "a", _MemoryInspector(_damaged_bucket(), carry_sha256=True), deep=False
    )
    deep = _check_files(tmp_path / "b", _MemoryInspector(_damaged_bucket()), deep=True)
    for report in (carried, deep):
        altered = [p for p in report.problems if p.code == FILE_OBJECT_SHA256_MISMATCH]
        assert len(altered) == 1
        assert f"file {_file_id(8)}: object files/8" in altered[0].message


def test_file_checks_run_concurrently_but_never_beyond_the_pool(tmp_path: Path) -> None:
    inspector = _MemoryInspector(_bodies())
    _export(tmp_path, "jsonl", "none")
    report = verify_export(
        LocalLocation(tmp_path),
        file_checker=lambda: FileObjectChecker(inspector, bucket="b", workers=3),
    )
    assert report.passed
    assert inspector.heads == FILE_COUNT
    assert 1 < inspector.peak <= 3


def test_problems_beyond_the_listing_limit_are_counted_not_listed(tmp_path: Path) -> None:
    _export(tmp_path, "json", "none")
    report = verify_export(
        LocalLocation(tmp_path),
        file_checker=lambda: FileObjectChecker(
            _MemoryInspector({}), bucket="empty", workers=2, listed_per_code=10
        ),
    )
    assert len(report.problems) == 10
    assert report.problems_omitted == FILE_COUNT - 10
    assert report.as_json()["problemsOmitted"] == FILE_COUNT - 10
    assert not report.passed


def test_carried_sha256_reads_metadata_or_a_full_object_checksum() -> None:
    digest = hashlib.sha256(b"x").digest()

    assert carried_sha256({"sha256": digest.hex()}, None) == digest.hex()
    assert carried_sha256({}, base64.b64encode(digest).decode()) == digest.hex()
    assert carried_sha256({}, base64.b64encode(digest).decode() + "-3") is None
    assert carried_sha256({"sha256": "nope"}, None) is None


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://exports/2026/e1/", ("exports", "2026/e1/")),
        ("s3://exports/2026/e1", ("exports", "2026/e1/")),
        ("s3://exports", ("exports", "")),
        ("s3://exports/", ("exports", "")),
    ],
)
def test_s3_urls_split_into_bucket_and_slash_terminated_prefix(
    url: str, expected: tuple[str, str]
) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://exports/x",
        "s3://",
        "s3:///prefix",
        "s3://Exports/x",
        "s3://exports/a/../b",
        "s3://exports/a//b",
        "s3://exports/a?x=1",
        "s3://exports/a\nb",
    ],
)
def test_malformed_s3_urls_are_refused(url: str) -> None:
    with pytest.raises(PermanentError):
        parse_s3_url(url)
