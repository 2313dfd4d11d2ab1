"""Conversions between PostgreSQL's text output and the value forms written in exports.

Serializers turn PostgreSQL text into export text (ISO 8601 timestamps, true/false booleans);
readers turn it back exactly. Pure functions: no I/O, no parsing of whole documents.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pipelines.errors import PermanentError
from pipelines.records import Kind


class CorruptExportError(PermanentError):
    """An export's bytes do not follow the documented format."""


# PostgreSQL prints a UTC timestamptz as `2024-03-01 12:00:00.123456+00`; years past 9999 get more
# digits. Anything else (infinity, BC dates, a non-UTC session) is written exactly as printed.
_PG_TIMESTAMP: Final = re.compile(r"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d{1,6})?)\+00")
_ISO_TIMESTAMP: Final = re.compile(r"(\d{4,}-\d\d-\d\d)T(\d\d:\d\d:\d\d(?:\.\d{1,6})?)Z")


def iso_timestamp(text: str) -> str:
    """Return PostgreSQL's UTC timestamptz text as ISO 8601 with a `Z`, other text unchanged."""
    if len(text) >= 22 and text[10] == " " and text[-3:] == "+00" and text[4] == "-":
        return f"{text[:10]}T{text[11:-3]}Z"
    match = _PG_TIMESTAMP.fullmatch(text)
    if match is None:
        return text
    return f"{match[1]}T{match[2]}Z"


def pg_timestamp(text: str) -> str:
    """Return the PostgreSQL text of a timestamp written by `iso_timestamp`."""
    if len(text) >= 20 and text[10] == "T" and text[-1] == "Z" and text[4] == "-":
        return f"{text[:10]} {text[11:-1]}+00"
    match = _ISO_TIMESTAMP.fullmatch(text)
    if match is None:
        return text
    return f"{match[1]} {match[2]}+00"


def export_boolean(text: str) -> str:
    """Return `true`/`false` for PostgreSQL's `t`/`f`."""
    if text == "t":
        return "true"
    if text == "f":
        return "false"
    raise ValueError(f"not a PostgreSQL boolean: {text!r}")


def pg_boolean(text: str) -> str:
    """Return PostgreSQL's `t`/`f` for an exported boolean (`true`/`false`, or `1`/`0` from XSD)."""
    if text in ("true", "1"):
        return "t"
    if text in ("false", "0"):
        return "f"
    raise CorruptExportError(f"not a boolean: {text!r}")


def from_export_text(kind: Kind, text: str) -> str:
    """Return the PostgreSQL text of a non-NULL value written as text (CSV, XML)."""
    if kind == "timestamptz":
        return pg_timestamp(text)
    if kind == "boolean":
        return pg_boolean(text)
    return text


class JsonNumber(str):
    """A JSON number kept as the exact text it was written with."""

    __slots__ = ()


def _reject_constant(name: str) -> object:
    raise CorruptExportError(f"JSON constant {name} is not allowed")


def loads_exact(text: str | bytes) -> object:
    """Parse JSON keeping every number as its text, so nothing is rounded."""
    try:
        return json.loads(
            text,
            parse_int=JsonNumber,
            parse_float=JsonNumber,
            parse_constant=_reject_constant,
        )
    except ValueError as exc:
        raise CorruptExportError(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise CorruptExportError(f"JSON nested too deeply to parse exactly: {exc}") from exc


# PostgreSQL's escape_json: the short escapes, `\u00xx` (lowercase) for other control characters,
# everything else (non-ASCII included) written raw.
_JSONB_ESCAPES: Final[dict[int, str]] = {
    **{code: f"\\u{code:04x}" for code in range(0x20)},
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x22: '\\"',
    0x5C: "\\\\",
}


def _jsonb_parts(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, JsonNumber):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(f'"{value.translate(_JSONB_ESCAPES)}"')
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(", ")
            _jsonb_parts(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(", ")
            out.append(f'"{key.translate(_JSONB_ESCAPES)}": ')
            _jsonb_parts(item, out)
        out.append("}")
    else:
        raise CorruptExportError(f"not a JSON value: {type(value).__name__}")


def pg_jsonb_text(value: object) -> str:
    """Return a parsed JSON value as PostgreSQL prints jsonb (keys kept in their given order)."""
    out: list[str] = []
    _jsonb_parts(value, out)
    return "".join(out)


def from_json_value(kind: Kind, value: object) -> str | None:
    """Return the PostgreSQL text of a value parsed by `loads_exact` from a JSON export.

    `null` in a jsonb column is JSON null, not SQL NULL: the exported jsonb columns are NOT NULL,
    and JSON cannot tell the two apart.
    """
    if kind == "jsonb":
        return pg_jsonb_text(value)
    if value is None:
        return None
    if kind == "boolean":
        if value is True:
            return "t"
        if value is False:
            return "f"
    elif kind == "bigint":
        if isinstance(value, JsonNumber) and value.lstrip("-").isdigit():
            return str(value)
    elif type(value) is str:
        return pg_timestamp(value) if kind == "timestamptz" else value
    raise CorruptExportError(f"a {kind} value cannot be {value!r}")
