"""A resumed export credits the same records to each part as an uninterrupted one.

The parts after a resume point are rebuilt from the database from the point's cursor; their bytes
were already the same, and their record counts (stored per part and summed into the object's
digest record) must be the same too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.export import make_header, with_export_cursors
from pipelines.options import FORMATS, parse_options
from pipelines.parts import Part, ResumePoint, iter_parts
from pipelines.records import export_tables
from pipelines.serializers import ENCODERS
from pipelines.sources import SourcePosition, UserRange, begin_snapshot, iter_shard_batches

PART_BYTES = 64 * 1024
# Small batches: many chunks per part, so a shifted chunk boundary moves records between parts.
BATCH_ROWS = 50


def _parts(
    url: str, export_format: str, compression: str, resume: ResumePoint | None
) -> list[Part]:
    """Write one object of every user's data with the real stages, from `resume` if given."""
    options = parse_options(
        export_format,
        {"compression": compression, "includeSystemFields": True},
        default_compression="zstd",
    )
    header = make_header(
        export_id="resume-counts",
        export_type="bulk",
        options=options,
        snapshot_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    tables = export_tables(True)
    cursor: Any = resume.cursor if resume is not None else None
    after: SourcePosition | None = cursor.source if cursor is not None else None
    counts = {table.name: 0 for table in tables}
    serializer = cursor.serializer if cursor is not None else None
    if serializer is not None:
        counts.update(serializer.counts)
    with connect(url) as conn:
        begin_snapshot(conn)
        batches = iter_shard_batches(
            conn, users=UserRange(), options=options, after=after, batch_rows=BATCH_ROWS
        )
        chunks = ENCODERS[export_format](
            batches, tables=tables, header=header, include_metadata=True, resume=serializer
        )
        return list(
            iter_parts(
                with_export_cursors(chunks, counts),
                compression=compression,
                part_size=PART_BYTES,
                resume=resume,
            )
        )


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip"])
@pytest.mark.parametrize("export_format", FORMATS)
def test_parts_after_a_resume_hold_the_records_of_the_uninterrupted_run(
    database_url: str, export_format: str, compression: str
) -> None:
    with psycopg.connect(database_url) as conn:
        seed_database(conn, users=300, files=3_000, max_files=1_000)
    full = _parts(database_url, export_format, compression, None)
    points = [(index, part.resume) for index, part in enumerate(full[:-1]) if part.resume]
    assert len(points) >= 3
    for index, point in points[:3]:
        assert point.records == sum(part.records for part in full[: index + 1])
        tail = _parts(database_url, export_format, compression, point)
        assert [part.data for part in tail] == [part.data for part in full[index + 1 :]]
        assert [part.records for part in tail] == [part.records for part in full[index + 1 :]]
        resumes = [part.resume.records for part in tail if part.resume is not None]
        expected = [part.resume.records for part in full[index + 1 :] if part.resume is not None]
        assert resumes == expected
