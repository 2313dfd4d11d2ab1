"""The demo-data seeder against real PostgreSQL and a real S3 server: counts, skew, hostile strings,
determinism, refusal of a non-empty table, and objects that match (or, when damaged, do not match)
their rows.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from exportctl.commands import seed
from exportctl.seeding import (
    TableNotEmptyError,
    damage_objects,
    seed_database,
    write_objects,
)
from pipelines.errors import ExportError, PermanentError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Every text value the seeder may make hostile, one row per value.
ALL_TEXT = """
    SELECT display_name AS v FROM users
    UNION ALL SELECT email FROM users
    UNION ALL SELECT settings->>'note' FROM users
    UNION ALL SELECT path FROM files
    UNION ALL SELECT content_type FROM files
    UNION ALL SELECT metadata->>'note' FROM files
"""

# Each category the seeder promises, as this test's own SQL condition on a value `v`.
CATEGORY_CONDITIONS = {
    "cjk": "v ~ '[一-龥]'",
    "emoji": "v ~ '[\U0001f300-\U0001faff]'",
    "combining": "v ~ '[\u0300-\u036f]'",
    "rtl": "v ~ '[\u0590-\u06ff]'",
    "single quote": "strpos(v, '''') > 0",
    "double quote": "strpos(v, '\"') > 0",
    "comma": "strpos(v, ',') > 0",
    "semicolon": "strpos(v, ';') > 0",
    "newline": r"v ~ E'[^\\r]\\n'",
    "crlf": r"strpos(v, E'\r\n') > 0",
    "tab": r"strpos(v, E'\t') > 0",
    "control \\x01": r"strpos(v, E'\x01') > 0",
    "control \\x0b": r"strpos(v, E'\x0b') > 0",
    "control \\x1f": r"strpos(v, E'\x1f') > 0",
    "cdata end": "strpos(v, ']]>') > 0",
    "markup": "strpos(v, '<') > 0 AND strpos(v, '&amp;') > 0",
    "backslash": r"strpos(v, E'\\') > 0",
    "leading =": "left(v, 1) = '='",
    "leading +": "left(v, 1) = '+'",
    "leading -": "left(v, 1) = '-'",
    "leading @": "left(v, 1) = '@'",
    "hyperlink formula": "v LIKE '=HYPERLINK(%'",
    "10 KB value": "length(v) >= 10000",
    "empty": "v = ''",
}


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _fingerprint(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    users = _scalar(conn, "SELECT md5(string_agg(u::text, '|' ORDER BY id)) FROM users AS u")
    files = _scalar(conn, "SELECT md5(string_agg(f::text, '|' ORDER BY id)) FROM files AS f")
    return users, files


def test_seed_makes_exactly_the_users_and_files_asked_for(conn: psycopg.Connection[Any]) -> None:
    report = seed_database(conn, users=300, files=7_000, seed=3)

    assert _scalar(conn, "SELECT count(*) FROM users") == 300
    assert _scalar(conn, "SELECT count(*) FROM files") == 7_000
    assert (report.users, report.files) == (300, 7_000)


def test_seed_defaults_to_fifty_files_per_user(conn: psycopg.Connection[Any]) -> None:
    seed_database(conn, users=40)

    assert _scalar(conn, "SELECT count(*) FROM files") == 2_000


def test_files_per_user_are_heavily_skewed_and_capped(conn: psycopg.Connection[Any]) -> None:
    report = seed_database(conn, users=2_000, max_files=3_000, seed=1)

    counts = [
        count
        for (count,) in conn.execute(
            "SELECT count(f.id) FROM users AS u LEFT JOIN files AS f ON f.owner_id = u.id"
            " GROUP BY u.id"
        )
    ]
    median = statistics.median(counts)
    assert 3 <= median <= 12
    assert 1_000 <= max(counts) <= 3_000
    assert 0.05 <= counts.count(0) / len(counts) <= 0.15
    assert sum(1 for count in counts if count >= 1_000) >= 3
    assert report.max_files == max(counts)
    assert report.users_without_files == counts.count(0)


def test_seed_refuses_impossible_caps(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(PermanentError, match="max-files"):
        seed_database(conn, users=10, files=1_000, max_files=10)

    assert _scalar(conn, "SELECT count(*) FROM users") == 0


@pytest.mark.parametrize("category", sorted(CATEGORY_CONDITIONS))
def test_every_hostile_string_category_is_in_the_data(
    conn: psycopg.Connection[Any], category: str
) -> None:
    seed_database(conn, users=60, files=600)

    condition = CATEGORY_CONDITIONS[category]
    found = _scalar(conn, f"SELECT count(*) FROM ({ALL_TEXT}) AS t WHERE {condition}")
    assert found > 0, f"no seeded value holds {category}"


def test_seeded_rows_carry_the_shapes_an_exporter_must_handle(
    conn: psycopg.Connection[Any],
) -> None:
    report = seed_database(conn, users=200, files=4_000)

    assert report.missing_categories == []
    assert _scalar(conn, "SELECT count(*) FROM users WHERE role = 'admin'") >= 1
    assert _scalar(conn, "SELECT count(*) FROM users WHERE deleted_at IS NOT NULL") >= 1
    assert _scalar(conn, "SELECT count(*) FROM users WHERE deleted_at IS NULL") >= 100
    assert _scalar(conn, "SELECT count(*) FROM files WHERE deleted_at IS NOT NULL") >= 1
    assert _scalar(conn, "SELECT count(*) FROM users WHERE email NOT LIKE '%_@_%'") == 0
    assert _scalar(conn, "SELECT count(*) FROM files WHERE size_bytes = 0") >= 1
    assert (
        _scalar(
            conn,
            "SELECT count(*) FROM files"
            " WHERE object_key <> 'files/' || owner_id || '/' || id"
            "    OR sha256 !~ '^[0-9a-f]{64}$' OR updated_at < created_at",
        )
        == 0
    )
    years = _scalar(
        conn,
        "SELECT extract(year FROM max(created_at)) - extract(year FROM min(created_at)) FROM files",
    )
    assert years >= 5
    assert _scalar(conn, "SELECT count(*) FROM files WHERE metadata = '{}'::jsonb") >= 1
    assert _scalar(conn, "SELECT count(*) FROM files WHERE metadata ? 'numbers'") >= 1


def test_same_seed_gives_the_same_data_and_another_seed_does_not(
    conn: psycopg.Connection[Any],
) -> None:
    seed_database(conn, users=150, files=3_000, seed=7)
    first = _fingerprint(conn)

    seed_database(conn, users=150, files=3_000, seed=7, replace=True)
    again = _fingerprint(conn)
    seed_database(conn, users=150, files=3_000, seed=8, replace=True)
    other = _fingerprint(conn)

    assert again == first
    assert other[0] != first[0]
    assert other[1] != first[1]


def test_seed_refuses_a_non_empty_users_table(conn: psycopg.Connection[Any]) -> None:
    seed_database(conn, users=20, files=100, seed=1)
    before = _fingerprint(conn)

    with pytest.raises(TableNotEmptyError, match="--replace"):
        seed_database(conn, users=30, files=100, seed=2)

    assert _fingerprint(conn) == before


def _seed_command(argv: list[str]) -> int:
    """Run `exportctl seed` as the CLI does: errors of the project become exit code 1."""
    parser = argparse.ArgumentParser(prog="exportctl")
    seed.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["seed", *argv])
    try:
        code: int = args.handler(args)
    except ExportError as exc:
        print(f"exportctl: {exc}", file=sys.stderr)
        return 1
    return code


def test_seed_command_refuses_a_non_empty_table_and_replaces_on_request(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    assert _seed_command(["--users", "25", "--files", "300"]) == 0
    made = capsys.readouterr().out
    assert _seed_command(["--users", "25"]) == 1
    refused = capsys.readouterr().err
    assert _seed_command(["--users", "30", "--replace"]) == 0
    replaced = capsys.readouterr().out

    assert "seeded 25 users and 300 files" in made
    assert "files per user: median" in made
    assert "hostile strings:" in made
    assert "--replace" in refused
    assert "seeded 30 users and 1,500 files" in replaced


def _object_state(client: S3Client, bucket: str, key: str) -> tuple[int, str] | None:
    """Return (size, sha256) of an object as the server reports and serves it, None if absent."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert head["ContentLength"] == len(body)
    return len(body), hashlib.sha256(body).hexdigest()


def _count_objects(client: S3Client, bucket: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="files/")
    return sum(page.get("KeyCount", 0) for page in pages)


def test_written_objects_match_the_rows_size_and_sha256(
    conn: psycopg.Connection[Any], s3_client: S3Client, s3_bucket: str
) -> None:
    seed_database(conn, users=30, files=400)

    written = write_objects(conn, s3_client, s3_bucket, workers=4)

    assert written == 400
    assert _count_objects(s3_client, s3_bucket) == 400
    sample = conn.execute(
        "SELECT object_key, size_bytes, sha256 FROM files"
        " ORDER BY size_bytes = 0 DESC, size_bytes DESC, id LIMIT 25"
    ).fetchall()
    assert any(size == 0 for _, size, _ in sample)
    for key, size, digest in sample:
        assert _object_state(s3_client, s3_bucket, key) == (size, digest)


def test_damage_breaks_exactly_the_objects_it_reports(
    conn: psycopg.Connection[Any], s3_client: S3Client, s3_bucket: str
) -> None:
    seed_database(conn, users=20, files=120)
    write_objects(conn, s3_client, s3_bucket, workers=4)

    damaged = damage_objects(conn, s3_client, s3_bucket, count=7, seed=5)

    assert len(damaged) == 7
    assert {item.kind for item in damaged} == {"missing", "altered", "resized"}
    found: dict[str, str] = {}
    for file_id, key, size, digest in conn.execute(
        "SELECT id::text, object_key, size_bytes, sha256 FROM files"
    ):
        state = _object_state(s3_client, s3_bucket, key)
        if state is None:
            found[file_id] = "missing"
        elif state[0] != size:
            found[file_id] = "resized"
        elif state[1] != digest:
            found[file_id] = "altered"
    assert found == {item.file_id: item.kind for item in damaged}
