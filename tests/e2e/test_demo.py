"""The README's first command: `exportctl demo --once` on its own local stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The demo brings up its own stack, seeds, exports 13 times and verifies; allow a loaded machine.
DEMO_TIMEOUT_SECONDS = 420
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL", "BROKER_URL")


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_once_runs_every_step_and_exits_zero(tmp_path: Path) -> None:
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
    assert "all steps succeeded" in output
    assert "users" in output
    # Every export row of the summary says it verified.
    export_rows = [line for line in output.splitlines() if line.startswith(("user ", "bulk "))]
    assert len(export_rows) == 13, output
    assert all(" yes " in line for line in export_rows), output
