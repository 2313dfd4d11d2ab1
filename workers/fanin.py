"""The database fan-in of a bulk export: notice when every shard has ended, then finish the export.

Called by each shard when it ends and by the snapshot holder on every poll; whoever comes first
after the last shard ends does the work. The export row is locked FOR UPDATE, so two callers
serialize and only one finishes it. All shards completed: write SHA256SUMS and the manifest (the
last files an export gets) and complete the export. Any shard failed for good: fail the export
naming the failed shards. Dramatiq group callbacks never fire after a child fails; this does.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from psycopg.rows import dict_row

from pipelines.jobs import get_export
from pipelines.manifest import MANIFEST_NAME, ManifestObject, render_manifest
from pipelines.runner import publish_manifest, shard_name
from workers import metrics
from workers.rows import audit, expiry, header_from_row, options_from_row
from workers.runtime import Runtime

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = ("queued", "running")
# Failed shards named in an export's error message; the rest are counted.
NAMED_FAILURES = 5


def finalize_if_done(runtime: Runtime, conn: Any, export_id: str) -> bool:
    """Finish the bulk export when no shard is still queued or running; return whether it did."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM data_exports WHERE id = %s FOR UPDATE", (export_id,))
        export = cursor.fetchone()
        if export is None or export["status"] != "running" or export["shard_count"] is None:
            return False
        cursor.execute(
            "SELECT * FROM export_shards WHERE export_id = %s ORDER BY shard_index", (export_id,)
        )
        shards = cursor.fetchall()  # one small row per shard: tens, not millions
        if len(shards) < export["shard_count"] or any(
            s["status"] in ACTIVE_STATUSES for s in shards
        ):
            return False
        failed = [s for s in shards if s["status"] != "completed"]
        if failed:
            message = _failure_message(failed, len(shards))
            cursor.execute(
                "UPDATE data_exports SET status = 'failed', error_code = 'shard_failed',"
                " error_message = %s, lease_owner = NULL, lease_expires_at = NULL,"
                " finished_at = now(), updated_at = now() WHERE id = %s",
                (message, export_id),
            )
            audit(conn, export_id, "export.failed", message, level="error")
        else:
            _complete(runtime, conn, cursor, export, shards)
    if not failed:
        logger.info("bulk export %s: completed with %d shards", export_id, len(shards))
        runtime.queue.enqueue_verification(export_id)
    row = get_export(conn, export_id)
    if row is not None:
        metrics.export_row_ended(row)
        if row["status"] == "failed":
            runtime.webhooks.wake()
    return True


def _complete(
    runtime: Runtime, conn: Any, cursor: Any, export: dict[str, Any], shards: list[dict[str, Any]]
) -> None:
    """Publish SHA256SUMS and the manifest, then complete the export with its totals."""
    export_id = str(export["id"])
    options = options_from_row(export)
    header = header_from_row(export, options)
    store = runtime.store(export_id)
    entries = [_entry(shard, options) for shard in shards]
    manifest = publish_manifest(header, options, store, entries)
    # The manifest lists every object's digests, so its own SHA-256 stands for the export.
    digest = hashlib.sha256(render_manifest(manifest)).hexdigest()
    stored = sum(s["size_bytes"] for s in shards)
    content = sum(s["content_size_bytes"] for s in shards)
    cursor.execute(
        "UPDATE data_exports SET status = 'completed', progress = 100, object_key = %s,"
        " size_bytes = %s, content_size_bytes = %s, record_count = %s, user_count = %s,"
        " file_count = %s, sha256 = %s, content_sha256 = %s, compression_ratio = %s,"
        " multipart_upload_id = NULL, lease_owner = NULL, lease_expires_at = NULL,"
        " finished_at = now(), expires_at = %s, updated_at = now() WHERE id = %s",
        (
            store.key(MANIFEST_NAME),
            stored,
            content,
            sum(s["record_count"] for s in shards),
            sum(s["user_count"] for s in shards),
            sum(s["file_count"] for s in shards),
            digest,
            digest,
            content / stored if stored and content else None,
            expiry(conn, export, runtime.settings),
            export_id,
        ),
    )
    audit(
        conn,
        export_id,
        "export.completed",
        f"all {len(shards)} shards completed; manifest written",
        details={"shards": len(shards), "size_bytes": stored},
    )


def _entry(shard: dict[str, Any], options: Any) -> ManifestObject:
    part_size = int(shard["part_size_bytes"])
    return ManifestObject(
        name=shard_name(int(shard["shard_index"]), options),
        size_bytes=shard["size_bytes"],
        sha256=shard["sha256"],
        content_sha256=shard["content_sha256"],
        content_bytes=shard["content_size_bytes"],
        records={"users": shard["user_count"], "files": shard["file_count"]},
        part_size_bytes=part_size,
        # Every part but the last is exactly the part size.
        parts=max(1, math.ceil(shard["size_bytes"] / part_size)),
        user_range={
            "low": _text(shard["user_id_from"]),
            "high": _text(shard["user_id_to"]),
        },
    )


def _failure_message(failed: list[dict[str, Any]], total: int) -> str:
    named = ", ".join(
        f"shard {s['shard_index']} ({s['error_message'] or s['status']})"
        for s in failed[:NAMED_FAILURES]
    )
    more = f" and {len(failed) - NAMED_FAILURES} more" if len(failed) > NAMED_FAILURES else ""
    return f"{len(failed)} of {total} shards failed: {named}{more}"


def _text(value: object) -> str | None:
    return None if value is None else str(value)
