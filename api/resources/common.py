"""Helpers every export resource shares: who is asking, from where, and which export."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime
from typing import Any

import falcon
import orjson
import psycopg

from api.auth import Principal
from api.payloads import export_id_param
from api.permissions import can_view
from api.problems import ProblemError
from api.queries import ExportWithLogs, LogWindow, export_with_logs
from api.submission import Origin
from pipelines.jobs import get_export

NOT_FOUND_DETAIL = "No export with this id."
GONE_DETAIL = "The export has expired; its data is deleted."


def principal_of(req: falcon.Request) -> Principal:
    """Return the authenticated principal the auth middleware stored."""
    principal: Principal = req.context.principal
    return principal


def origin_of(req: falcon.Request) -> Origin:
    """Return the request id, client address and user agent, for the audit trail."""
    try:
        client_ip: str | None = str(ipaddress.ip_address(req.remote_addr))
    except ValueError:
        client_ip = None
    user_agent = req.user_agent
    return Origin(
        request_id=getattr(req.context, "request_id", None),
        client_ip=client_ip,
        # User agents are free text; keep enough to identify a client, not a client's essay.
        user_agent=user_agent[:512] if user_agent else None,
    )


def visible_export(
    conn: psycopg.Connection[Any], principal: Principal, raw_id: str
) -> dict[str, Any]:
    """Return the export if the principal may see it; 404 whether it is missing or not theirs."""
    export_id: uuid.UUID = export_id_param(raw_id)
    row = get_export(conn, str(export_id))
    if row is None or not can_view(principal, row):
        raise ProblemError("not-found", NOT_FOUND_DETAIL)
    return row


def refuse_if_gone(row: dict[str, Any]) -> None:
    """Answer 410 for an export past its retention, whether or not cleanup has deleted it yet.

    Until the cleanup sweep runs, an export past `expires_at` still reads as completed; it is
    gone for clients the moment its retention ends, not whenever the sweep comes round.
    """
    expires_at = row["expires_at"]
    lapsed = expires_at is not None and expires_at <= datetime.now(UTC)
    if row["status"] == "expired" or row["purged_at"] is not None or lapsed:
        raise ProblemError("gone", GONE_DETAIL)


def visible_export_with_logs(
    conn: psycopg.Connection[Any], principal: Principal, raw_id: str, window: LogWindow
) -> ExportWithLogs:
    """Return the export and a window of its audit entries as `visible_export` decides."""
    found = export_with_logs(conn, export_id_param(raw_id), window)
    if found is None or not can_view(principal, found.row):
        raise ProblemError("not-found", NOT_FOUND_DETAIL)
    return found


def send_json(resp: falcon.Response, document: Any, *, status: int = 200) -> None:
    """Answer with `document` as JSON."""
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(document)


def send_page(
    resp: falcon.Response,
    key: str,
    documents: list[dict[str, Any]],
    *,
    total: int,
    limit: int,
    offset: int,
) -> None:
    """Answer with one page of a list: the documents under `key`, the total and the window."""
    send_json(resp, {key: documents, "total": total, "limit": limit, "offset": offset})
