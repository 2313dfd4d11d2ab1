"""The export endpoints: request a user or bulk export, list, read the status, verify, clean up.

Resources validate and authorize, then hand over to `ExportSubmitter` (new exports), the
queries (reads) or the dispatcher (verification and cleanup messages). They never read export
data.
"""

from __future__ import annotations

from typing import Literal

import falcon

from api.database import Database
from api.dispatch import Dispatcher
from api.documents import EXPORTS_PATH, export_document, status_document
from api.payloads import (
    WindowSpec,
    check_params,
    choice_param,
    idempotency_key,
    read_export_request,
    read_json_object,
    window_params,
    window_query,
)
from api.permissions import Action, actor_type, require
from api.problems import ProblemError, invalid_request
from api.queries import (
    DEFAULT_LOG_WINDOW,
    DEFAULT_PAGE_SIZE,
    EXPORT_STATUSES,
    MAX_LOG_WINDOW,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    ExportFilter,
    LogWindow,
)
from api.queries import list_exports as query_exports
from api.ratelimit import apply_rate_limit_headers
from api.resources.common import (
    origin_of,
    principal_of,
    refuse_if_gone,
    send_json,
    send_page,
    visible_export,
    visible_export_with_logs,
)
from api.submission import ExportSubmitter
from pipelines.jobs import append_log
from pipelines.options import FORMATS
from pipelines.settings import Settings

REPLAYED_HEADER = "Idempotent-Replayed"
# The export list's page, and the status document's window of audit entries.
EXPORT_PAGE = WindowSpec("limit", "offset", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_OFFSET)
LOG_WINDOW = WindowSpec("log_limit", "log_offset", DEFAULT_LOG_WINDOW, MAX_LOG_WINDOW, MAX_OFFSET)
LIST_PARAMETERS = frozenset({"status", "format"}) | EXPORT_PAGE.names


class ExportRequestResource:
    """POST a new export of one type (`user` or `bulk`)."""

    def __init__(
        self,
        submitter: ExportSubmitter,
        settings: Settings,
        *,
        export_type: Literal["user", "bulk"],
    ) -> None:
        self._submitter = submitter
        self._settings = settings
        self._export_type = export_type

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Accept an export request: 202 when created, 200 for an idempotent retry."""
        principal = principal_of(req)
        require(principal, Action.BULK if self._export_type == "bulk" else Action.CREATE)
        key = idempotency_key(req)
        request = read_export_request(
            req,
            default_compression=self._settings.export_default_compression,
            compression_enabled=self._settings.export_compression_enabled,
        )
        submission = self._submitter.submit(
            principal,
            export_type=self._export_type,
            options=request.options,
            body=request.body,
            idempotency_key=key,
            origin=origin_of(req),
        )
        document = {"export": export_document(submission.row)}
        req.context.export_id = document["export"]["id"]
        resp.set_header("Location", document["export"]["links"]["status"])
        if submission.decision is not None:
            apply_rate_limit_headers(resp, submission.decision)
        if submission.created:
            send_json(resp, document, status=202)
        else:
            resp.set_header(REPLAYED_HEADER, "true")
            send_json(resp, document, status=200)


class ExportListResource:
    """GET the caller's exports, filtered and paginated, with the total count."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List the caller's exports, newest first."""
        principal = principal_of(req)
        require(principal, Action.READ)
        params = check_params(req, LIST_PARAMETERS)
        problems: dict[str, str] = {}
        limit, offset = window_params(params, EXPORT_PAGE, problems)
        flt = ExportFilter(
            user_id=principal.user_id,
            status=choice_param(params, "status", EXPORT_STATUSES, problems),
            export_format=choice_param(params, "format", FORMATS, problems),
            limit=limit,
            offset=offset,
        )
        if problems:
            raise invalid_request(problems)
        with self._database.transaction() as conn:
            page = query_exports(conn, flt)
        documents = [export_document(row) for row in page.rows]
        send_page(resp, "exports", documents, total=page.total, limit=flt.limit, offset=flt.offset)


class ExportStatusResource:
    """GET one export's metadata, progress, verification outcome and newest audit entries."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def on_get(self, req: falcon.Request, resp: falcon.Response, export_id: str) -> None:
        """Answer the export's status document with a window of its audit entries, or 404."""
        principal = principal_of(req)
        require(principal, Action.READ)
        limit, offset = window_query(req, LOG_WINDOW)
        window = LogWindow(limit=limit, offset=offset)
        # One statement in autocommit: one round trip, and the row, entries and total agree.
        with self._database.autocommit() as conn:
            found = visible_export_with_logs(conn, principal, export_id, window)
        document = status_document(
            found.row,
            found.logs,
            log_total=found.log_total,
            log_limit=window.limit,
            log_offset=window.offset,
        )
        send_json(resp, {"export": document})


class ExportVerifyResource:
    """POST a verification run of a completed export."""

    def __init__(self, database: Database, dispatcher: Dispatcher) -> None:
        self._database = database
        self._dispatcher = dispatcher

    def on_post(self, req: falcon.Request, resp: falcon.Response, export_id: str) -> None:
        """Queue the verifier for the export: 202, or 409/410 when there is nothing to verify."""
        principal = principal_of(req)
        require(principal, Action.VERIFY)
        if read_json_object(req):
            raise invalid_request({"": "this request takes no body (or an empty object)"})
        origin = origin_of(req)
        with self._database.transaction() as conn:
            row = visible_export(conn, principal, export_id)
            refuse_if_gone(row)
            if row["status"] != "completed":
                raise ProblemError(
                    "conflict",
                    f"Only completed exports can be verified; this one is {row['status']}.",
                )
            # Verification only reads and reports, so a repeated message is harmless. Sending it
            # inside the transaction means the audit entry exists only if the message went out.
            self._dispatcher.enqueue_verification(str(row["id"]), request_id=origin.request_id)
            append_log(
                conn,
                event="verification.requested",
                message="verification requested",
                actor_type=actor_type(principal),
                actor_id=str(principal.user_id),
                export_id=str(row["id"]),
                request_id=origin.request_id,
                client_ip=origin.client_ip,
                user_agent=origin.user_agent,
            )
        resp.set_header("Location", f"{EXPORTS_PATH}/{row['id']}/status")
        send_json(resp, {"export": export_document(row)}, status=202)


class CleanupResource:
    """POST a cleanup run (administrators only)."""

    def __init__(self, database: Database, dispatcher: Dispatcher) -> None:
        self._database = database
        self._dispatcher = dispatcher

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Queue a cleanup run and answer 202."""
        principal = principal_of(req)
        require(principal, Action.CLEANUP)
        if read_json_object(req):
            raise invalid_request({"": "this request takes no body (or an empty object)"})
        origin = origin_of(req)
        self._dispatcher.enqueue_cleanup(request_id=origin.request_id)
        with self._database.transaction() as conn:
            append_log(
                conn,
                event="cleanup.requested",
                message="cleanup requested",
                actor_type="admin",
                actor_id=str(principal.user_id),
                request_id=origin.request_id,
                client_ip=origin.client_ip,
                user_agent=origin.user_agent,
            )
        send_json(
            resp, {"cleanup": {"status": "queued", "requestId": origin.request_id}}, status=202
        )
