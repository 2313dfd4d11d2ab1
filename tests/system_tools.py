"""Standard command-line tools some tests drive for real (jq, xmllint, zstd, gzip, promtool,
systemd-analyze).

They are system packages, not on a fresh machine with only Python, where the README's test
command must still pass: a test needing one is skipped there, with the command that installs it.
`.ci/run` installs them and sets `REQUIRE_SYSTEM_TOOLS=1`, which turns a missing tool into a
failure, so CI never passes by skipping them.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED_VARIABLE = "REQUIRE_SYSTEM_TOOLS"


def system_tool(name: str, *, package: str) -> str:
    """Return the path of tool `name`; skip the test (fail where required) when it is absent."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed; install it with: apt-get install -y {package}"
    if os.environ.get(REQUIRED_VARIABLE) == "1":
        pytest.fail(message)
    pytest.skip(message)
