"""Request plumbing every route shares: request ids, access log, body size and content type.

`RequestContextMiddleware` gives each request an id (a client's `X-Request-ID` when it is sane),
binds it to every log line emitted while serving, echoes it back and writes one access-log line
(with the export's id when the request created or named one, `req.context.export_id`).
`BodyLimitMiddleware` refuses large bodies (413) before anything reads them, and
`ContentTypeMiddleware` refuses bodies that are not JSON (415). None of them reads a body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterable
from contextvars import Token
from typing import Any

import falcon

from api.problems import ProblemError
from pipelines.logs import request_id_var

access_logger = logging.getLogger("api.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A client-supplied id is kept only if it is this short and plain, so it cannot forge log lines.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Largest request body in bytes: export requests are well under 1 KiB; 64 KiB leaves room for any
# legitimate one while capping what a client can make a worker parse.
MAX_BODY_BYTES = 64 * 1024
JSON_MEDIA_TYPES = ("application/json",)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestContextMiddleware:
    """Assign a request id, bind it to the logs, return it, and log one line per request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Pick the request id and start the clock."""
        incoming = req.get_header(REQUEST_ID_HEADER)
        if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = uuid.uuid4().hex
        req.context.request_id = request_id
        req.context.started = time.perf_counter()
        req.context.log_token = request_id_var.set(request_id)
        resp.set_header(REQUEST_ID_HEADER, request_id)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        """Write the access-log line and unbind the request id."""
        started = getattr(req.context, "started", None)
        duration_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        principal = getattr(req.context, "principal", None)
        user_id = str(principal.user_id) if principal is not None else None
        route = req.uri_template
        extra = {
            "method": req.method,
            "route": route,
            "status": resp.status_code,
            "duration_ms": round(duration_ms, 3),
            "user_id": user_id,
            "request_id": getattr(req.context, "request_id", None),
        }
        export_id = getattr(req.context, "export_id", None)
        if export_id is not None:
            # The export a request created or answered with: one line tells what was accepted.
            extra["export_id"] = export_id
        access_logger.info(
            "%s %s %s %.1fms",
            req.method,
            route or req.path,
            resp.status_code,
            duration_ms,
            extra=extra,
        )
        token: Token[str | None] | None = getattr(req.context, "log_token", None)
        if token is not None:
            request_id_var.reset(token)
            req.context.log_token = None


class BodyLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` (413) and bodies of unknown length (411)."""

    def __init__(self, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._max_body_bytes = max_body_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Check the declared length before any responder reads the body."""
        length = req.content_length
        if length is None and req.get_header("Transfer-Encoding"):
            # Falcon reads bodies up to Content-Length only; a chunked body would arrive empty.
            raise ProblemError("length-required")
        if length is not None and length > self._max_body_bytes:
            raise ProblemError(
                "payload-too-large",
                f"The request body may be at most {self._max_body_bytes} bytes.",
            )


class ContentTypeMiddleware:
    """Refuse POST/PUT/PATCH bodies whose media type the routed resource does not take (415).

    A resource may name its own list in `accepted_media_types`; the default is JSON.
    """

    def __init__(self, media_types: Iterable[str] = JSON_MEDIA_TYPES) -> None:
        self._media_types = tuple(media_types)

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        """Check the Content-Type of a request that carries a body."""
        if resource is None or req.method not in _BODY_METHODS or not req.content_length:
            return
        accepted = tuple(getattr(resource, "accepted_media_types", self._media_types))
        media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in accepted:
            raise ProblemError(
                "unsupported-media-type",
                f"The request body must be {' or '.join(accepted)}.",
            )
