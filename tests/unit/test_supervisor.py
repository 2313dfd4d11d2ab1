"""The supervisor: Procfile parsing, prefixed output, no silent restarts, SIGTERM then SIGKILL."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exportctl.supervisor import (
    LinePrinter,
    ProcessType,
    ProcfileError,
    Supervisor,
    load_procfile,
    parse_procfile,
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _supervisor(procfile: str, lines: list[tuple[str, str]], tmp_path: Path) -> Supervisor:
    return Supervisor(
        parse_procfile(procfile),
        env={"PATH": "/usr/bin:/bin", "GREETING": "hello"},
        cwd=tmp_path,
        sink=lambda name, line: lines.append((name, line)),
        extra_env={"two": {"GREETING": "bonjour"}},
    )


def _wait_for(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail("condition not reached in time")


def test_procfile_lines_become_process_types_in_file_order() -> None:
    processes = parse_procfile(
        "# comment\n\nweb: gunicorn -c x.py app:app\nworker: A=1 B='two words' dramatiq m\n"
    )
    assert list(processes) == ["web", "worker"]
    assert processes["worker"].argv_and_env() == (["dramatiq", "m"], {"A": "1", "B": "two words"})


@pytest.mark.parametrize(
    "text", ["web gunicorn", "web:", "bad name: run", "web: a\nweb: b", "web: A=1"]
)
def test_malformed_procfile_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(ProcfileError):
        _commands(text)


def _commands(text: str) -> list[tuple[list[str], dict[str, str]]]:
    return [process.argv_and_env() for process in parse_procfile(text).values()]


def test_the_projects_procfile_names_every_process_the_demo_runs() -> None:
    processes = load_procfile(
        ROOT / "Procfile", required=("release", "web", "worker", "verifier", "scheduler")
    )
    assert processes["web"].argv_and_env()[0][0] == "gunicorn"


def test_missing_process_is_named(tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text("web: true\n")
    with pytest.raises(ProcfileError, match="scheduler"):
        load_procfile(procfile, required=("web", "scheduler"))


def test_output_is_relayed_per_process_with_its_own_environment(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    say = f'{PYTHON} -c \'import os; print(os.environ["GREETING"], os.environ["X"])\''
    supervisor = _supervisor(f"one: X=1 {say}\ntwo: X=2 {say}\n", lines, tmp_path)
    supervisor.start(["one", "two"])
    _wait_for(lambda: ("one", "hello 1") in lines)
    _wait_for(lambda: ("two", "bonjour 2") in lines)
    supervisor.stop()


def test_an_exited_process_is_reported_once_and_not_restarted(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    supervisor = _supervisor(f"quick: {PYTHON} -c 'raise SystemExit(3)'\n", lines, tmp_path)
    supervisor.start(["quick"])
    ended: list[tuple[str, int]] = []

    def quick_ended() -> bool:
        ended.extend(supervisor.exited())
        return bool(ended)

    _wait_for(quick_ended)
    assert ended == [("quick", 3)]
    time.sleep(0.3)
    assert supervisor.exited() == []
    assert sum(1 for _, line in lines if line.startswith("started with pid")) == 1
    assert ("quick", "exited with code 3") in lines


def test_release_step_runs_to_its_end_and_returns_its_code(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    supervisor = _supervisor(f"release: {PYTHON} -c 'print(\"migrated\")'\n", lines, tmp_path)
    assert supervisor.run_to_end("release", timeout_seconds=30) == 0
    assert ("release", "migrated") in lines


def test_stop_sends_sigterm_then_sigkill_to_a_process_that_ignores_it(tmp_path: Path) -> None:
    stubborn = (
        f"{PYTHON} -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'print("ready", flush=True); time.sleep(60)\''
    )
    polite = f"{PYTHON} -c 'import time; print(\"ready\", flush=True); time.sleep(60)'"
    lines: list[tuple[str, str]] = []
    supervisor = _supervisor(f"stubborn: {stubborn}\npolite: {polite}\n", lines, tmp_path)
    supervisor.start(["stubborn", "polite"])
    _wait_for(lambda: ("stubborn", "ready") in lines and ("polite", "ready") in lines)
    began = time.monotonic()
    supervisor.stop(timeout_seconds=1)
    assert time.monotonic() - began < 10
    assert dict(supervisor.exited()) == {"stubborn": -9, "polite": -15}
    assert ("stubborn", "did not stop after SIGTERM; sending SIGKILL") in lines


def test_line_printer_prefixes_each_line_without_colour_when_piped() -> None:
    stream = io.StringIO()
    printer = LinePrinter(["web", "scheduler"], stream)
    printer("web", "listening")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" web       | listening")
    assert "\x1b[" not in line


def test_a_command_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    supervisor = Supervisor(
        {"ghost": ProcessType("ghost", "no-such-program-anywhere")},
        env={"PATH": str(tmp_path)},
        cwd=tmp_path,
        sink=lambda name, line: None,
    )
    with pytest.raises(ProcfileError, match="cannot start ghost"):
        supervisor.start(["ghost"])
