"""RFC 9457 problem details: the one table of problem types and the Falcon error handlers.

Every error the API answers is `application/problem+json` with `type`, `title`, `status`, `detail`
and `instance`. Unexpected exceptions are logged in full with the request id and answered with a
generic 500: no stack trace, exception text or internal name ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import falcon
import orjson

from pipelines.errors import RetryableError

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE_URI = "https://data-export.dev/problems/"
# Seconds a client should wait before retrying after a 503: long enough for a broker or
# database failover, short enough that a retrying client notices recovery quickly.
UNAVAILABLE_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class ProblemType:
    """One kind of error: its stable slug (the end of its `type` URI), status and wording."""

    slug: str
    status: int
    title: str
    default_detail: str

    @property
    def uri(self) -> str:
        """Return the stable `type` URI clients may match on."""
        return PROBLEM_BASE_URI + self.slug


_TYPES = (
    ProblemType("invalid-request", 400, "Invalid request", "The request is not valid."),
    ProblemType(
        "unauthorized", 401, "Unauthorized", "A valid bearer token is required for this resource."
    ),
    ProblemType("forbidden", 403, "Forbidden", "You are not allowed to do this."),
    ProblemType("not-found", 404, "Not found", "There is nothing at this address."),
    ProblemType(
        "method-not-allowed", 405, "Method not allowed", "This resource does not take this method."
    ),
    ProblemType("not-acceptable", 406, "Not acceptable", "No acceptable representation exists."),
    ProblemType("conflict", 409, "Conflict", "The resource is not in a state that allows this."),
    ProblemType("gone", 410, "Gone", "The resource existed but is no longer available."),
    ProblemType(
        "length-required", 411, "Length required", "Send the body with a Content-Length header."
    ),
    ProblemType(
        "payload-too-large", 413, "Payload too large", "The request body is larger than allowed."
    ),
    ProblemType(
        "unsupported-media-type",
        415,
        "Unsupported media type",
        "The request body must be application/json.",
    ),
    ProblemType(
        "range-not-satisfiable",
        416,
        "Range not satisfiable",
        "The requested byte range lies outside the object.",
    ),
    ProblemType(
        "idempotency-key-reused",
        422,
        "Idempotency key reused",
        "This Idempotency-Key was already used with a different request.",
    ),
    ProblemType(
        "rate-limited", 429, "Too many requests", "The rate limit is reached; retry later."
    ),
    ProblemType(
        "internal-error", 500, "Internal server error", "Something went wrong on our side."
    ),
    ProblemType(
        "service-unavailable",
        503,
        "Service unavailable",
        "A backing service is unavailable; retry later.",
    ),
)

PROBLEM_TYPES: Mapping[str, ProblemType] = {problem.slug: problem for problem in _TYPES}
# Falcon's own errors (routing 404/405, malformed JSON 400, ...) map by status; the first type
# listed for a status is its generic one.
_BY_STATUS: Mapping[int, ProblemType] = {problem.status: problem for problem in reversed(_TYPES)}


@dataclass(frozen=True)
class FieldError:
    """One bad field of a request: a JSON pointer into the body or a parameter name."""

    field: str
    detail: str


class ProblemError(falcon.HTTPError):
    """An HTTP error rendered as the problem type named by `slug`."""

    def __init__(
        self,
        slug: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] = (),
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        problem = PROBLEM_TYPES[slug]
        super().__init__(
            problem.status,
            title=problem.title,
            description=detail or problem.default_detail,
            headers=dict(headers) if headers else None,
        )
        self.problem_type = problem
        self.field_errors = tuple(errors)
        self.extensions = dict(extensions or {})


def invalid_request(problems: Mapping[str, str], detail: str | None = None) -> ProblemError:
    """Build a 400 problem naming each bad field (as `InvalidOptionsError.problems` maps them)."""
    errors = [FieldError(field, why) for field, why in problems.items()]
    return ProblemError(
        "invalid-request",
        detail or f"{len(errors)} field(s) of the request are invalid.",
        errors=errors,
    )


def problem_body(req: falcon.Request, error: falcon.HTTPError) -> dict[str, Any]:
    """Return the problem-details document for `error` raised while serving `req`."""
    status = int(error.status_code)
    if isinstance(error, ProblemError):
        problem = error.problem_type
    else:
        problem = _BY_STATUS.get(status) or ProblemType(
            "", status, falcon.code_to_http_status(status)[4:], ""
        )
    body: dict[str, Any] = {
        "type": problem.uri if problem.slug else "about:blank",
        "title": problem.title,
        "status": status,
        "detail": error.description or problem.default_detail or problem.title,
        "instance": req.path,
    }
    request_id = getattr(req.context, "request_id", None)
    if request_id:
        body["requestId"] = request_id
    if isinstance(error, ProblemError):
        if error.field_errors:
            body["errors"] = [
                {"field": item.field, "detail": item.detail} for item in error.field_errors
            ]
        for name, value in error.extensions.items():
            body.setdefault(name, value)
    return body


def serialize_problem(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Write `error` into `resp` as application/problem+json (Falcon's error serializer)."""
    resp.content_type = PROBLEM_CONTENT_TYPE
    resp.data = orjson.dumps(problem_body(req, error))


def handle_retryable(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    """Answer a transient backend failure (database, broker, Redis) with 503 and Retry-After."""
    logger.warning("backend unavailable on %s %s: %s", req.method, req.path, ex, exc_info=ex)
    raise ProblemError(
        "service-unavailable",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
    ) from ex


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict[str, Any]
) -> None:
    """Log an unexpected exception in full and answer a generic 500 that reveals nothing."""
    logger.error("unhandled error on %s %s", req.method, req.path, exc_info=ex)
    raise ProblemError("internal-error") from ex


def install_problem_handlers(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    """Make `app` answer every error, expected or not, as problem details."""
    app.set_error_serializer(serialize_problem)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(RetryableError, handle_retryable)
