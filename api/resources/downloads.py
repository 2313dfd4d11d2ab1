"""GET /api/exports/{exportId}/download: a presigned URL (302) or the object streamed through.

Only completed exports download (409 otherwise, 410 once expired or purged). A streamed download
honours one `Range` (206, or 416 outside the object) guarded by `If-Range`, so a broken download
resumes where it stopped; a presigned URL gets the same from the bucket itself. Every download
is recorded in `export_logs` with who, when, from where, how and which bytes, committed before
the answer goes out, so no download is ever unaudited.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import falcon
import psycopg

from api.auth import Principal
from api.byte_ranges import ByteRange, parse_range, strong_entity_tag
from api.database import Database
from api.objects import (
    Download,
    ObjectMissingError,
    ObjectStore,
    OpenedObject,
    RangeNotSatisfiableError,
    ValidatorChangedError,
)
from api.permissions import Action, actor_type, require
from api.problems import ProblemError
from api.resources.common import (
    GONE_DETAIL,
    origin_of,
    principal_of,
    refuse_if_gone,
    visible_export,
)
from pipelines.jobs import append_log
from pipelines.manifest import content_type
from pipelines.settings import Settings

logger = logging.getLogger(__name__)


def _check_downloadable(row: dict[str, Any]) -> None:
    refuse_if_gone(row)
    if row["status"] != "completed" or row["object_key"] is None:
        raise ProblemError(
            "conflict", f"Only completed exports can be downloaded; this one is {row['status']}."
        )


def describe(row: dict[str, Any], *, expires_in_seconds: int) -> Download:
    """Return how to serve the export's object: key, a file name that says how to open it, type."""
    key = str(row["object_key"])
    name = posixpath.basename(key)
    is_data = row["export_type"] == "user"
    media_type = content_type(row["format"], row["compression"]) if is_data else "application/json"
    return Download(
        key=key,
        filename=f"data-export-{row['id']}-{name}",
        content_type=media_type,
        expires_in_seconds=expires_in_seconds,
    )


class DownloadResource:
    """Hand a completed export to its owner (or an administrator)."""

    def __init__(self, database: Database, objects: ObjectStore, settings: Settings) -> None:
        self._database = database
        self._objects = objects
        self._presign = settings.s3_presign_enabled
        self._presign_seconds = settings.s3_presign_seconds

    def on_get(self, req: falcon.Request, resp: falcon.Response, export_id: str) -> None:
        """Redirect to a presigned URL, or stream the object when presigning is off."""
        principal = principal_of(req)
        require(principal, Action.READ)
        url = ""
        opened: OpenedObject | None = None
        requested = None if self._presign else parse_range(req.get_header("Range"))
        try:
            with self._database.transaction() as conn:
                row = visible_export(conn, principal, export_id)
                _check_downloadable(row)
                download = describe(row, expires_in_seconds=self._presign_seconds)
                if self._presign:
                    url = self._objects.presign(download)
                else:
                    opened = self._open(download, row, requested, req.get_header("If-Range"))
                self._audit(conn, req, principal, row, download, opened=opened)
        except BaseException:
            if opened is not None:
                opened.close()  # never streamed: give the S3 connection back
            raise
        resp.set_header("Cache-Control", "no-store")
        if self._presign:
            resp.status = 302
            resp.location = url
            return
        assert opened is not None
        resp.content_type = download.content_type
        resp.downloadable_as = download.filename
        resp.content_length = opened.size_bytes
        resp.set_header("Accept-Ranges", "bytes")
        if opened.etag:
            resp.etag = opened.etag
        if opened.content_range:
            resp.status = 206
            resp.set_header("Content-Range", opened.content_range)
        resp.stream = opened.chunks

    def _open(
        self,
        download: Download,
        row: dict[str, Any],
        requested: ByteRange | None,
        if_range: str | None,
    ) -> OpenedObject:
        """Start reading the object, or the range asked for while `If-Range` still holds; a
        completed export whose object is gone is 410, a range outside it 416."""
        try:
            if requested is not None and (if_range is None or strong_entity_tag(if_range)):
                try:
                    return self._objects.open(
                        download.key,
                        byte_range=requested.header(),
                        if_match=strong_entity_tag(if_range),
                    )
                except ValidatorChangedError:
                    pass  # the object is not the one the client has part of: send it whole
            return self._objects.open(download.key)
        except ObjectMissingError as exc:
            logger.error("export %s is completed but its object is missing", row["id"])
            raise ProblemError("gone", GONE_DETAIL) from exc
        except RangeNotSatisfiableError as exc:
            asked = requested.header() if requested is not None else "the range"
            raise ProblemError(
                "range-not-satisfiable",
                f"The export's object holds {exc.size_bytes} bytes; {asked} is outside it.",
                headers={"Content-Range": f"bytes */{exc.size_bytes}"},
            ) from exc

    def _audit(
        self,
        conn: psycopg.Connection[Any],
        req: falcon.Request,
        principal: Principal,
        row: dict[str, Any],
        download: Download,
        *,
        opened: OpenedObject | None,
    ) -> None:
        """Record who downloaded the export, when, from where, how and which bytes."""
        origin = origin_of(req)
        append_log(
            conn,
            event="export.downloaded",
            message="download by presigned URL" if self._presign else "download streamed",
            actor_type=actor_type(principal),
            actor_id=str(principal.user_id),
            export_id=str(row["id"]),
            request_id=origin.request_id,
            client_ip=origin.client_ip,
            user_agent=origin.user_agent,
            details={
                "method": "presigned" if self._presign else "stream",
                "objectKey": download.key,
                "expiresInSeconds": self._presign_seconds if self._presign else None,
                "forwardedFor": req.get_header("X-Forwarded-For"),
                "contentRange": opened.content_range if opened is not None else None,
            },
        )
