"""Verification of real exports: seeded data and file objects, in a folder and on the S3 server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from exportctl.cli import main
from exportctl.seeding import damage_objects, seed_database, write_objects
from pipelines.database import connect
from pipelines.file_objects import (
    FILE_OBJECT_MISSING,
    FILE_OBJECT_SHA256_MISMATCH,
    FILE_OBJECT_SIZE_MISMATCH,
    NO_OBJECT_KEYS_NOTE,
    FileObjectChecker,
    S3ObjectInspector,
)
from pipelines.locations import LocalLocation, S3Location, open_location
from pipelines.options import parse_options
from pipelines.runner import ExportLimits, export_all, export_user
from pipelines.storage.stores import LocalStore, S3Store
from pipelines.verification_problems import (
    OBJECT_MISSING,
    OBJECT_TRUNCATED,
    SHA256_MISMATCH,
    SIDECAR_MISMATCH,
)
from pipelines.verifier import VerificationReport, verify_export

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from exportctl.devstack import StackEndpoints

PART_SIZE_BYTES = 5 * 1024 * 1024  # SeaweedFS, like S3, refuses smaller non-final parts
LIMITS = ExportLimits(part_size=PART_SIZE_BYTES, max_size=None)
SEED = 11


def _seed(url: str, *, users: int, files: int | None = None) -> int:
    with connect(url) as conn:
        report = seed_database(conn, users=users, files=files, max_files=400, seed=SEED)
        conn.commit()
    return report.files


def _export_folder(url: str, directory: Path, *, fmt: str = "jsonl", system: bool = True) -> None:
    options = parse_options(
        fmt, {"compression": "zstd", "includeSystemFields": system}, default_compression="zstd"
    )
    export_all(
        lambda: connect(url),
        options=options,
        store=LocalStore(directory),
        limits=LIMITS,
        target_shard_rows=200,
    )


def _verify(
    address: str, client: S3Client, bucket: str, *, deep: bool = False
) -> VerificationReport:
    location = open_location(address, s3_client=lambda: client)
    return verify_export(
        location,
        file_checker=lambda: FileObjectChecker(
            S3ObjectInspector(client, bucket=bucket), bucket=bucket, workers=8, deep=deep
        ),
        deep=deep,
    )


def test_seeded_bulk_export_with_its_file_objects_passes(
    database_url: str, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    files = _seed(database_url, users=6)
    with connect(database_url) as conn:
        assert write_objects(conn, s3_client, s3_bucket) == files
    _export_folder(database_url, tmp_path)
    report = _verify(str(tmp_path), s3_client, s3_bucket, deep=True)
    assert report.passed, report.as_json()
    assert report.objects_checked > 1  # several shards
    assert report.records == {"users": 6, "files": files}
    assert report.file_objects_checked == files


def test_damaged_file_objects_are_named_with_file_id_and_key(
    database_url: str, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    _seed(database_url, users=6)
    with connect(database_url) as conn:
        write_objects(conn, s3_client, s3_bucket)
        damaged = damage_objects(conn, s3_client, s3_bucket, count=6, seed=SEED)
    _export_folder(database_url, tmp_path, fmt="csv")
    shallow = _verify(str(tmp_path), s3_client, s3_bucket)
    by_kind = {"missing": FILE_OBJECT_MISSING, "resized": FILE_OBJECT_SIZE_MISMATCH}
    expected = {
        (by_kind[item.kind], item.file_id, item.object_key)
        for item in damaged
        if item.kind in by_kind
    }
    found = {
        (p.code, str(p.details["fileId"]), str(p.details["objectKey"])) for p in shallow.problems
    }
    assert found == expected
    for problem in shallow.problems:
        assert f"file {problem.details['fileId']}: object {problem.details['objectKey']}" in (
            problem.message
        )
        assert s3_bucket in problem.message
    assert not shallow.passed
    # An object altered at the same size carries no checksum of its own: only --deep sees it.
    deep = _verify(str(tmp_path), s3_client, s3_bucket, deep=True)
    altered = {(item.file_id, item.object_key) for item in damaged if item.kind == "altered"}
    deep_found = {
        (str(p.details["fileId"]), str(p.details["objectKey"]))
        for p in deep.problems
        if p.code == FILE_OBJECT_SHA256_MISMATCH
    }
    assert deep_found == altered
    assert len(deep.problems) == len(damaged)


def test_export_without_system_fields_is_verified_without_file_objects(
    database_url: str, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    _seed(database_url, users=3)
    _export_folder(database_url, tmp_path, fmt="xml", system=False)
    report = _verify(str(tmp_path), s3_client, s3_bucket)
    assert report.passed, report.as_json()
    assert report.file_objects_checked == 0
    assert NO_OBJECT_KEYS_NOTE in report.notes


def test_user_export_on_s3_catches_flipped_byte_missing_object_and_bad_sidecar(
    database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    _seed(database_url, users=4)
    with connect(database_url) as conn:
        row = conn.execute("SELECT id::text FROM users ORDER BY id LIMIT 1").fetchone()
        assert row is not None
        conn.rollback()  # the export opens its own snapshot transaction
        options = parse_options("json", {"compression": "gzip"}, default_compression="zstd")
        store = S3Store(s3_client, bucket=s3_bucket, prefix="exports/e1/")
        run = export_user(conn, user_id=row[0], options=options, store=store, limits=LIMITS)
    name = run.manifest.objects[0].name
    key = f"exports/e1/{name}"
    address = f"s3://{s3_bucket}/exports/e1/"
    clean = _verify(address, s3_client, s3_bucket)
    assert clean.passed, clean.as_json()
    assert clean.objects_checked == 1
    names = set(S3Location(s3_client, bucket=s3_bucket, prefix="exports/e1/").names())
    assert f"{name}.sha256" in names  # the sidecar was there and was checked

    body = bytearray(s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body))
    s3_client.put_object(Bucket=s3_bucket, Key=f"{key}.sha256", Body=b"0" * 64 + b"  x\n")
    flipped = _verify(address, s3_client, s3_bucket)
    codes = [p.code for p in flipped.problems]
    assert SHA256_MISMATCH in codes
    assert SIDECAR_MISMATCH in codes
    assert all(p.object_name == name for p in flipped.problems)

    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(body[:-64]))
    truncated = _verify(address, s3_client, s3_bucket)
    assert OBJECT_TRUNCATED in [p.code for p in truncated.problems]

    s3_client.delete_object(Bucket=s3_bucket, Key=key)
    missing = _verify(address, s3_client, s3_bucket)
    assert [p.code for p in missing.problems if p.code != SIDECAR_MISMATCH] == [OBJECT_MISSING]


def test_multipart_export_on_s3_is_verified_across_its_parts(
    database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    _seed(database_url, users=60, files=16_000)
    options = parse_options("jsonl", {"compression": "none"}, default_compression="zstd")
    run = export_all(
        lambda: connect(database_url),
        options=options,
        store=S3Store(s3_client, bucket=s3_bucket, prefix="bulk/"),
        limits=LIMITS,
        target_shard_rows=100_000,
    )
    assert [entry.parts for entry in run.manifest.objects] == [2]
    report = _verify(f"s3://{s3_bucket}/bulk/", s3_client, s3_bucket)
    assert report.passed, report.as_json()
    # Without system fields soft-deleted rows stay out: the manifest's totals are the truth.
    assert report.records == run.manifest.totals
    assert sum(report.records.values()) > 14_000
    assert report.stored_bytes > PART_SIZE_BYTES


def test_cli_exits_zero_on_a_good_export_and_one_listing_problems_on_a_bad_one(
    database_url: str,
    s3_client: S3Client,
    s3_bucket: str,
    *,
    stack: StackEndpoints,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(database_url, users=3)
    with connect(database_url) as conn:
        write_objects(conn, s3_client, s3_bucket)
        damaged = damage_objects(conn, s3_client, s3_bucket, count=1, seed=SEED)
    assert damaged[0].kind == "missing"
    _export_folder(database_url, tmp_path / "good", system=False)
    _export_folder(database_url, tmp_path / "bad", system=True)
    for name, value in stack.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("S3_BUCKET", s3_bucket)

    assert main(["verify", str(tmp_path / "good"), "--json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["passed"] is True
    manifest = orjson.loads((tmp_path / "good" / "manifest.json").read_bytes())
    assert document["records"] == manifest["totals"]["records"]

    assert main(["verify", str(tmp_path / "bad")]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert damaged[0].file_id in captured.out
    assert damaged[0].object_key in captured.out
    assert "verification failed" in captured.err


def test_local_location_streams_what_the_folder_holds(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    location = LocalLocation(tmp_path)
    assert list(location.names()) == ["a.bin"]
    assert location.size("a.bin") == 10
    assert location.size("b.bin") is None
    assert location.read_small("b.bin") is None
    assert b"".join(location.iter_bytes("a.bin")) == b"x" * 10
