"""Export, then restore into another database: the two databases' users and files are equal.

The source is seeded by the project's seeder (hostile strings, soft-deleted rows, admins). Exports
are written with system fields by the real pipeline (row source, serializer, compression, sink,
manifest) into a folder or the S3 server; restores go into a database with nothing in it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from exportctl.cli import main
from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.errors import PermanentError, RetryableError
from pipelines.formats import CorruptExportError
from pipelines.locations import open_location
from pipelines.manifest import Manifest
from pipelines.options import COMPRESSIONS, FORMATS, parse_options
from pipelines.restore import (
    RestoreConflictError,
    RestoreError,
    RestoreProgress,
    RestoreReport,
    open_source,
    restore,
)
from pipelines.runner import ExportLimits, export_all
from pipelines.storage.stores import ExportStore, LocalStore, S3Store
from pipelines.verifier import verify_export

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from exportctl.devstack import StackEndpoints

SEEDED_USERS = 300
SEEDED_FILES = 3_000
# Small parts: each object holds many gzip members / zstd frames, so readers cross frames.
LOCAL_PART_BYTES = 64 * 1024
S3_PART_BYTES = 5 * 1024 * 1024
# Rows per shard: one object for everything, or about three objects of the seeded data.
WHOLE_EXPORT_ROWS = 10_000_000
SHARD_ROWS = (SEEDED_USERS + SEEDED_FILES) // 3 + 1


def _with_database(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


def _seeded_database(
    stack: StackEndpoints, template: str, *, users: int, files: int, max_files: int
) -> Iterator[str]:
    name = f"restore_src_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    url = _with_database(stack.database_url, name)
    try:
        with psycopg.connect(url) as conn:
            seed_database(conn, users=users, files=files, max_files=max_files)
        yield url
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def source_url(stack: StackEndpoints, template_database: str) -> Iterator[str]:
    """A database seeded once for the module; tests only read it."""
    yield from _seeded_database(
        stack, template_database, users=SEEDED_USERS, files=SEEDED_FILES, max_files=1_000
    )


def _export(
    url: str,
    store: ExportStore,
    export_format: str,
    compression: str,
    *,
    shard_rows: int = WHOLE_EXPORT_ROWS,
    system: bool = True,
    part_bytes: int = LOCAL_PART_BYTES,
) -> Manifest:
    """Write a bulk export of every user with the real runner: shards, manifest, SHA256SUMS."""
    options = parse_options(
        export_format,
        {"compression": compression, "includeSystemFields": system},
        default_compression="zstd",
    )
    run = export_all(
        lambda: connect(url),
        options=options,
        store=store,
        limits=ExportLimits(part_size=part_bytes, max_size=None),
        target_shard_rows=shard_rows,
    )
    return run.manifest


def _table_digest(url: str, table: str, where: str = "TRUE") -> tuple[int, str | None]:
    """Return the row count and an ordered hash of every full row of `table`."""
    query = sql.SQL(
        "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {} AS t WHERE {}"
    ).format(sql.Identifier(table), sql.SQL(where))
    with connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _assert_same_data(source: str, target: str) -> None:
    for table in ("users", "files"):
        expected = _table_digest(source, table)
        assert expected[0] > 0
        assert _table_digest(target, table) == expected, f"{table} differs after restore"


def _table_exists(url: str, table: str) -> bool:
    with connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    assert row is not None
    return bool(row[0])


def _restore(
    url: str, location: str, *, allow_non_empty: bool = False, fill_object_keys: bool = False
) -> RestoreReport:
    with connect(url) as conn:
        return restore(
            conn,
            open_source(location),
            allow_non_empty=allow_non_empty,
            fill_object_keys=fill_object_keys,
        )


def test_seeded_source_holds_hostile_strings_deleted_rows_and_admins(source_url: str) -> None:
    with connect(source_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE deleted_at IS NOT NULL),"
            " (SELECT count(*) FROM files WHERE deleted_at IS NOT NULL),"
            " (SELECT count(*) FROM users WHERE role = 'admin'),"
            " (SELECT count(*) FROM files WHERE path ~ '[\\r\\n\\x01-\\x08\",<>&]')"
        ).fetchone()
    assert row is not None
    assert all(count > 0 for count in row), row


@pytest.mark.parametrize(
    ("export_format", "compression"), list(itertools.product(FORMATS, COMPRESSIONS))
)
def test_restored_database_equals_source_for_every_format_and_compression(
    source_url: str, empty_database_url: str, tmp_path: Path, export_format: str, compression: str
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), export_format, compression)
    seen: list[RestoreProgress] = []
    with connect(empty_database_url) as conn:
        report = restore(conn, open_source(str(tmp_path)), progress=seen.append)
    _assert_same_data(source_url, empty_database_url)
    assert dict(report.counts) == manifest.totals
    assert report.verified
    assert report.schema_applied
    assert report.stored_bytes == sum(item.size_bytes for item in manifest.objects)
    assert seen[-1].rows == report.rows
    assert seen[-1].stored_bytes == report.stored_bytes


def test_bulk_export_of_several_shards_restores_as_one_database(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), "csv", "zstd", shard_rows=SHARD_ROWS)
    assert len(manifest.objects) >= 3
    assert all(item.records["users"] > 0 for item in manifest.objects)
    code = main(["restore", str(tmp_path), "--database", empty_database_url])
    assert code == 0
    _assert_same_data(source_url, empty_database_url)


@pytest.fixture
def s3_environment(stack: StackEndpoints, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the CLI's S3 settings at the test server and a fresh bucket; return the bucket."""
    for name, value in stack.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("S3_BUCKET", s3_bucket)
    return s3_bucket


def test_restore_from_an_s3_prefix_equals_source(
    source_url: str, empty_database_url: str, s3_client: S3Client, s3_environment: str
) -> None:
    store = S3Store(s3_client, bucket=s3_environment, prefix="exports/restore-test/")
    manifest = _export(
        source_url, store, "jsonl", "gzip", shard_rows=SHARD_ROWS, part_bytes=S3_PART_BYTES
    )
    assert len(manifest.objects) > 1
    assert main(["restore", store.location, "--database", empty_database_url]) == 0
    _assert_same_data(source_url, empty_database_url)


def test_lone_s3_object_restores_without_its_manifest(
    source_url: str, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    store = S3Store(s3_client, bucket=s3_bucket, prefix="exports/lone/")
    manifest = _export(source_url, store, "csv", "zstd", part_bytes=S3_PART_BYTES)
    location = store.location + manifest.objects[0].name
    with connect(database_url) as conn:
        report = restore(conn, open_source(location, s3_client=s3_client))
    assert not report.verified
    _assert_same_data(source_url, database_url)


def test_restore_refuses_a_target_that_already_has_rows(source_url: str, tmp_path: Path) -> None:
    _export(source_url, LocalStore(tmp_path), "json", "none")
    before = _table_digest(source_url, "files")
    with pytest.raises(RestoreError, match="already holds users or files"):
        _restore(source_url, str(tmp_path))
    assert _table_digest(source_url, "files") == before


def test_allowed_non_empty_target_rejects_an_existing_id_and_keeps_nothing(
    source_url: str, database_url: str, tmp_path: Path
) -> None:
    _export(source_url, LocalStore(tmp_path), "jsonl", "zstd")
    with connect(source_url) as conn:
        row = conn.execute("SELECT id::text FROM users ORDER BY id DESC LIMIT 1").fetchone()
    assert row is not None
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES (%s, 'x@example.com', 'X')", row
        )
        conn.commit()
    with pytest.raises(RestoreConflictError, match=row[0]):
        _restore(database_url, str(tmp_path), allow_non_empty=True)
    assert _table_digest(database_url, "users")[0] == 1
    assert _table_digest(database_url, "files")[0] == 0


def test_allowed_non_empty_target_keeps_its_rows_and_gains_the_export(
    source_url: str, database_url: str, tmp_path: Path
) -> None:
    _export(source_url, LocalStore(tmp_path), "xml", "gzip")
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES"
            " ('ffffffff-ffff-4fff-8fff-ffffffffffff', 'kept@example.com', 'Kept')"
        )
        conn.commit()
    _restore(database_url, str(tmp_path), allow_non_empty=True)
    beyond = "t.id <> 'ffffffff-ffff-4fff-8fff-ffffffffffff'"
    assert _table_digest(database_url, "users", beyond) == _table_digest(source_url, "users")
    assert _table_digest(database_url, "files") == _table_digest(source_url, "files")


def _flip_inside_text(path: Path) -> None:
    """Change one letter of a value, so the object still parses but its bytes are not the same."""
    data = bytearray(path.read_bytes())
    index = data.index(b"example", len(data) // 2)
    data[index] = ord("E")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("export_format", ["csv", "jsonl"])
def test_corrupted_object_fails_before_commit_and_leaves_target_untouched(
    source_url: str, empty_database_url: str, tmp_path: Path, export_format: str
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), export_format, "none")
    _flip_inside_text(tmp_path / manifest.objects[0].name)
    with pytest.raises(
        CorruptExportError, match=r"SHA-256 is [0-9a-f]{64}, the manifest says"
    ) as caught:
        _restore(empty_database_url, str(tmp_path))
    assert manifest.objects[0].name in str(caught.value)
    assert "nothing was restored" in str(caught.value)
    assert not _table_exists(empty_database_url, "users")


def test_corrupted_export_through_the_cli_exits_1_with_the_reason(
    source_url: str, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), "csv", "none")
    _flip_inside_text(tmp_path / manifest.objects[0].name)
    assert main(["restore", str(tmp_path), "--database", database_url]) == 1
    assert "the export is corrupt" in capsys.readouterr().err
    assert _table_digest(database_url, "users")[0] == 0


def test_truncated_compressed_object_fails_and_commits_nothing(
    source_url: str, database_url: str, tmp_path: Path
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), "json", "zstd", shard_rows=SHARD_ROWS)
    last = tmp_path / manifest.objects[-1].name
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(PermanentError, match="nothing was restored"):
        _restore(database_url, str(tmp_path))
    assert _table_digest(database_url, "users")[0] == 0
    assert _table_digest(database_url, "files")[0] == 0


def test_lone_object_restores_with_format_and_compression_read_from_its_bytes(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), "xml", "gzip")
    lone = tmp_path / "download.bin"
    (tmp_path / manifest.objects[0].name).rename(lone)
    with connect(empty_database_url) as conn:
        report = restore(conn, open_source(str(lone)))
    assert not report.verified
    _assert_same_data(source_url, empty_database_url)


def test_path_to_the_manifest_restores_the_whole_export(
    source_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    manifest = _export(source_url, LocalStore(tmp_path), "csv", "gzip", shard_rows=SHARD_ROWS)
    report = _restore(empty_database_url, str(tmp_path / "manifest.json"))
    assert report.verified
    assert report.objects == len(manifest.objects) > 1
    _assert_same_data(source_url, empty_database_url)


def test_export_without_system_fields_needs_derived_object_keys(
    source_url: str, database_url: str, tmp_path: Path
) -> None:
    _export(source_url, LocalStore(tmp_path), "jsonl", "zstd", system=False)
    with pytest.raises(RestoreError, match="--fill-object-keys"):
        _restore(database_url, str(tmp_path))
    _restore(database_url, str(tmp_path), fill_object_keys=True)
    visible = "t.deleted_at IS NULL"
    live_files = (
        "t.deleted_at IS NULL AND t.owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL)"
    )
    # The seeder names objects files/<owner_id>/<id>, as the restore derives them.
    assert _table_digest(database_url, "files") == _table_digest(source_url, "files", live_files)
    assert _table_digest(database_url, "users")[0] == _table_digest(source_url, "users", visible)[0]


@pytest.mark.slow
def test_larger_seeded_database_restores_equal(
    stack: StackEndpoints, template_database: str, empty_database_url: str, tmp_path: Path
) -> None:
    for url in _seeded_database(
        stack, template_database, users=5_000, files=250_000, max_files=20_000
    ):
        _export(url, LocalStore(tmp_path), "jsonl", "zstd", shard_rows=100_000)
        with connect(empty_database_url) as conn:
            report = restore(conn, open_source(str(tmp_path)))
        assert dict(report.counts) == {"users": 5_000, "files": 250_000}
        _assert_same_data(url, empty_database_url)


def test_file_whose_owner_is_not_in_the_export_fails_and_commits_nothing(
    empty_database_url: str, tmp_path: Path
) -> None:
    orphan = (
        '{"record_type":"files","id":"7d9e2f10-8c3b-4a5d-b6e7-0f1a2b3c4d5e",'
        '"owner_id":"0b5f7c1e-4d2a-4c1e-9a7b-3f1d2e5c6a01","path":"a.txt","size_bytes":1,'
        '"content_type":"text/plain","sha256":"' + "ab" * 32 + '",'
        '"created_at":"2024-03-01T12:00:00Z","updated_at":"2024-03-01T12:00:00Z",'
        '"metadata":{},"object_key":"files/a","deleted_at":null}\n'
    )
    lone = tmp_path / "orphan.jsonl"
    lone.write_text(orphan, encoding="utf-8")
    with pytest.raises(PermanentError, match="is not present in table") as caught:
        _restore(empty_database_url, str(lone))
    assert "nothing was restored" in str(caught.value)
    assert not _table_exists(empty_database_url, "files")


# --- deeply nested jsonb -------------------------------------------------------------------------

# orjson stops at 1024 levels, Python's json module and `==` near 1000: the depths that failed.
AUDITED_DEPTHS = (900, 1_000, 1_025, 1_100, 5_000)
# Past what COPY reads at the default max_stack_depth (2 MB, about 13,800 levels of this shape);
# storing it needs a larger one, as a server configured for it would have.
DEEPER_THAN_DEFAULT = 20_000
LARGER_STACK = "4MB"


def _nested(depth: int) -> str:
    """Return jsonb text as PostgreSQL prints it: arrays and objects alternating, `depth` deep."""
    opening = "".join('{"k": ' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opening + "1" + closing


def _copies_as_jsonb(conn: psycopg.Connection[Any], text: str) -> bool:
    try:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE restore_probe (value jsonb) ON COMMIT DROP")
            with cursor.copy("COPY restore_probe (value) FROM STDIN") as copy:
                copy.write_row((text,))
    except psycopg.errors.StatementTooComplex:
        return False
    return True


def _deepest_copied_jsonb(url: str) -> int:
    """Return the deepest value of `_nested`'s shape that COPY, as restore uses it, reads."""
    low, high = 5_000, 100_000  # accepted, refused (checked below)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _copies_as_jsonb(conn, _nested(low))
        assert not _copies_as_jsonb(conn, _nested(high))
        while low + 1 < high:
            middle = (low + high) // 2
            low, high = (middle, high) if _copies_as_jsonb(conn, _nested(middle)) else (low, middle)
    return low


def _store_deep_values(url: str, depths: Iterable[int]) -> None:
    """Give `url` one user whose settings, and files whose metadata, are nested `depths` deep."""
    owner = "0b5f7c1e-0000-4000-8000-000000000001"
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name, settings)"
            " VALUES (%s, 'a', 'A', %s::jsonb)",
            (owner, _nested(max(depths))),
        )
        for number, depth in enumerate(depths):
            conn.execute(
                "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256,"
                " metadata, object_key) VALUES (%s, %s, 'p', 1, 'c', %s, %s::jsonb, 'k')",
                (str(uuid.UUID(int=number + 1)), owner, "ab" * 32, _nested(depth)),
            )
        conn.commit()


@pytest.mark.parametrize(("export_format", "compression"), [*itertools.product(FORMATS, ["zstd"])])
def test_jsonb_nested_as_deep_as_copy_reads_restores_exactly_and_verifies(
    database_url: str, empty_database_url: str, tmp_path: Path, export_format: str, compression: str
) -> None:
    deepest = _deepest_copied_jsonb(empty_database_url)
    assert deepest >= 5_000
    _store_deep_values(database_url, (*AUDITED_DEPTHS, deepest))
    _export(database_url, LocalStore(tmp_path), export_format, compression)
    assert verify_export(open_location(str(tmp_path), s3_client=None)).passed
    report = _restore(empty_database_url, str(tmp_path))
    assert dict(report.counts) == {"users": 1, "files": len(AUDITED_DEPTHS) + 1}
    _assert_same_data(database_url, empty_database_url)


def test_jsonb_deeper_than_the_target_reads_is_refused_until_its_stack_allows_it(
    stack: StackEndpoints, database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    source = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    target = psycopg.conninfo.conninfo_to_dict(empty_database_url)["dbname"]
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET max_stack_depth = {}").format(
                sql.Identifier(str(source)), sql.Literal(LARGER_STACK)
            )
        )
    _store_deep_values(database_url, (DEEPER_THAN_DEFAULT,))
    _export(database_url, LocalStore(tmp_path), "jsonl", "gzip")
    assert verify_export(open_location(str(tmp_path), s3_client=None)).passed
    # A retry cannot help: the error is permanent and says which setting decides.
    with pytest.raises(PermanentError, match="max_stack_depth") as caught:
        _restore(empty_database_url, str(tmp_path))
    assert not isinstance(caught.value, RetryableError)
    assert "nothing was restored" in str(caught.value)
    assert not _table_exists(empty_database_url, "users")
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET max_stack_depth = {}").format(
                sql.Identifier(str(target)), sql.Literal(LARGER_STACK)
            )
        )
    _restore(empty_database_url, str(tmp_path))
    _assert_same_data(database_url, empty_database_url)
