"""Run the Procfile's processes under one supervisor, as foreman or honcho would.

The commands come from the Procfile itself, never from a copy here. Each process runs in its own
process group with stdout and stderr merged; every line it prints is handed to a sink with the
process name, so a terminal shows one prefixed, coloured stream. Nothing is restarted: a process
that exits is reported and the caller decides. `stop` sends SIGTERM to every process, waits, then
SIGKILL to whatever remains of its group.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from pipelines.errors import PermanentError

# Seconds between SIGTERM and SIGKILL: Dramatiq workers finish the message in hand and gunicorn
# drains requests (its graceful_timeout is 30 s, but the demo's requests take milliseconds).
STOP_TIMEOUT_SECONDS = 20.0
# Bytes of one output line handed to the sink; a longer line is cut, so memory stays bounded
# whatever a process prints.
MAX_LINE_BYTES = 16 * 1024
# ANSI colours cycled over the process names, as foreman does.
COLOURS = ("36", "33", "32", "35", "34", "31")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)

Sink = Callable[[str, str], None]


class ProcfileError(PermanentError):
    """The Procfile is missing, malformed or lacks a process the caller needs."""


@dataclass(frozen=True)
class ProcessType:
    """One Procfile line: a process name and the command an operator would run."""

    name: str
    command: str

    def argv_and_env(self) -> tuple[list[str], dict[str, str]]:
        """Split the command into leading VAR=value assignments and the argument list."""
        words = shlex.split(self.command)
        assignments: dict[str, str] = {}
        while words and _ASSIGNMENT.fullmatch(words[0]):
            name, value = words.pop(0).split("=", 1)
            assignments[name] = value
        if not words:
            raise ProcfileError(f"Procfile process {self.name!r} has no command")
        return words, assignments


def parse_procfile(text: str) -> dict[str, ProcessType]:
    """Return the process types of a Procfile's text, in file order."""
    found: dict[str, ProcessType] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, command = line.partition(":")
        name, command = name.strip(), command.strip()
        if not colon or not _NAME.fullmatch(name) or not command:
            raise ProcfileError(f"Procfile line {number} is not `name: command`: {raw!r}")
        if name in found:
            raise ProcfileError(f"Procfile names {name!r} twice (line {number})")
        found[name] = ProcessType(name, command)
    return found


def load_procfile(path: Path, *, required: Iterable[str] = ()) -> dict[str, ProcessType]:
    """Read and parse the Procfile at `path`, checking that every required process is there."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProcfileError(f"cannot read {path}: {exc}") from exc
    processes = parse_procfile(text)
    missing = [name for name in required if name not in processes]
    if missing:
        raise ProcfileError(f"{path} has no {', '.join(missing)} process (needed here)")
    return processes


class LinePrinter:
    """A sink that writes `HH:MM:SS name | line`, coloured when the stream is a terminal."""

    def __init__(self, names: Sequence[str], stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._width = max((len(name) for name in names), default=0)
        self._colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}
        self._colour = self._stream.isatty()
        self._lock = threading.Lock()

    def __call__(self, name: str, line: str) -> None:
        """Print one line of process `name`."""
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self._width)} |"
        if self._colour:
            prefix = f"\x1b[{self._colours.get(name, '0')}m{prefix}\x1b[0m"
        with self._lock:
            self._stream.write(f"{prefix} {line}\n")
            self._stream.flush()


@dataclass
class _Running:
    name: str
    process: subprocess.Popen[bytes]
    reader: threading.Thread


class Supervisor:
    """Start Procfile processes with one environment, relay their output, stop them together."""

    def __init__(
        self,
        processes: Mapping[str, ProcessType],
        *,
        env: Mapping[str, str],
        cwd: Path,
        sink: Sink,
        extra_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._processes = processes
        self._env = dict(env)
        self._cwd = cwd
        self._sink = sink
        self._extra_env = extra_env or {}
        self._running: list[_Running] = []
        self._reported: set[int] = set()

    def run_to_end(self, name: str, *, timeout_seconds: float) -> int:
        """Run process `name` (a release step) to its end and return its exit code."""
        running = self._spawn(name)
        try:
            code = running.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self._stop([running])
            code = running.process.returncode
            self._sink(name, f"did not finish within {timeout_seconds:.0f} s; stopped")
        running.reader.join()
        return int(code)

    def start(self, names: Iterable[str]) -> None:
        """Start the named processes, each in its own process group."""
        for name in names:
            self._running.append(self._spawn(name))

    def exited(self) -> list[tuple[str, int]]:
        """Return the processes that ended since the last call, with their exit codes."""
        ended = []
        for running in self._running:
            code = running.process.poll()
            if code is not None and running.process.pid not in self._reported:
                self._reported.add(running.process.pid)
                running.reader.join(timeout=1)
                self._sink(running.name, f"exited with code {code}")
                ended.append((running.name, code))
        return ended

    def pids(self) -> dict[str, int]:
        """Return the pid of each started process."""
        return {running.name: running.process.pid for running in self._running}

    def stop(self, *, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop every process: SIGTERM to each, wait, then SIGKILL what remains of its group."""
        self._stop(self._running, timeout_seconds=timeout_seconds)
        for running in self._running:
            running.reader.join(timeout=2)

    def _stop(
        self, targets: Sequence[_Running], *, timeout_seconds: float = STOP_TIMEOUT_SECONDS
    ) -> None:
        for running in targets:
            # The leader only: gunicorn's master and Dramatiq's main process pass the signal on
            # to their children, and a child that gets a second one is killed mid-message.
            if running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_seconds
        for running in targets:
            try:
                running.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._sink(running.name, "did not stop after SIGTERM; sending SIGKILL")
            # The group may hold forked children even when its leader has exited.
            _signal_group(running.process, signal.SIGKILL)
            running.process.wait()

    def _spawn(self, name: str) -> _Running:
        process_type = self._processes.get(name)
        if process_type is None:
            raise ProcfileError(f"the Procfile has no {name!r} process")
        argv, assignments = process_type.argv_and_env()
        env = {**self._env, **assignments, **self._extra_env.get(name, {})}
        try:
            process = subprocess.Popen(
                argv,
                cwd=self._cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProcfileError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        assert process.stdout is not None
        reader = threading.Thread(
            target=_relay, args=(name, process.stdout, self._sink), daemon=True
        )
        reader.start()
        self._sink(name, f"started with pid {process.pid}: {process_type.command}")
        return _Running(name, process, reader)


def _relay(name: str, pipe: IO[bytes], sink: Sink) -> None:
    """Hand each line of `pipe` to the sink until the process closes it."""
    with pipe:
        while line := pipe.readline(MAX_LINE_BYTES):
            sink(name, line.decode("utf-8", errors="replace").rstrip("\r\n"))


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has ended already
        os.killpg(process.pid, signum)


def with_bin_dir(environ: Mapping[str, str], bin_dir: Path) -> dict[str, str]:
    """Return `environ` with `bin_dir` first on PATH, so Procfile commands find this install."""
    path = environ.get("PATH", os.defpath)
    return {**environ, "PATH": f"{bin_dir}{os.pathsep}{path}"}
