"""How to run PostgreSQL's tools when this process is root, which PostgreSQL refuses.

Preferred: a user namespace (`unshare --user --map-user=1000 --map-group=1000`), which needs no
system user and changes no file ownership. Where user namespaces are blocked, the tools run as
`nobody` and the data folder is handed to that user. A normal user needs neither.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from exportctl.devstack.errors import StackError

# The uid and gid the tools see inside the user namespace; any non-zero id works.
NAMESPACE_ID = 1000
FALLBACK_USER = "nobody"
# `unshare ... true` answers in milliseconds when namespaces work.
PROBE_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class RunAs:
    """A command prefix and/or a user to run PostgreSQL's tools with."""

    prefix: tuple[str, ...] = ()
    uid: int | None = None
    gid: int | None = None

    def hand_over(self, *paths: Path) -> None:
        """Give `paths` to the fallback user, when there is one."""
        if self.uid is None or self.gid is None:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def run(
        self, argv: list[str], *, env: dict[str, str], timeout_seconds: float
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` with this identity and return its result (output captured)."""
        return subprocess.run(
            [*self.prefix, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            check=False,
            user=self.uid,
            group=self.gid,
            extra_groups=[] if self.uid is not None else None,
        )


def _namespace_prefix() -> tuple[str, ...] | None:
    """Return the unshare prefix if user namespaces work here, else None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = (unshare, "--user", f"--map-user={NAMESPACE_ID}", f"--map-group={NAMESPACE_ID}")
    try:
        probe = subprocess.run(
            [*prefix, "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


@functools.cache
def postgres_identity() -> RunAs:
    """Decide once per process how PostgreSQL's tools must be run."""
    if os.geteuid() != 0:
        return RunAs()
    prefix = _namespace_prefix()
    if prefix is not None:
        return RunAs(prefix=prefix)
    try:
        user = pwd.getpwnam(FALLBACK_USER)
    except KeyError as exc:
        raise StackError(
            "PostgreSQL cannot run as root, user namespaces are blocked and there is no "
            f"`{FALLBACK_USER}` user: run the stack as a normal user"
        ) from exc
    return RunAs(uid=user.pw_uid, gid=user.pw_gid)


def require_traversable(path: Path) -> None:
    """Fail clearly if the fallback user cannot reach `path` through its parent folders."""
    identity = postgres_identity()
    if identity.uid is None:
        return
    for folder in path.resolve().parents:
        if not folder.stat().st_mode & 0o001:
            raise StackError(
                f"PostgreSQL runs as `{FALLBACK_USER}` here (user namespaces are blocked) and "
                f"cannot enter {folder}: use a --root whose parent folders are world-traversable"
            )
