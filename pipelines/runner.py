"""Run whole exports in one process: a user's export, a shard, or a bulk export shard by shard.

Each run opens its own read transaction (adopting an exported snapshot when given), writes its data
object(s) to a store, then the manifest and `SHA256SUMS`. The workers distribute the same steps over
many processes; the CLI, the demo and the benchmarks call these directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from pipelines.export import WrittenObject, build_manifest, make_header, write_object
from pipelines.manifest import (
    MANIFEST_NAME,
    SHA256SUMS_NAME,
    Manifest,
    ManifestObject,
    content_type,
    object_name,
    render_manifest,
    render_sha256sums,
)
from pipelines.options import ExportOptions
from pipelines.records import ExportHeader, SourceBatch
from pipelines.sharding import plan_shards
from pipelines.sources import (
    UserRange,
    begin_snapshot,
    export_snapshot,
    iter_shard_batches,
    iter_user_batches,
)
from pipelines.storage.sinks import Sink, SummaryFn, UploadedPart
from pipelines.storage.stores import ExportStore

MANIFEST_CONTENT_TYPE = "application/json"
SUMS_CONTENT_TYPE = "text/plain; charset=utf-8"

PartCallback = Callable[[UploadedPart], None]


@dataclass(frozen=True)
class ExportLimits:
    """How objects are cut and capped."""

    part_size: int
    max_size: int | None
    level: int | None = None


@dataclass(frozen=True)
class ExportRun:
    """A finished export: its manifest and the objects written."""

    manifest: Manifest
    objects: list[WrittenObject]
    location: str


def snapshot_time(conn: psycopg.Connection[Any]) -> datetime:
    """Return the start time of the current transaction: the instant the snapshot shows."""
    row = conn.execute("SELECT transaction_timestamp()").fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment.astimezone(UTC)


def export_user(
    conn: psycopg.Connection[Any],
    *,
    user_id: str,
    options: ExportOptions,
    store: ExportStore,
    limits: ExportLimits,
    export_id: str | None = None,
    on_part: PartCallback | None = None,
) -> ExportRun:
    """Export one user's data as a single object plus manifest and SHA256SUMS."""
    export_id = export_id or str(uuid.uuid4())
    begin_snapshot(conn)
    try:
        header = make_header(
            export_id=export_id,
            export_type="user",
            options=options,
            snapshot_time=snapshot_time(conn),
        )
        written = _write(
            iter_user_batches(conn, user_id=user_id, options=options),
            name=object_name("export", options.format, options.compression),
            header=header,
            options=options,
            store=store,
            limits=limits,
            on_part=on_part,
        )
    finally:
        conn.rollback()
    return _publish(header, options, store, [written], [written.manifest_entry()])


def export_shard(
    conn: psycopg.Connection[Any],
    *,
    number: int,
    users: UserRange,
    header: ExportHeader,
    options: ExportOptions,
    store: ExportStore,
    limits: ExportLimits,
    snapshot_id: str | None = None,
    on_part: PartCallback | None = None,
) -> WrittenObject:
    """Export one user-id range as one object, reading the given snapshot when there is one."""
    begin_snapshot(conn, snapshot_id=snapshot_id)
    try:
        return _write(
            iter_shard_batches(conn, users=users, options=options),
            name=shard_name(number, options),
            header=header,
            options=options,
            store=store,
            limits=limits,
            on_part=on_part,
        )
    finally:
        conn.rollback()


def export_all(
    connect: Callable[[], psycopg.Connection[Any]],
    *,
    options: ExportOptions,
    store: ExportStore,
    limits: ExportLimits,
    target_shard_rows: int,
    export_id: str | None = None,
    on_shard: Callable[[int, int, WrittenObject], None] | None = None,
) -> ExportRun:
    """Export every user, shard by shard, all from one exported snapshot, then the manifest."""
    export_id = export_id or str(uuid.uuid4())
    with connect() as holder:
        snapshot_id = export_snapshot(holder)
        header = make_header(
            export_id=export_id,
            export_type="bulk",
            options=options,
            snapshot_time=snapshot_time(holder),
        )
        ranges = plan_shards(holder, target_rows=target_shard_rows)
        written: list[WrittenObject] = []
        entries: list[ManifestObject] = []
        with connect() as reader:
            for number, users in enumerate(ranges, start=1):
                shard = export_shard(
                    reader,
                    number=number,
                    users=users,
                    header=header,
                    options=options,
                    store=store,
                    limits=limits,
                    snapshot_id=snapshot_id,
                )
                written.append(shard)
                entries.append(shard.manifest_entry(user_range=_range_json(users)))
                if on_shard is not None:
                    on_shard(number, len(ranges), shard)
        holder.rollback()
    return _publish(header, options, store, written, entries)


def shard_name(number: int, options: ExportOptions) -> str:
    """Return the object name of shard `number`, e.g. `shard-00001.csv.zst`."""
    return object_name(f"shard-{number:05d}", options.format, options.compression)


def publish_manifest(
    header: ExportHeader,
    options: ExportOptions,
    store: ExportStore,
    entries: list[ManifestObject],
) -> Manifest:
    """Write SHA256SUMS and then manifest.json, the last file an export gets."""
    manifest = build_manifest(header=header, options=options, objects=entries)
    store.put_bytes(SHA256SUMS_NAME, render_sha256sums(entries), content_type=SUMS_CONTENT_TYPE)
    store.put_bytes(MANIFEST_NAME, render_manifest(manifest), content_type=MANIFEST_CONTENT_TYPE)
    return manifest


def _write(
    batches: Iterable[SourceBatch],
    *,
    name: str,
    header: ExportHeader,
    options: ExportOptions,
    store: ExportStore,
    limits: ExportLimits,
    on_part: PartCallback | None,
) -> WrittenObject:
    def open_sink(summary: SummaryFn) -> Sink:
        return store.sink(
            name,
            content_type=content_type(options.format, options.compression),
            part_size=limits.part_size,
            max_size=limits.max_size,
            summary=summary,
        )

    return write_object(
        batches,
        name=name,
        options=options,
        header=header,
        open_sink=open_sink,
        part_size=limits.part_size,
        level=limits.level,
        on_part=on_part,
    )


def _publish(
    header: ExportHeader,
    options: ExportOptions,
    store: ExportStore,
    written: list[WrittenObject],
    entries: list[ManifestObject],
) -> ExportRun:
    manifest = publish_manifest(header, options, store, entries)
    return ExportRun(manifest=manifest, objects=written, location=store.location)


def _range_json(users: UserRange) -> dict[str, str | None]:
    return {"low": users.low, "high": users.high}
