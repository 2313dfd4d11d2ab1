"""Restore refuses an export it cannot prove whole, and loads nothing from it.

An export whose manifest lists fewer objects than its totals and `SHA256SUMS` say, or a lone data
object cut off at a record boundary, would otherwise restore part of the data and report success.
The source is seeded by the project's seeder; exports are written by the real runner.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from exportctl.cli import main
from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.formats import CorruptExportError
from pipelines.locations import open_location
from pipelines.manifest import MANIFEST_NAME, SHA256SUMS_NAME, Manifest
from pipelines.options import parse_options
from pipelines.restore import open_source, restore
from pipelines.runner import ExportLimits, export_all
from pipelines.storage.stores import LocalStore
from pipelines.verifier import verify_export

if TYPE_CHECKING:
    from exportctl.devstack import StackEndpoints

SEEDED_USERS = 300
SEEDED_FILES = 3_000
PART_BYTES = 64 * 1024
# About three objects of the seeded data, or one object holding everything.
SHARD_ROWS = (SEEDED_USERS + SEEDED_FILES) // 3 + 1
WHOLE_EXPORT_ROWS = 10_000_000


def _with_database(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture(scope="module")
def source_url(stack: StackEndpoints, template_database: str) -> Iterator[str]:
    """A database seeded once for the module; tests only read it."""
    name = f"restore_src_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_database)
            )
        )
    url = _with_database(stack.database_url, name)
    try:
        with psycopg.connect(url) as conn:
            seed_database(conn, users=SEEDED_USERS, files=SEEDED_FILES, max_files=1_000)
        yield url
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _export(
    url: str, folder: Path, export_format: str, compression: str, *, shard_rows: int
) -> Manifest:
    options = parse_options(
        export_format,
        {"compression": compression, "includeSystemFields": True},
        default_compression="zstd",
    )
    run = export_all(
        lambda: connect(url),
        options=options,
        store=LocalStore(folder),
        limits=ExportLimits(part_size=PART_BYTES, max_size=None),
        target_shard_rows=shard_rows,
    )
    return run.manifest


def _row_counts(url: str) -> dict[str, int] | None:
    """Return the users and files row counts, or None when the restore created no tables."""
    with connect(url) as conn:
        row = conn.execute("SELECT to_regclass('users') IS NOT NULL").fetchone()
        assert row is not None
        if not row[0]:
            return None
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)"
        ).fetchone()
    assert counts is not None
    return {"users": counts[0], "files": counts[1]}


def _drop_last_manifest_object(folder: Path, *, fix_totals: bool) -> str:
    """Remove the last object's entry from manifest.json (the object stays); return its name."""
    path = folder / MANIFEST_NAME
    document = json.loads(path.read_text())
    dropped = document["objects"].pop()
    if fix_totals:
        totals = document["totals"]
        totals["objects"] -= 1
        totals["sizeBytes"] -= dropped["sizeBytes"]
        for table, count in dropped["records"].items():
            totals["records"][table] -= count
    path.write_text(json.dumps(document))
    return str(dropped["name"])


def test_manifest_missing_an_object_is_refused_and_nothing_is_restored(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    manifest = _export(source_url, tmp_path, "jsonl", "gzip", shard_rows=SHARD_ROWS)
    assert len(manifest.objects) >= 3
    dropped = _drop_last_manifest_object(tmp_path, fix_totals=False)
    with pytest.raises(CorruptExportError) as caught, connect(empty_database_url) as conn:
        restore(conn, open_source(str(tmp_path)))
    message = str(caught.value)
    assert f"objects is {len(manifest.objects)}" in message
    assert "records.users is 300" in message
    assert f"SHA256SUMS lists {dropped}, which the manifest does not" in message
    assert _row_counts(empty_database_url) is None
    # Verification judges the same export the same way.
    assert not verify_export(open_location(str(tmp_path), s3_client=None)).passed


def test_manifest_missing_an_object_with_matching_totals_is_refused_by_sha256sums(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    _export(source_url, tmp_path, "csv", "zstd", shard_rows=SHARD_ROWS)
    dropped = _drop_last_manifest_object(tmp_path, fix_totals=True)
    with (
        pytest.raises(CorruptExportError, match=f"SHA256SUMS lists {dropped}, which the manifest"),
        connect(empty_database_url) as conn,
    ):
        restore(conn, open_source(str(tmp_path)))
    assert _row_counts(empty_database_url) is None


def test_export_folder_without_sha256sums_restores_on_its_manifest_with_a_warning(
    source_url: str, empty_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = _export(source_url, tmp_path, "json", "none", shard_rows=SHARD_ROWS)
    (tmp_path / SHA256SUMS_NAME).unlink()
    with (
        caplog.at_level(logging.WARNING, logger="pipelines.restore"),
        connect(empty_database_url) as conn,
    ):
        restore(conn, open_source(str(tmp_path)))
    assert f"has no {SHA256SUMS_NAME}" in caplog.text
    totals = {table: sum(item.records.get(table, 0) for item in manifest.objects)
              for table in ("users", "files")}  # fmt: skip
    assert _row_counts(empty_database_url) == totals


def test_manifest_missing_an_object_fails_the_cli_restore_with_exit_1(
    source_url: str, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _export(source_url, tmp_path, "xml", "gzip", shard_rows=SHARD_ROWS)
    _drop_last_manifest_object(tmp_path, fix_totals=False)
    assert main(["restore", str(tmp_path), "--database", database_url]) == 1
    assert "manifest totals say objects is" in capsys.readouterr().err
    assert _row_counts(database_url) == {"users": 0, "files": 0}


# Where each format's content can be cut at a record boundary, past the middle of the object.
RECORD_ENDS = {"jsonl": b"\n", "json": b",\n", "csv": b"\r\n", "xml": b"</file>"}


def _cut_at_a_record_boundary(data: bytes, export_format: str) -> bytes:
    terminator = RECORD_ENDS[export_format]
    return data[: data.index(terminator, len(data) // 2) + len(terminator)]


@pytest.mark.parametrize("export_format", ["jsonl", "csv", "json", "xml"])
def test_lone_object_truncated_at_a_record_boundary_is_refused(
    source_url: str, empty_database_url: str, tmp_path: Path, export_format: str
) -> None:
    folder = tmp_path / "export"
    manifest = _export(source_url, folder, export_format, "none", shard_rows=WHOLE_EXPORT_ROWS)
    lone = tmp_path / f"download.{export_format}"
    data = (folder / manifest.objects[0].name).read_bytes()
    lone.write_bytes(_cut_at_a_record_boundary(data, export_format))
    with (
        pytest.raises(CorruptExportError, match="nothing was restored") as caught,
        connect(empty_database_url) as conn,
    ):
        restore(conn, open_source(str(lone)))
    assert lone.name in str(caught.value)
    if export_format in ("jsonl", "csv"):
        assert "closing metadata with record counts is missing" in str(caught.value)
    assert _row_counts(empty_database_url) is None


def test_truncated_lone_object_fails_the_cli_restore_with_exit_1(
    source_url: str, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "export"
    manifest = _export(source_url, folder, "csv", "none", shard_rows=WHOLE_EXPORT_ROWS)
    lone = tmp_path / "download.csv"
    data = (folder / manifest.objects[0].name).read_bytes()
    lone.write_bytes(_cut_at_a_record_boundary(data, "csv"))
    assert main(["restore", str(lone), "--database", database_url]) == 1
    assert "closing metadata with record counts is missing" in capsys.readouterr().err
    assert _row_counts(database_url) == {"users": 0, "files": 0}


def test_lone_object_without_metadata_still_restores(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    options = parse_options(
        "jsonl",
        {"compression": "none", "includeSystemFields": True, "includeMetadata": False},
        default_compression="zstd",
    )
    run = export_all(
        lambda: connect(source_url),
        options=options,
        store=LocalStore(tmp_path),
        limits=ExportLimits(part_size=PART_BYTES, max_size=None),
        target_shard_rows=WHOLE_EXPORT_ROWS,
    )
    with connect(empty_database_url) as conn:
        report = restore(conn, open_source(str(tmp_path / run.manifest.objects[0].name)))
    assert dict(report.counts) == {"users": SEEDED_USERS, "files": SEEDED_FILES}
