"""CSV written by PostgreSQL is the CSV serializer's output, byte for byte, and resumes alike."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.database import connect
from pipelines.export import make_header
from pipelines.options import ExportOptions
from pipelines.records import EncodedBatch, RowBatch, SourceBatch, export_tables
from pipelines.serializers import Chunk, encode_csv
from pipelines.sources import SourcePosition, UserRange, begin_snapshot, iter_shard_batches

# Values whose first character a spreadsheet would run, characters CSV must quote, and text that
# looks like a record boundary of COPY's output.
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20),
    st.lists(
        st.sampled_from(
            ["=1+1", "+", "-", "@", "\t", "\r", "'", '"', ",", "\n", '\n"files","', "é"]
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


def _encode(
    url: str, options: ExportOptions, *, batch_rows: int, read_as: str = "csv"
) -> list[Chunk]:
    """Return the CSV export's chunks, its source read for `read_as` (rows unless csv)."""
    header = make_header(
        export_id="e1",
        export_type="bulk",
        options=options,
        snapshot_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    with connect(url) as conn:
        begin_snapshot(conn)
        batches = iter_shard_batches(
            conn, users=UserRange(), options=replace(options, format=read_as), batch_rows=batch_rows
        )
        chunks = list(
            encode_csv(
                batches,
                tables=export_tables(options.include_system_fields),
                header=header,
                include_metadata=options.include_metadata,
            )
        )
        conn.rollback()
    return chunks


def _kinds(batches: Iterable[SourceBatch]) -> Iterator[type]:
    for batch in batches:
        yield type(batch)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    users=USERS_ROWS,
    files=FILES_ROWS,
    layout=st.tuples(st.booleans(), st.booleans()),
    batch_rows=st.sampled_from([1, 3, 2000]),
)
def test_database_written_csv_is_the_serializers_csv_byte_for_byte(
    database_url: str,
    users: list[tuple[Any, ...]],
    files: list[tuple[Any, ...]],
    layout: tuple[bool, bool],
    batch_rows: int,
) -> None:
    include_metadata, include_system = layout
    _fill(database_url, users, files)
    options = ExportOptions(
        format="csv", include_metadata=include_metadata, include_system_fields=include_system
    )
    # The same source read as rows (any other format) and written by the Python serializer.
    reference = _encode(database_url, options, batch_rows=2000, read_as="json")

    written = _encode(database_url, options, batch_rows=batch_rows)

    assert b"".join(c.data for c in written) == b"".join(c.data for c in reference)
    assert sum(c.records for c in written) == sum(c.records for c in reference)


def test_a_csv_export_reads_records_the_database_wrote(database_url: str) -> None:
    _fill(database_url, [("a@example.com", "A", {}, "2024-01-01 00:00:00+00", None, False)], [])
    options = ExportOptions(format="csv")
    with connect(database_url) as conn:
        begin_snapshot(conn)
        kinds = set(_kinds(iter_shard_batches(conn, users=UserRange(), options=options)))
        conn.rollback()

    assert kinds == {EncodedBatch}
    with connect(database_url) as conn:
        begin_snapshot(conn)
        other = replace(options, format="jsonl")
        kinds = set(_kinds(iter_shard_batches(conn, users=UserRange(), options=other)))
        conn.rollback()
    assert kinds == {RowBatch}


def test_resuming_after_any_batch_writes_the_rest_exactly(database_url: str) -> None:
    users = [
        (f"u{i}@example.com", f'"{i}\n', {"n": -i}, "2024-01-01 00:00:00+00", None, False)
        for i in range(4)
    ]
    files = [
        (i % 4, f"=/{i}\r\n", i, "text/plain", "2024-01-02 00:00:00.25+00", -i, "k", None)
        for i in range(30)
    ]
    _fill(database_url, users, files)
    options = ExportOptions(format="csv", include_system_fields=True)
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
            tail = encode_csv(
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
