"""Checks of an export's companion files against its manifest: totals, SHA256SUMS, sidecars.

Pure functions over bytes already read; each returns every problem it finds as a `Problem` with
a stable code from `pipelines.verification_problems`. Reading the files is the location's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.manifest import Manifest, ManifestObject
from pipelines.verification_problems import (
    MANIFEST_TOTALS_MISMATCH,
    SHA256SUMS_MISMATCH,
    SIDECAR_MISMATCH,
    Problem,
    table_order,
)


def check_manifest_totals(document: Mapping[str, Any], manifest: Manifest) -> list[Problem]:
    """Compare the totals a manifest states with the sums of its objects."""
    totals = document.get("totals")
    if not isinstance(totals, Mapping):
        return []
    problems: list[Problem] = []
    stated: dict[str, object] = {
        "objects": totals.get("objects"),
        "sizeBytes": totals.get("sizeBytes"),
    }
    actual: dict[str, object] = {
        "objects": len(manifest.objects),
        "sizeBytes": sum(item.size_bytes for item in manifest.objects),
    }
    records = totals.get("records")
    if isinstance(records, Mapping):
        for table in sorted(set(records) | set(manifest.totals), key=table_order):
            stated[f"records.{table}"] = records.get(table, 0)
            actual[f"records.{table}"] = manifest.totals.get(table, 0)
    for key, value in stated.items():
        if value is not None and value != actual[key]:
            problems.append(
                Problem(
                    MANIFEST_TOTALS_MISMATCH,
                    f"manifest totals say {key} is {value}, its objects add up to {actual[key]}",
                    None,
                    {"field": key, "expected": value, "actual": actual[key]},
                )
            )
    return problems


def check_sha256sums(data: bytes, objects: Sequence[ManifestObject]) -> list[Problem]:
    """Compare `SHA256SUMS` with the manifest: every object listed once, with its digest."""
    listed: dict[str, str] = {}
    problems: list[Problem] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        digest, separator, name = raw.partition("  ")
        if not separator or len(digest) != 64:
            problems.append(
                Problem(SHA256SUMS_MISMATCH, f"SHA256SUMS line {number} is malformed: {raw!r}")
            )
            continue
        listed[name.removeprefix("*")] = digest
    expected = {item.name: item.sha256 for item in objects}
    for name, digest in expected.items():
        found = listed.get(name)
        if found is None:
            problems.append(Problem(SHA256SUMS_MISMATCH, f"SHA256SUMS does not list {name}", name))
        elif found != digest:
            problems.append(
                Problem(
                    SHA256SUMS_MISMATCH,
                    f"SHA256SUMS lists {name} as {found}, the manifest as {digest}",
                    name,
                    {"expected": digest, "actual": found},
                )
            )
    for name in sorted(set(listed) - set(expected)):
        problems.append(
            Problem(
                SHA256SUMS_MISMATCH, f"SHA256SUMS lists {name}, which the manifest does not", name
            )
        )
    return problems


def check_sidecar(data: bytes, entry: ManifestObject) -> list[Problem]:
    """Compare an object's `<name>.sha256` sidecar with its manifest entry."""
    text = data.decode("utf-8", "replace").strip()
    digest = text.split(maxsplit=1)[0] if text else ""
    if digest == entry.sha256:
        return []
    return [
        Problem(
            SIDECAR_MISMATCH,
            f"{entry.name}.sha256 says {digest or 'nothing'}, the manifest lists {entry.sha256}",
            entry.name,
            {"expected": entry.sha256, "actual": digest},
        )
    ]
