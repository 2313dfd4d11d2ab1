"""The README's own commands, run as written against the test stack.

The restore drill block is taken from README.md itself, so a change to the README that breaks
the drill, or a change to the commands that breaks the README, fails here. `./run` is replaced by
the installed `exportctl` (what `./run` hands its arguments to), the bucket by the stack's, and
the restore target by a fresh empty database.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from exportctl.devstack import StackEndpoints
from exportctl.seeding import seed_database, write_objects

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND_TIMEOUT_SECONDS = 300


def _shell_blocks() -> list[list[str]]:
    """Return each ```sh block of the README as its command lines (comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [
        [line.strip() for line in block.splitlines() if line.strip() and line[0] != "#"]
        for block in blocks
    ]


def _drill() -> list[list[str]]:
    for block in _shell_blocks():
        if any(" restore " in f" {line} " for line in block):
            return [shlex.split(line) for line in block]
    raise AssertionError("the README has no restore drill block")


def test_readme_quick_start_names_exactly_the_two_commands() -> None:
    first = _shell_blocks()[0]
    assert [line.split("#")[0].split() for line in first] == [["./run", "demo"], ["./run", "test"]]


@pytest.mark.e2e
def test_readme_restore_drill_runs_as_written(
    stack: StackEndpoints, database_url: str, empty_database_url: str, s3_client: S3Client
) -> None:
    with psycopg.connect(database_url) as conn:
        seed_database(conn, users=60, max_files=200, seed=3)
        conn.commit()
        # The files' own objects, so verification's file-object check has them to find.
        write_objects(conn, s3_client, stack.s3_bucket)
    env = {**stack.as_env(), "DATABASE_URL": database_url, "PATH": str(Path(sys.executable).parent)}
    for argv in _drill():
        assert argv[0] == "./run", argv
        command = [sys.executable, "-m", "exportctl", *argv[1:]]
        command = [
            part.replace("s3://data-export/", f"s3://{stack.s3_bucket}/") for part in command
        ]
        if "--database" in command:
            command[command.index("--database") + 1] = empty_database_url
        finished = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        assert finished.returncode == 0, (command, finished.stdout, finished.stderr)
    with psycopg.connect(database_url) as source, psycopg.connect(empty_database_url) as target:
        query = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM files)"
        assert source.execute(query).fetchone() == target.execute(query).fetchone()
