"""The README's first command: `exportctl demo --once` on its own local stack, through the
Procfile's processes and the HTTP API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The demo brings up its own stack and processes, seeds, asks for 14 exports over HTTP, follows,
# downloads and checks them; allow a loaded machine.
DEMO_TIMEOUT_SECONDS = 420
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL", "BROKER_URL")


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_once_verifies_and_downloads_every_export_and_exits_zero(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name not in SERVICE_VARIABLES}
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "exportctl",
            "demo",
            "--once",
            "--users",
            "80",
            "--root",
            str(tmp_path / "stack"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_SECONDS,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "all 14 exports completed, verified and downloaded intact" in output
    # Every process of the Procfile ran under the supervisor, its lines prefixed with its name.
    for name in ("release", "web", "worker", "verifier", "scheduler"):
        started = rf"^\d\d:\d\d:\d\d {name} +\| started with pid \d+"
        assert re.search(started, output, flags=re.MULTILINE), output
    # Every export row of the table: 12 user exports (4 formats x 3 compressions), the
    # scheduled one and the bulk one, each verified and downloaded with a matching SHA-256.
    rows = [
        line for line in output.splitlines() if line.startswith(("user ", "scheduled ", "bulk "))
    ]
    assert len(rows) == 14, output
    assert all(line.rstrip().endswith(" yes") for line in rows), output
    pairs = {tuple(line.split()[2:4]) for line in rows if line.startswith("user ")}
    assert len(pairs) == 12, output
    assert "exportctl exports list" in output
    assert "/metrics" in output
    downloads = sorted((tmp_path / "stack" / "downloads").iterdir())
    assert len(downloads) == 14, downloads
    assert not [path for path in downloads if path.name.endswith(".partial")]
