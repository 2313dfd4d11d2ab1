"""schemathesis against `/openapi.json` on a live gunicorn: no 5xx, no answer off the schema.

Runs the schemathesis command line (every check, all phases, a fixed seed, bounded examples and
time) as an administrator whose user exists, so requests reach the business logic. Statuses a
valid request can legitimately get from state the generator cannot see are listed for the
positive-data check: 410 (expired export), 422 (an Idempotency-Key reused with another body) and
400 for a date range whose end is before its start (JSON Schema cannot compare two fields).
Invalid requests may also be refused with 411, 413 or 414 (the last one by gunicorn itself, for
request lines over 4094 bytes); those count as rejections.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_gunicorn import Server, run_gunicorn
from api_support import add_user

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Examples per operation and the whole run's budget: enough to cover every operation, every
# response and the fuzzing phase, bounded so the suite stays fast on a 2-core machine.
MAX_EXAMPLES = 25
MAX_TIME_SECONDS = 90
RUN_TIMEOUT_SECONDS = 240
SEED = 20261127

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "410", "422", "429"]

[checks.negative_data_rejection]
expected-statuses = [
  "400", "401", "403", "404", "405", "406", "409", "411", "413", "414", "415", "422", "428", "429"
]
"""


@pytest.fixture(scope="module")
def server(
    stack: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A gunicorn with a generous rate limit, so fuzzing reaches more than 429s."""
    workdir = Path(tmp_path_factory.mktemp("gunicorn-schemathesis"))
    env = {"EXPORT_RATE_LIMIT": "1000", "EXPORT_ADMIN_RATE_LIMIT": "1000", "API_WORKERS": "2"}
    with run_gunicorn(stack, template_database, workdir, env=env) as running:
        yield running


def test_live_api_conforms_to_its_openapi_document(server: Server, tmp_path: Path) -> None:
    if importlib.util.find_spec("schemathesis") is None:
        pytest.fail(
            "schemathesis is not installed: it belongs to the dev dependency group "
            "(uv sync --group dev); this test must run, not be skipped"
        )
    admin = add_user(server.database_url, role="admin")
    token = server.token(admin, roles=["admin"], jti=str(uuid.uuid4()))
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{server.port}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_SECONDS),
        "--seed",
        str(SEED),
        # One worker thread: CPython 3.11 before 3.11.8 can raise a spurious "AST constructor
        # recursion depth mismatch" SystemError when threads parse code at the same time
        # (python/cpython#106905), which Hypothesis does while describing strategies.
        "--workers",
        "1",
        "--request-timeout",
        "10",
    ]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-20000:]
