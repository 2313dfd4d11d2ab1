"""Manifest and SHA256SUMS: round trip, totals, and refusal of malformed documents."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pipelines.manifest import (
    Manifest,
    ManifestError,
    ManifestObject,
    content_type,
    object_name,
    parse_manifest,
    render_manifest,
    render_sha256sums,
)


def _object(name: str, body: bytes, users: int, files: int) -> ManifestObject:
    digest = hashlib.sha256(body).hexdigest()
    return ManifestObject(
        name=name,
        size_bytes=len(body),
        sha256=digest,
        content_sha256=digest,
        content_bytes=len(body),
        records={"users": users, "files": files},
    )


def _manifest(*objects: ManifestObject) -> Manifest:
    return Manifest(
        export_id="0b6f5c1e-4d55-4a8e-9a3e-6f1f2f0c9d11",
        export_type="bulk",
        format="csv",
        compression="none",
        created_at="2026-11-27T03:00:00+00:00",
        snapshot_time="2026-11-27T02:59:59+00:00",
        options={"includeMetadata": True},
        objects=objects,
    )


def test_manifest_round_trips_and_sums_records_per_table() -> None:
    manifest = _manifest(_object("shard-1.csv", b"a", 2, 5), _object("shard-2.csv", b"bb", 3, 1))
    parsed = parse_manifest(render_manifest(manifest))
    assert list(parsed.objects) == list(manifest.objects)
    assert parsed.totals == {"users": 5, "files": 6}
    assert parsed.export_id == manifest.export_id


def test_sha256sums_is_read_by_sha256sum(tmp_path: Path) -> None:
    bodies = {"shard-1.csv": b"first\n", "shard-2.csv": b"second\n"}
    objects = [_object(name, body, 1, 1) for name, body in bodies.items()]
    for name, body in bodies.items():
        (tmp_path / name).write_bytes(body)
    (tmp_path / "SHA256SUMS").write_bytes(render_sha256sums(objects))
    checked = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "shard-2.csv").write_bytes(b"changed\n")
    tampered = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, check=False
    )
    assert tampered.returncode != 0


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"manifestVersion": 99}', "version 99"),
        (b'{"manifestVersion": 1}', "missing or has a malformed field"),
    ],
)
def test_malformed_manifest_is_refused_with_a_reason(document: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(document)


def test_object_names_with_paths_are_refused() -> None:
    rendered = render_manifest(_manifest(_object("../escape.csv", b"x", 1, 0)))
    with pytest.raises(ManifestError, match="plain file name"):
        parse_manifest(rendered)


def test_names_and_content_types_tell_how_to_open_the_object() -> None:
    assert object_name("export", "json", "zstd") == "export.json.zst"
    assert object_name("shard-00001", "csv", "gzip") == "shard-00001.csv.gz"
    assert object_name("export", "xml", "none") == "export.xml"
    assert content_type("csv", "none") == "text/csv; charset=utf-8; header=present"
    assert content_type("json", "gzip") == "application/gzip"
