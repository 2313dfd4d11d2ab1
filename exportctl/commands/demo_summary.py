"""What `exportctl demo` prints at the end: the exports table, the verdict, where to look next.

Pure rendering of what the steps recorded in `DemoExport` and `DemoRun`; it drives nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from exportctl.commands.demo_steps import DemoExport, DemoRun
from exportctl.commands.token import mint_token
from exportctl.output import Table


def exports_table(exports: Sequence[DemoExport]) -> Table:
    """Return the table of every export: size, ratio, time, digest and whether it verified."""
    rows = []
    for export in exports:
        document = export.document or {}
        ratio = document.get("compressionRatio")
        rows.append(
            (
                export.label,
                str(document.get("format", "-")),
                str(document.get("compression", "-")),
                _count(document.get("recordCount")),
                _count(document.get("sizeBytes")),
                f"{ratio:.2f}" if isinstance(ratio, int | float) else "-",
                _seconds(document),
                (document.get("sha256") or "-")[:16],
                "yes" if export.verified else f"NO ({_why(export)})",
            )
        )
    columns = ("export", "format", "compression", "rows", "bytes", "ratio", "seconds", "sha256")
    return Table(title="Exports", columns=(*columns, "verified"), rows=rows)


def _why(export: DemoExport) -> str:
    document = export.document
    if document is None:
        return "never started"
    if document["status"] != "completed":
        return str(document["status"])
    if document["verification"]["status"] != "passed":
        return f"verification {document['verification']['status']}"
    return export.problem or "download digest differs"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"


def _seconds(document: Mapping[str, Any]) -> str:
    started, finished = document.get("startedAt"), document.get("finishedAt")
    if not started or not finished:
        return "-"
    delta = datetime.fromisoformat(finished) - datetime.fromisoformat(started)
    return f"{delta.total_seconds():.2f}"


def verdict(exports: Sequence[DemoExport]) -> str:
    """Return one line saying whether every export completed, verified and downloaded intact."""
    good = sum(export.verified for export in exports)
    if exports and good == len(exports):
        return f"all {good} exports completed, verified and downloaded intact"
    return f"{len(exports) - good} of {len(exports)} exports did not complete and verify"


def print_next_steps(run: DemoRun, user_id: str, admin_id: str) -> None:
    """Print the URLs, tokens and commands to explore the running system with."""
    endpoints, ports, root, api_url = run.endpoints, run.ports, run.root, run.api_url
    user_token = mint_token(endpoints.jwt_secret, user_id)
    admin_token = mint_token(endpoints.jwt_secret, admin_id, admin=True)
    lines = [
        "",
        "Where to look next:",
        f"  API             {api_url}   (OpenAPI document: {api_url}/openapi.json)",
        f"  API metrics     {api_url}/metrics",
        f"  worker metrics  http://127.0.0.1:{ports.worker_metrics}/metrics",
        f"  verifier metrics http://127.0.0.1:{ports.verifier_metrics}/metrics",
        f"  downloads       {root / 'downloads'}/",
        f"  user {user_id} token (8 h):",
        f"    {user_token}",
        f"  admin {admin_id} token (8 h):",
        f"    {admin_token}",
        "",
        "In another shell:",
        f"  export EXPORTCTL_DEV_ROOT={root} EXPORTCTL_API_URL={api_url}",
        f"  export EXPORTCTL_TOKEN=$(exportctl token --user {admin_id} --admin)",
        "  exportctl exports list",
        "  exportctl exports status ID --watch",
        "  exportctl exports download ID --out downloads/",
        "  exportctl stats",
        "  exportctl queues",
        f'  curl -H "Authorization: Bearer $EXPORTCTL_TOKEN" {api_url}/api/exports',
    ]
    print("\n".join(lines), file=run.out, flush=True)
