"""One user export end to end on a real database, for every format and compression."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.types.string import TextLoader

from pipelines.database import connect
from pipelines.export import make_header, write_object
from pipelines.formats import iter_records
from pipelines.options import FORMATS, parse_options
from pipelines.records import FILES, USERS
from pipelines.sources import begin_snapshot, iter_user_batches
from pipelines.storage.reader import iter_content, iter_file_bytes
from pipelines.storage.sinks import LocalFileSink

ALICE = "00000000-0000-4000-8000-000000000001"
BOB = "00000000-0000-4000-8000-000000000002"
NASTY = ['=HYPERLINK("x")', 'a,b;"c"\r\nd', "]]> <tag>&amp;", "\x01\x0b\x1f", "日本語 🎉 ़", ""]


def _insert_people(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.execute(
        "INSERT INTO users (id, email, display_name, settings) VALUES"
        ' (%s, \'alice@example.com\', %s, \'{"theme": "dark", "n": 1.50}\'),'
        " (%s, 'bob@example.com', 'Bob', '{}')",
        (ALICE, NASTY[0], BOB),
    )
    for index, text in enumerate(NASTY * 50):
        owner = ALICE if index % 5 else BOB
        conn.execute(
            "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256, object_key,"
            " metadata, created_at) VALUES (gen_random_uuid(), %s, %s, %s, 'text/plain',"
            " repeat('ab', 32), 'files/' || %s, %s, %s)",
            (
                owner,
                f"/{index}/{text}",
                index,
                index,
                '{"note": "' + str(index) + '"}',
                datetime(2024, 1, 1 + index % 28, tzinfo=UTC),
            ),
        )
    conn.commit()


def _source_rows(url: str, user_id: str, system: bool) -> dict[str, list[tuple[str | None, ...]]]:
    rows: dict[str, list[tuple[str | None, ...]]] = {}
    with connect(url) as conn:
        for table, owner in ((USERS, "id"), (FILES, "owner_id")):
            projected = table.project(system)
            columns = ", ".join(projected.column_names)
            order = "id" if table is USERS else "owner_id, id"
            cursor = conn.cursor()
            for type_name in ("uuid", "bool", "int8", "timestamptz", "jsonb"):
                cursor.adapters.register_loader(type_name, TextLoader)
            rows[table.name] = [
                tuple(row)
                for row in cursor.execute(
                    f"SELECT {columns} FROM {table.name} WHERE {owner} = %s ORDER BY {order}",
                    (user_id,),
                )
            ]
    return rows


@pytest.mark.parametrize(
    ("export_format", "compression"), list(itertools.product(FORMATS, ("none", "gzip", "zstd")))
)
def test_user_export_reads_back_exactly_the_users_rows(
    database_url: str, tmp_path: Path, export_format: str, compression: str
) -> None:
    with connect(database_url) as conn:
        _insert_people(conn)
    options = parse_options(
        export_format,
        {"compression": compression, "includeSystemFields": True},
        default_compression="zstd",
    )
    header = make_header(
        export_id="e1", export_type="user", options=options, snapshot_time=datetime.now(UTC)
    )
    target = tmp_path / "export.bin"
    with connect(database_url) as conn:
        begin_snapshot(conn)
        written = write_object(
            iter_user_batches(conn, user_id=ALICE, options=options, batch_rows=7),
            name="export",
            options=options,
            header=header,
            open_sink=lambda _summary: LocalFileSink(target),
            part_size=4096,
        )
        conn.rollback()
    stream = iter_records(iter_content(iter_file_bytes(target), compression), format=export_format)
    got: dict[str, list[tuple[str | None, ...]]] = {"users": [], "files": []}
    for record in stream:
        got[record.table.name].append(record.values)
    expected = _source_rows(database_url, ALICE, system=True)
    assert got == expected
    assert written.counts == {"users": 1, "files": 240}
    assert written.digests.records == 241
    assert written.digests.stored_bytes == target.stat().st_size
