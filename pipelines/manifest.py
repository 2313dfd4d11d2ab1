"""The manifest every export carries, and its `SHA256SUMS` companion.

An export is one or more data objects under `<prefix><export id>/`, plus `manifest.json`
(format version, options, snapshot time, and for each object its size, SHA-256 of the stored
bytes and of the content, and record counts) and `SHA256SUMS` in the format `sha256sum -c` reads.
Pure: builds and parses bytes, never touches storage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.errors import PermanentError
from pipelines.serializers import EXTENSIONS, MEDIA_TYPES
from pipelines.storage.sinks import content_headers

MANIFEST_NAME = "manifest.json"
SHA256SUMS_NAME = "SHA256SUMS"
MANIFEST_VERSION = 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}


class ManifestError(PermanentError):
    """A manifest is malformed or does not describe an export this version can read."""


def object_name(stem: str, export_format: str, compression: str) -> str:
    """Return the file name of a data object, e.g. `export.json.zst`."""
    return f"{stem}{EXTENSIONS[export_format]}{COMPRESSION_SUFFIXES[compression]}"


def content_type(export_format: str, compression: str) -> str:
    """Return the Content-Type a data object is stored and served with."""
    stored_type, _ = content_headers(compression, MEDIA_TYPES[export_format])
    return stored_type


@dataclass(frozen=True)
class ManifestObject:
    """One data object of an export."""

    name: str
    size_bytes: int
    sha256: str
    content_sha256: str
    content_bytes: int
    records: Mapping[str, int]
    part_size_bytes: int = 0
    parts: int = 0
    user_range: Mapping[str, str | None] | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the object as it appears in manifest.json."""
        data: dict[str, Any] = {
            "name": self.name,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
            "contentSha256": self.content_sha256,
            "contentBytes": self.content_bytes,
            "records": dict(self.records),
            "partSizeBytes": self.part_size_bytes,
            "parts": self.parts,
        }
        if self.user_range is not None:
            data["userRange"] = dict(self.user_range)
        return data


@dataclass(frozen=True)
class Manifest:
    """What an export is: its identity, options, snapshot and objects."""

    export_id: str
    export_type: str
    format: str
    compression: str
    created_at: str
    snapshot_time: str
    options: Mapping[str, Any]
    objects: Sequence[ManifestObject]
    generator: str = "data-export"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        """Return the record counts summed over all objects, per table."""
        totals: dict[str, int] = {}
        for item in self.objects:
            for table, count in item.records.items():
                totals[table] = totals.get(table, 0) + count
        return totals

    def as_json(self) -> dict[str, Any]:
        """Return the manifest as the JSON document stored beside the objects."""
        return {
            "manifestVersion": MANIFEST_VERSION,
            "generator": self.generator,
            "exportId": self.export_id,
            "exportType": self.export_type,
            "format": self.format,
            "compression": self.compression,
            "createdAt": self.created_at,
            "snapshotTime": self.snapshot_time,
            "options": dict(self.options),
            "objects": [item.as_json() for item in self.objects],
            "totals": {
                "objects": len(self.objects),
                "sizeBytes": sum(item.size_bytes for item in self.objects),
                "records": self.totals,
            },
            **dict(self.extra),
        }


def render_manifest(manifest: Manifest) -> bytes:
    """Serialize a manifest as indented, key-sorted JSON ending in a newline."""
    return orjson.dumps(manifest.as_json(), option=orjson.OPT_INDENT_2) + b"\n"


def render_sha256sums(objects: Iterable[ManifestObject]) -> bytes:
    """Return `SHA256SUMS` lines (`<hex>  <name>`) for the objects, as `sha256sum -c` reads."""
    return b"".join(f"{item.sha256}  {item.name}\n".encode() for item in objects)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check manifest.json, raising ManifestError on anything malformed."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ManifestError("manifest is not a JSON object")
    if document.get("manifestVersion") != MANIFEST_VERSION:
        raise ManifestError(
            f"manifest version {document.get('manifestVersion')!r} is not {MANIFEST_VERSION}"
        )
    try:
        objects = [_parse_object(item) for item in document["objects"]]
        known = {
            "manifestVersion", "generator", "exportId", "exportType", "format", "compression",
            "createdAt", "snapshotTime", "options", "objects", "totals",
        }  # fmt: skip
        return Manifest(
            export_id=str(document["exportId"]),
            export_type=str(document["exportType"]),
            format=str(document["format"]),
            compression=str(document["compression"]),
            created_at=str(document["createdAt"]),
            snapshot_time=str(document["snapshotTime"]),
            options=dict(document["options"]),
            objects=objects,
            generator=str(document.get("generator", "")),
            extra={key: value for key, value in document.items() if key not in known},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from exc


def _parse_object(item: Mapping[str, Any]) -> ManifestObject:
    sha256 = str(item["sha256"])
    content_sha256 = str(item["contentSha256"])
    for digest in (sha256, content_sha256):
        if not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"object {item.get('name')!r} has a malformed SHA-256 {digest!r}")
    name = str(item["name"])
    if "/" in name or name in {"", ".", ".."}:
        raise ValueError(f"object name {name!r} must be a plain file name")
    return ManifestObject(
        name=name,
        size_bytes=int(item["sizeBytes"]),
        sha256=sha256,
        content_sha256=content_sha256,
        content_bytes=int(item["contentBytes"]),
        records={str(table): int(count) for table, count in item["records"].items()},
        part_size_bytes=int(item.get("partSizeBytes", 0)),
        parts=int(item.get("parts", 0)),
        user_range=item.get("userRange"),
    )
