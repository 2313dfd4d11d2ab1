"""Whole exports in one process: a user's export to S3, and a bulk export in shards to a folder."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.formats import iter_records
from pipelines.manifest import parse_manifest
from pipelines.options import parse_options
from pipelines.runner import ExportLimits, export_all, export_user
from pipelines.sharding import plan_shards
from pipelines.storage.reader import iter_content, iter_file_bytes, iter_object_bytes
from pipelines.storage.stores import LocalStore, S3Store

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LIMITS = ExportLimits(part_size=5 * 1024 * 1024, max_size=None)


def _seed(url: str, users: int) -> None:
    with connect(url) as conn:
        seed_database(conn, users=users, max_files=400, seed=7)
        conn.commit()


def test_shards_cover_every_user_exactly_once(database_url: str) -> None:
    _seed(database_url, 300)
    with connect(database_url) as conn:
        ranges = plan_shards(conn, target_rows=800)
        total_rows = conn.execute(
            "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM files)"
        ).fetchone()
        covered = 0
        for users in ranges:
            row = conn.execute(
                "SELECT count(*) FROM users WHERE (%(low)s::uuid IS NULL OR id >= %(low)s)"
                " AND (%(high)s::uuid IS NULL OR id < %(high)s)",
                {"low": users.low, "high": users.high},
            ).fetchone()
            assert row is not None
            covered += row[0]
    assert total_rows is not None
    assert len(ranges) >= total_rows[0] // 800
    assert ranges[0].low is None
    assert ranges[-1].high is None
    assert all(a.high == b.low for a, b in itertools.pairwise(ranges))
    with connect(database_url) as conn:
        users_row = conn.execute("SELECT count(*) FROM users").fetchone()
    assert users_row is not None
    assert covered == users_row[0]


def test_bulk_export_in_shards_holds_every_row_once(database_url: str, tmp_path: Path) -> None:
    _seed(database_url, 300)
    options = parse_options(
        "jsonl", {"compression": "zstd", "includeSystemFields": True}, default_compression="zstd"
    )
    run = export_all(
        lambda: connect(database_url),
        options=options,
        store=LocalStore(tmp_path),
        limits=LIMITS,
        target_shard_rows=1500,
    )
    assert len(run.manifest.objects) > 1
    manifest = parse_manifest((tmp_path / "manifest.json").read_bytes())
    seen: dict[str, set[str]] = {"users": set(), "files": set()}
    read = 0
    for entry in manifest.objects:
        blobs = iter_content(iter_file_bytes(tmp_path / entry.name), "zstd")
        for record in iter_records(blobs, format="jsonl"):
            record_id = str(record.values[0])
            assert record_id not in seen[record.table.name]
            seen[record.table.name].add(record_id)
            read += 1
    with connect(database_url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)"
        ).fetchone()
    assert counts is not None
    assert (len(seen["users"]), len(seen["files"])) == counts
    assert manifest.totals == {"users": counts[0], "files": counts[1]}
    assert read == counts[0] + counts[1]
    sums = (tmp_path / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(manifest.objects)


def test_user_export_to_s3_writes_object_manifest_and_sums(
    database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    _seed(database_url, 50)
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT owner_id::text FROM files GROUP BY owner_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    options = parse_options("csv", {"compression": "gzip"}, default_compression="zstd")
    store = S3Store(s3_client, bucket=s3_bucket, prefix="exports/e1/")
    with connect(database_url) as conn:
        run = export_user(conn, user_id=row[0], options=options, store=store, limits=LIMITS)
    keys = {
        item["Key"]
        for item in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="exports/e1/")["Contents"]
    }
    assert {"exports/e1/export.csv.gz", "exports/e1/manifest.json", "exports/e1/SHA256SUMS"} <= keys
    manifest = orjson.loads(
        b"".join(iter_object_bytes(s3_client, bucket=s3_bucket, key="exports/e1/manifest.json"))
    )
    entry = manifest["objects"][0]
    assert entry["sha256"] == run.objects[0].digests.stored_sha256
    head = s3_client.head_object(Bucket=s3_bucket, Key="exports/e1/export.csv.gz")
    assert head["ContentLength"] == entry["sizeBytes"]
    assert head["ContentType"] == "application/gzip"
