"""Detached server processes: spawn, find, and stop them by pid.

The local stack's servers must outlive the command that started them, so they run in their own
session with output in a log file. Liveness reads /proc: a zombie counts as dead, because on
machines whose init does not reap orphans a killed server stays a zombie forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from exportctl.devstack.errors import ProcessStartError

# Polling step while waiting for a process to exit or a server to answer: short enough that a
# 0.1 s start is not padded to a second, long enough not to spin.
POLL_INTERVAL_SECONDS = 0.05


# The servers are started by a short-lived launcher so that they become children of init, not of
# this process: the command can exit without waiting for them, and a test that kills one does not
# leave it as an unreaped child here.
_LAUNCHER = """
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
null = os.open(os.devnull, os.O_RDONLY)
actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1),
           (os.POSIX_SPAWN_DUP2, log, 2)]
print(os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ, file_actions=actions, setsid=True))
"""
# The launcher only starts one process; if it takes longer, something is badly wrong.
LAUNCH_TIMEOUT_SECONDS = 30


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path
) -> int:
    """Start `argv` in its own session, output appended to `log_path`, and return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    launched = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(log_path), *argv],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_SECONDS,
        check=False,
    )
    if launched.returncode != 0 or not launched.stdout.strip().isdigit():
        raise ProcessStartError(f"could not start {argv[0]}: {launched.stderr.strip()}")
    return int(launched.stdout.strip())


def _reap(pid: int) -> None:
    """Collect `pid` if it is our own exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _state(stat_path: Path) -> str:
    """Return the state letter from a /proc stat file (raises OSError when it is gone)."""
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat_path.read_text().rpartition(")")[2].split()[0]


def is_alive(pid: int) -> bool:
    """Tell whether any thread of `pid` still runs (zombies and missing pids are dead)."""
    _reap(pid)
    try:
        if _state(Path(f"/proc/{pid}/stat")) not in ("Z", "X"):
            return True
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    # A killed multi-threaded server's main thread turns zombie before the other threads finish
    # exiting and closing the sockets they share: it is dead only once every thread is.
    for thread in threads:
        with contextlib.suppress(OSError):
            if _state(thread / "stat") not in ("Z", "X"):
                return True
    return False


def command_line(pid: int) -> list[str]:
    """Return the argv of `pid`, or an empty list when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def working_directory(pid: int) -> Path | None:
    """Return the current directory of `pid`, or None when it cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def live_pids_in(directory: Path) -> list[int]:
    """List live processes whose current directory is `directory`."""
    target = directory.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if working_directory(pid) == target and is_alive(pid):
            found.append(pid)
    return found


def read_pid_file(path: Path) -> int | None:
    """Return the pid on the first line of `path`, or None when missing or malformed."""
    try:
        first = path.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return int(first) if first.isdigit() else None


def write_pid_file(path: Path, pid: int) -> None:
    """Record `pid` in `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(f"{pid}\n")
    partial.replace(path)


def wait_until(predicate: Callable[[], bool], *, timeout_seconds: float) -> bool:
    """Poll `predicate` until it holds or the timeout passes; return its last answer."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)


def terminate(pid: int, *, grace_seconds: float) -> None:
    """Send SIGTERM to `pid`, and SIGKILL if it still lives after `grace_seconds`."""
    if not is_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not is_alive(pid), timeout_seconds=grace_seconds):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(pid), timeout_seconds=grace_seconds)


# Lines of a server log quoted in an error, enough to show the failure and its context.
LOG_TAIL_LINES = 15


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines of the log at `path`, or an empty string."""
    # Read backwards in blocks until enough line breaks are seen: a log can be large.
    block_bytes = 64 * 1024
    try:
        with path.open("rb") as handle:
            position = handle.seek(0, os.SEEK_END)
            chunks: list[bytes] = []
            newlines = 0
            while position > 0 and newlines <= lines:
                step = min(block_bytes, position)
                position -= step
                handle.seek(position)
                chunk = handle.read(step)
                chunks.append(chunk)
                newlines += chunk.count(b"\n")
    except OSError:
        return ""
    text = b"".join(reversed(chunks)).decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""


def await_ready(
    *, what: str, answers: Callable[[], bool], pid: int, log_path: Path, timeout_seconds: float
) -> None:
    """Wait until `answers()` holds; fail early, quoting the log, if `pid` dies first."""
    deadline = time.monotonic() + timeout_seconds
    while not answers():
        if not is_alive(pid):
            raise ProcessStartError(
                f"{what} exited during start; end of {log_path}:\n{log_tail(log_path)}"
            )
        if time.monotonic() >= deadline:
            raise ProcessStartError(
                f"{what} did not answer within {timeout_seconds:.0f} s; end of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL_SECONDS)
