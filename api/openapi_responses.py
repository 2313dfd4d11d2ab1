"""Shared pieces of the OpenAPI document: references, response builders, headers, error sets.

Used by the export paths (`api.openapi`), the component schemas (`api.openapi_schemas`) and the
scheduling paths, so every operation describes responses and problems the same way. It builds
plain dictionaries only and knows no routes.
"""

from __future__ import annotations

from typing import Any

from api.middleware import MAX_BODY_BYTES
from api.problems import PROBLEM_CONTENT_TYPE

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """Return a reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """Return the schema, also allowing null."""
    return {"anyOf": [schema, {"type": "null"}]}


def problem_response(description: str, *, headers: Schema | None = None) -> Schema:
    """Return a response carrying an RFC 9457 problem document."""
    response: Schema = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": ref("Problem")}},
    }
    if headers:
        response["headers"] = headers
    return response


def json_response(description: str, schema: Schema, *, headers: Schema | None = None) -> Schema:
    """Return a JSON response with the given body schema."""
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


INT_HEADER: Schema = {"schema": {"type": "integer", "minimum": 0}}
RATE_LIMIT_HEADERS: Schema = {
    "RateLimit-Limit": {**INT_HEADER, "description": "Accepted exports allowed per window."},
    "RateLimit-Remaining": {**INT_HEADER, "description": "Exports left in the window."},
    "RateLimit-Reset": {**INT_HEADER, "description": "Seconds until a slot frees up."},
}
RETRY_AFTER: Schema = {"Retry-After": {**INT_HEADER, "description": "Seconds to wait."}}
LOCATION: Schema = {
    "Location": {"schema": {"type": "string"}, "description": "The export's status URL."}
}
WWW_AUTHENTICATE: Schema = {
    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "A Bearer challenge."}
}

# gunicorn answers this itself, as HTML, before the app sees the request.
URI_TOO_LONG: Schema = {
    "description": "The request line is longer than the server accepts (answered by gunicorn).",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
# Errors any authenticated operation can answer.
COMMON_ERRORS: Schema = {
    "414": URI_TOO_LONG,
    "401": problem_response("Missing or invalid bearer token.", headers=WWW_AUTHENTICATE),
    "405": problem_response("The method is not allowed on this resource."),
    "500": problem_response("Unexpected error; nothing internal is revealed."),
    "503": problem_response(
        "The database, Redis or the broker is unavailable.", headers=RETRY_AFTER
    ),
}
BODY_ERRORS: Schema = {
    "411": problem_response("A body was sent without Content-Length."),
    "413": problem_response(f"The body is larger than {MAX_BODY_BYTES} bytes."),
    "415": problem_response("The body is not application/json."),
}
