"""What PostgreSQL writes or converts for an export (CSV records; CSV rows with timestamps and
booleans converted for JSON, JSON Lines and XML) gives byte for byte what the serializers write
from PostgreSQL's own text, and every format resumes alike."""

from __future__ import annotations

import json
import uuid
from contextlib import closing
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.string import TextLoader

from pipelines.database import connect
from pipelines.export import make_header
from pipelines.options import ExportOptions
from pipelines.records import CsvRowBatch, EncodedBatch, RowBatch, export_tables
from pipelines.serializers import ENCODERS, Chunk
from pipelines.sources import SourcePosition, UserRange, begin_snapshot, iter_shard_batches

# Values whose first character a spreadsheet would run, characters CSV must quote, and text that
# looks like a record boundary of COPY's output.
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
    st.lists(
        st.sampled_from(
            [
                *("=1+1", "+", "-", "@", "\t", "\r", "'", '"', ",", "\n", '\n"files","', "é"),
                *("&", "<", "]]>", "\x0b", "\ufffe", "\uffff"),
            ]
        ),
        max_size=6,
    ).map("".join),
)
TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "0001-01-01 00:00:00+00",
            "0001-12-31 23:59:59.999999+00 BC",
            "10000-01-01 00:00:00+00",
            "2024-02-29 23:59:59.5+00",
        ]
    ),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
USERS_ROWS = st.lists(
    st.tuples(TEXT, TEXT, JSON_VALUES, TIMESTAMPS, st.none() | TIMESTAMPS, st.booleans()),
    min_size=1,
    max_size=4,
)
FILES_ROWS = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        TEXT,
        st.integers(min_value=0, max_value=2**63 - 1),
        TEXT,
        TIMESTAMPS,
        JSON_VALUES,
        TEXT,
        st.none() | TIMESTAMPS,
    ),
    max_size=12,
)


def _fill(url: str, users: list[tuple[Any, ...]], files: list[tuple[Any, ...]]) -> None:
    with connect(url) as conn:
        conn.execute("DELETE FROM files")
        conn.execute("DELETE FROM users")
        ids = [str(uuid.uuid4()) for _ in users]
        for user_id, (email, name, settings_value, created, deleted, internal) in zip(
            ids, users, strict=True
        ):
            conn.execute(
                "INSERT INTO users (id, email, display_name, settings, created_at, updated_at,"
                " deleted_at, is_internal) VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s)",
                (
                    user_id,
                    email,
                    name,
                    json.dumps(settings_value),
                    created,
                    created,
                    deleted,
                    internal,
                ),
            )
        for owner, path, size, content_type, created, metadata, key, deleted in files:
            conn.execute(
                "INSERT INTO files (id, owner_id, path, size_bytes, content_type, sha256,"
                " created_at, updated_at, metadata, object_key, deleted_at) VALUES"
                " (%s, %s, %s, %s, %s, repeat('0', 64), %s, %s, %s::jsonb, %s, %s)",
                (
                    str(uuid.uuid4()),
                    ids[owner % len(ids)],
                    path,
                    size,
                    content_type,
                    created,
                    created,
                    json.dumps(metadata),
                    key,
                    deleted,
                ),
            )
        conn.commit()


def _encode(url: str, options: ExportOptions, *, batch_rows: int) -> list[Chunk]:
    """Return the export's chunks, read by the row source for its format."""
    header = make_header(
        export_id="e1",
        export_type="bulk",
        options=options,
        snapshot_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    with connect(url) as conn:
        begin_snapshot(conn)
        # Closed before the connection is, so a serializer error ends the COPY instead of leaving
        # it holding the connection.
        with closing(
            iter_shard_batches(conn, users=UserRange(), options=options, batch_rows=batch_rows)
        ) as batches:
            chunks = list(
                ENCODERS[options.format](
                    batches,
                    tables=export_tables(options.include_system_fields),
                    header=header,
                    include_metadata=options.include_metadata,
                )
            )
        conn.rollback()
    return chunks


def _encode_from_postgres_text(url: str, options: ExportOptions) -> list[Chunk]:
    """Return the export's chunks written from the rows as PostgreSQL prints them."""
    batches: list[RowBatch] = []
    hidden = "" if options.include_system_fields else "WHERE deleted_at IS NULL"
    with connect(url) as conn:
        cursor = conn.cursor()
        for type_name in ("uuid", "bool", "int8", "timestamptz", "jsonb", "text"):
            cursor.adapters.register_loader(type_name, TextLoader)
        for table in export_tables(options.include_system_fields):
            where, order = hidden, "id"
            if table.name == "files":
                order = "owner_id, id"
                if hidden:
                    where += " AND owner_id IN (SELECT id FROM users WHERE deleted_at IS NULL)"
            columns = ", ".join(table.column_names)
            query = f"SELECT {columns} FROM {table.name} {where} ORDER BY {order}"
            rows = [tuple(row) for row in cursor.execute(query)]
            if rows:
                batches.append(RowBatch(table, rows, None))
    header = make_header(
        export_id="e1",
        export_type="bulk",
        options=options,
        snapshot_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return list(
        ENCODERS[options.format](
            batches,
            tables=export_tables(options.include_system_fields),
            header=header,
            include_metadata=options.include_metadata,
        )
    )


def _kinds(url: str, export_format: str) -> set[type]:
    """Return the kinds of batch a shard source yields for `export_format`."""
    options = ExportOptions(format=export_format)
    with connect(url) as conn:
        begin_snapshot(conn)
        batches = list(iter_shard_batches(conn, users=UserRange(), options=options))
        conn.rollback()
    return {type(b) for b in batches}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    users=USERS_ROWS,
    files=FILES_ROWS,
    layout=st.tuples(
        st.booleans(), st.booleans(), st.sampled_from(["csv", "xml", "json", "jsonl"])
    ),
    batch_rows=st.sampled_from([1, 3, 2000]),
)
def test_database_written_values_give_the_serializers_bytes(
    database_url: str,
    users: list[tuple[Any, ...]],
    files: list[tuple[Any, ...]],
    layout: tuple[bool, bool, str],
    batch_rows: int,
) -> None:
    include_metadata, include_system, export_format = layout
    _fill(database_url, users, files)
    options = ExportOptions(
        format=export_format,
        include_metadata=include_metadata,
        include_system_fields=include_system,
    )
    # The same rows read by a plain cursor, every value as PostgreSQL prints it, written by the
    # serializer's row path.
    reference = _encode_from_postgres_text(database_url, options)

    written = _encode(database_url, options, batch_rows=batch_rows)

    assert b"".join(c.data for c in written) == b"".join(c.data for c in reference)
    assert sum(c.records for c in written) == sum(c.records for c in reference)


def test_csv_reads_records_and_the_other_formats_csv_rows(database_url: str) -> None:
    _fill(database_url, [("a@example.com", "A", {}, "2024-01-01 00:00:00+00", None, False)], [])

    assert _kinds(database_url, "csv") == {EncodedBatch}
    assert _kinds(database_url, "xml") == {CsvRowBatch}
    assert _kinds(database_url, "jsonl") == {CsvRowBatch}
    assert _kinds(database_url, "json") == {CsvRowBatch}


@pytest.mark.parametrize("export_format", ["csv", "xml", "json", "jsonl"])
def test_an_export_resumed_after_any_batch_writes_the_rest_exactly(
    database_url: str, export_format: str
) -> None:
    users = [
        (f"u{i}@example.com", f'"{i}\n', {"n": -i}, "2024-01-01 00:00:00+00", None, False)
        for i in range(4)
    ]
    files = [
        (i % 4, f"=/{i}\r\n", i, "text/plain", "2024-01-02 00:00:00.25+00", -i, "k", None)
        for i in range(30)
    ]
    _fill(database_url, users, files)
    options = ExportOptions(format=export_format, include_system_fields=True)
    tables = export_tables(True)
    full = _encode(database_url, options, batch_rows=4)
    header = make_header(
        export_id="e1",
        export_type="bulk",
        options=options,
        snapshot_time=datetime(2026, 1, 1, tzinfo=UTC),
    )

    resumable = [i for i, chunk in enumerate(full) if chunk.cursor is not None]
    assert len(resumable) > 5
    for index in resumable:
        cursor = full[index].cursor
        assert isinstance(cursor, SourcePosition)
        with connect(database_url) as conn:
            begin_snapshot(conn)
            tail = ENCODERS[export_format](
                iter_shard_batches(
                    conn, users=UserRange(), options=options, after=cursor, batch_rows=4
                ),
                tables=tables,
                header=header,
                include_metadata=True,
                resume=full[index].resume,
            )
            data = b"".join(chunk.data for chunk in tail)
            conn.rollback()
        assert data == b"".join(chunk.data for chunk in full[index + 1 :]), index
