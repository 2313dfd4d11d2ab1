"""Turn export rows into what the engine needs, and the engine's results into row fields.

Options, header, compression level and part size are rebuilt from the row the same way on every
attempt, so a resumed attempt writes exactly the bytes the first one would have. The audit helper
writes the workers' entries in `export_logs`. No job logic lives here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import psycopg

from pipelines.export import WrittenObject, make_header
from pipelines.jobs import append_log
from pipelines.options import DateRange, ExportOptions
from pipelines.parts import choose_part_size
from pipelines.records import ExportHeader
from pipelines.settings import Settings

WORKER_ACTOR: Final = "worker"
Level = Literal["debug", "info", "warning", "error"]


def options_from_row(row: Mapping[str, Any]) -> ExportOptions:
    """Return the export options stored on a `data_exports` row."""
    stored = row["options"] or {}
    date_range = None
    if stored.get("dateRange"):
        bounds = stored["dateRange"]
        date_range = DateRange(
            start=_instant(bounds.get("start")), end_exclusive=_instant(bounds.get("endExclusive"))
        )
    return ExportOptions(
        format=row["format"],
        compression=row["compression"],
        include_metadata=bool(stored.get("includeMetadata", True)),
        include_system_fields=bool(stored.get("includeSystemFields", False)),
        date_range=date_range,
    )


def header_from_row(row: Mapping[str, Any], options: ExportOptions) -> ExportHeader:
    """Return the header of an export whose snapshot time is recorded on its row."""
    moment: datetime = row["snapshot_at"]
    return make_header(
        export_id=str(row["id"]),
        export_type=row["export_type"],
        options=options,
        snapshot_time=moment.astimezone(UTC),
    )


def compression_level(settings: Settings, compression: str) -> int | None:
    """Return the configured level for a compression, None for none."""
    return {"zstd": settings.export_zstd_level, "gzip": settings.export_gzip_level}.get(compression)


def part_size_for(settings: Settings, max_size: int) -> int:
    """Return a part size of at least the configured one that fits the largest allowed object."""
    return choose_part_size(max_size, minimum=settings.s3_part_size_bytes)


def result_fields(written: WrittenObject, *, object_key: str) -> dict[str, Any]:
    """Return the columns a completed export or shard records about its object."""
    digests = written.digests
    ratio = digests.content_bytes / digests.stored_bytes if digests.content_bytes else None
    return {
        "object_key": object_key,
        "part_size_bytes": written.part_size,
        "size_bytes": digests.stored_bytes,
        "content_size_bytes": digests.content_bytes,
        "record_count": sum(written.counts.values()),
        "user_count": written.counts.get("users", 0),
        "file_count": written.counts.get("files", 0),
        "sha256": written.stored.sha256 or digests.stored_sha256,
        "content_sha256": digests.content_sha256,
        **({"compression_ratio": ratio} if ratio is not None else {}),
    }


def expiry(conn: psycopg.Connection[Any], row: Mapping[str, Any], settings: Settings) -> datetime:
    """Return when a finished export expires: its template's retention or the default."""
    days = settings.export_retention_days
    if row.get("template_id") is not None:
        found = conn.execute(
            "SELECT retention_days FROM export_templates WHERE id = %s", (row["template_id"],)
        ).fetchone()
        if found is not None and found[0] is not None:
            days = int(found[0])
    return datetime.now(UTC) + timedelta(days=days)


def audit(
    conn: psycopg.Connection[Any],
    export_id: str,
    event: str,
    message: str,
    *,
    level: Level = "info",
    shard_id: str | None = None,
    request_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append a worker entry to the export's audit trail."""
    append_log(
        conn,
        event=event,
        message=message,
        actor_type=WORKER_ACTOR,
        export_id=export_id,
        shard_id=shard_id,
        level=level,
        request_id=request_id,
        details=details,
    )


def _instant(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
