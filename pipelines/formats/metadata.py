"""The export header and trailer as JSON-ready dicts, and back.

Every format writes the same fields (JSON and JSON Lines as objects, CSV as JSON text in its
`export_info` column, XML as attributes), so the field names live here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from pipelines.formats.values import CorruptExportError, JsonNumber
from pipelines.records import ExportHeader, ExportTrailer


def format_instant(moment: datetime) -> str:
    """Return an aware datetime as ISO 8601 in UTC with microseconds and a `Z`."""
    if moment.tzinfo is None:
        raise ValueError("snapshot time must be timezone-aware")
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def parse_instant(text: object) -> datetime:
    """Return the datetime written by `format_instant`."""
    if not isinstance(text, str):
        raise CorruptExportError(f"not a timestamp: {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise CorruptExportError(f"not a timestamp: {text!r}") from exc
    if moment.tzinfo is None:
        raise CorruptExportError(f"timestamp without a time zone: {text!r}")
    return moment


def header_fields(header: ExportHeader) -> dict[str, Any]:
    """Return the header as a JSON-ready dict (options must hold JSON values only)."""
    return {
        "exportId": header.export_id,
        "exportType": header.export_type,
        "formatVersion": header.format_version,
        "snapshotTime": format_instant(header.snapshot_time),
        "generator": {"name": header.generator_name, "version": header.generator_version},
        "options": dict(header.options),
    }


def header_from_fields(fields: Mapping[str, Any]) -> ExportHeader:
    """Return the header written by `header_fields`, with JSON numbers as Python numbers."""
    try:
        generator = fields["generator"]
        export_type = fields["exportType"]
        if export_type not in ("user", "bulk"):
            raise CorruptExportError(f"unknown export type {export_type!r}")
        return ExportHeader(
            export_id=str(fields["exportId"]),
            export_type=export_type,
            snapshot_time=parse_instant(fields["snapshotTime"]),
            generator_name=str(generator["name"]),
            generator_version=str(generator["version"]),
            options=cast(dict[str, object], _plain(fields["options"])),
            format_version=int(fields["formatVersion"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptExportError(f"malformed export header: {exc!r}") from exc


def trailer_fields(trailer: ExportTrailer) -> dict[str, Any]:
    """Return the trailer as a JSON-ready dict."""
    return {"counts": dict(trailer.counts), "records": trailer.records}


def trailer_from_fields(fields: Mapping[str, Any]) -> ExportTrailer:
    """Return the trailer written by `trailer_fields`, checking its total."""
    try:
        counts = {str(name): int(count) for name, count in fields["counts"].items()}
        total = int(fields["records"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptExportError(f"malformed export metadata: {exc!r}") from exc
    trailer = ExportTrailer(counts)
    if trailer.records != total:
        raise CorruptExportError(
            f"metadata says {total} records but its counts add to {trailer.records}"
        )
    return trailer


def _plain(value: object) -> object:
    """Turn numbers kept as text by `loads_exact` back into int or float."""
    if isinstance(value, JsonNumber):
        text = str(value)
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
