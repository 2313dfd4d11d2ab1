"""Read what a client sent: export request bodies, the Idempotency-Key, list parameters.

Every problem is reported with the field it concerns (a body field such as
`options.dateRange.end`, a header name, or a query parameter), all at once, as a 400 problem.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import falcon

from api.problems import ProblemError, invalid_request
from pipelines.options import FORMATS, ExportOptions, InvalidOptionsError, parse_options

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Visible ASCII, at most 255 characters: room for a UUID or a client's own scheme, stored as text.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# An integer query parameter as written in a URL: ASCII digits with an optional minus. Python's
# int() would also take " 5", "+5" and "1_000", which no client means to send.
_INTEGER = re.compile(r"-?[0-9]+")
# Characters of the longest integer converted: past every bound a query parameter has.
_MAX_INTEGER_CHARS = 19
REQUEST_FIELDS = frozenset({"format", "options"})
# Tells "no body at all" from a body that is JSON `null`.
_NO_BODY = object()


@dataclass(frozen=True)
class ExportRequest:
    """A checked export request: its options and the body it came from (for fingerprints)."""

    options: ExportOptions
    body: dict[str, Any]


def read_json_object(req: falcon.Request) -> dict[str, Any]:
    """Return the request body as a JSON object ({} when there is no body), or raise 400."""
    try:
        media = req.get_media(default_when_empty=_NO_BODY)
    except falcon.MediaMalformedError as exc:
        raise ProblemError("invalid-request", "The request body is not valid JSON.") from exc
    except RecursionError as exc:
        # The JSON parser recurses once per level: a body of a few thousand "[" is valid JSON
        # that no request of this API resembles.
        raise ProblemError("invalid-request", "The request body is nested too deeply.") from exc
    if media is _NO_BODY:
        return {}
    if not isinstance(media, dict):
        raise invalid_request({"": "the request body must be a JSON object"})
    return media


def read_export_request(
    req: falcon.Request, *, default_compression: str, compression_enabled: bool
) -> ExportRequest:
    """Check an export request body `{format, options}`, naming every bad field."""
    body = read_json_object(req)
    problems = {name: "unknown field" for name in sorted(set(body) - REQUEST_FIELDS)}
    if "format" not in body:
        problems["format"] = f"is required: one of {', '.join(FORMATS)}"
    try:
        options = parse_options(
            body.get("format"),
            body.get("options"),
            default_compression=default_compression,
            compression_enabled=compression_enabled,
        )
    except InvalidOptionsError as exc:
        problems = exc.problems | problems
    if problems:
        raise invalid_request(problems)
    return ExportRequest(options=options, body=body)


def idempotency_key(req: falcon.Request) -> str | None:
    """Return the request's Idempotency-Key, None without one, or raise 400 if it is malformed."""
    key = req.get_header(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid_request(
            {IDEMPOTENCY_HEADER: "must be 1 to 255 visible ASCII characters"},
        )
    return key


def export_id_param(export_id: str) -> uuid.UUID:
    """Return the path's export id; anything that is not a UUID names no export (404)."""
    try:
        return uuid.UUID(export_id)
    except ValueError as exc:
        raise ProblemError("not-found", "No export with this id.") from exc


def int_param(
    params: Mapping[str, str],
    name: str,
    *,
    default: int,
    low: int,
    high: int,
    problems: dict[str, str],
) -> int:
    """Return an integer query parameter within bounds, recording a problem if it is not."""
    raw = params.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        problems[name] = "must be an integer"
        return default
    # A number longer than any bound is out of range without converting it (int() refuses more
    # than 4,300 digits).
    value = int(raw) if len(raw) <= _MAX_INTEGER_CHARS else None
    if value is None or not low <= value <= high:
        problems[name] = f"must be from {low} to {high}"
        return default
    return value


@dataclass(frozen=True)
class WindowSpec:
    """A paged window's query parameters and bounds: a limit of 1 to `max_limit` (default
    `default_limit`) named `limit_name`, an offset of 0 to `max_offset` named `offset_name`."""

    limit_name: str
    offset_name: str
    default_limit: int
    max_limit: int
    max_offset: int

    @property
    def names(self) -> frozenset[str]:
        """Return the window's two parameter names."""
        return frozenset({self.limit_name, self.offset_name})


def window_params(
    params: Mapping[str, str], spec: WindowSpec, problems: dict[str, str]
) -> tuple[int, int]:
    """Return the (limit, offset) of the window `spec` from the query parameters, recording a
    problem for each bad one."""
    limit = int_param(
        params,
        spec.limit_name,
        default=spec.default_limit,
        low=1,
        high=spec.max_limit,
        problems=problems,
    )
    offset = int_param(
        params, spec.offset_name, default=0, low=0, high=spec.max_offset, problems=problems
    )
    return limit, offset


def window_query(req: falcon.Request, spec: WindowSpec) -> tuple[int, int]:
    """Return the (limit, offset) of a request whose query string is only the window `spec`'s
    two parameters; raise 400 naming each unknown or bad one."""
    params = check_params(req, spec.names)
    problems: dict[str, str] = {}
    window = window_params(params, spec, problems)
    if problems:
        raise invalid_request(problems)
    return window


def choice_param(
    params: Mapping[str, str], name: str, choices: tuple[str, ...], problems: dict[str, str]
) -> str | None:
    """Return a query parameter that must be one of `choices`, or None when absent."""
    raw = params.get(name)
    if raw is None:
        return None
    if raw not in choices:
        problems[name] = f"must be one of {', '.join(choices)}"
        return None
    return raw


def bool_param(params: Mapping[str, str], name: str, problems: dict[str, str]) -> bool:
    """Return a `true`/`false` query parameter (false when absent)."""
    raw = params.get(name)
    if raw is None:
        return False
    if raw.lower() in {"true", "1"}:
        return True
    if raw.lower() in {"false", "0"}:
        return False
    problems[name] = "must be true or false"
    return False


def check_params(req: falcon.Request, known: frozenset[str]) -> dict[str, str]:
    """Return single-valued query parameters, or raise 400 for unknown or repeated ones."""
    problems: dict[str, str] = {}
    values: dict[str, str] = {}
    for name, value in req.params.items():
        if name not in known:
            problems[name] = "unknown query parameter"
        elif isinstance(value, list):
            problems[name] = "give this parameter once"
        else:
            values[name] = value
    if problems:
        raise invalid_request(problems)
    return values
