"""`LocalStack`: PostgreSQL, Redis and S3 on 127.0.0.1, kept under one root folder.

The root holds each service's data, logs and pid, the remembered ports and the development
secrets, so `up` after a reboot or a crash brings back the same URLs and the same data. A service
named in the environment is left to its owner and only probed. Calls on one root are serialised
with a lock file; different roots never share a port, a file or a process.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from exportctl.devstack import binaries, ports
from exportctl.devstack.credentials import load_or_create_jwt_secret, load_or_create_s3_keys
from exportctl.devstack.endpoints import ServiceStatus, StackEndpoints
from exportctl.devstack.errors import StackError, StackPackagesMissingError
from exportctl.devstack.external import ExternalServices
from exportctl.devstack.postgres import PostgresService
from exportctl.devstack.seaweed import REGION, SeaweedService
from exportctl.devstack.valkey import ValkeyService

BUCKET = "data-export"
# The default environment: nothing external, every service managed.
NO_ENVIRON: Mapping[str, str] = MappingProxyType({})
SERVICES = ("postgres", "redis", "s3")
# Other names operators reach for when asking for a service's log.
SERVICE_ALIASES = {
    "postgresql": "postgres",
    "pg": "postgres",
    "valkey": "redis",
    "seaweedfs": "s3",
    "weed": "s3",
}
# Started PostgreSQL and Valkey answer within a second; the margin covers a loaded CI machine.
READY_TIMEOUT_SECONDS = 30.0
# After a restart SeaweedFS answers InternalError for up to ~5 s until its volume server
# registers; a cold first start on a slow disk can take longer still.
S3_READY_TIMEOUT_SECONDS = 45.0


class ManagedService(Protocol):
    """What the stack needs from each server it runs."""

    name: str

    @property
    def url(self) -> str: ...

    @property
    def ports(self) -> tuple[int, ...]: ...

    def running_pid(self) -> int | None: ...

    def start(self) -> int: ...

    def wait_ready(self, pid: int, timeout_seconds: float) -> None: ...

    def answers(self) -> bool: ...

    def stop(self) -> None: ...


class LocalStack:
    """The development stack kept under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.ports_file = self.root / "ports.json"
        self.s3_config_file = self.root / "s3.json"
        self.jwt_secret_file = self.root / "jwt_secret"
        # Seconds each service took from start to its first real answer at the last `up`.
        self.startup_seconds: dict[str, float] = {}

    def log_path(self, service: str) -> Path:
        """Return the log file of `service` (postgres, redis or s3)."""
        name = SERVICE_ALIASES.get(service, service)
        if name not in SERVICES:
            raise StackError(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
        return self.root / "logs" / f"{name}.log"

    def up(self, environ: Mapping[str, str] = NO_ENVIRON) -> StackEndpoints:
        """Start every service the environment does not provide, wait until each answers."""
        external = ExternalServices.from_environ(environ)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            port_map = ports.load_or_allocate(self.ports_file)
            jwt_secret = load_or_create_jwt_secret(self.jwt_secret_file)
            services = self._services(port_map)
            wanted = [s for s in services if external.url_of(s.name) is None]
            _check_binaries([s.name for s in wanted])
            self.startup_seconds = {}
            started: dict[str, tuple[int, float]] = {}
            dead = [s for s in wanted if s.running_pid() is None]
            # Check every port before starting anything, so a conflict leaves nothing half-up.
            for service in dead:
                ports.require_free(service.name, service.ports, ports_file=self.ports_file)
            # Start every dead server first, then wait: their start-up times overlap. SeaweedFS
            # is the slowest to become ready, so it goes first.
            for service in sorted(dead, key=lambda s: s.name != "s3"):
                began = time.monotonic()
                started[service.name] = (service.start(), began)
            for service in wanted:
                pid = started[service.name][0] if service.name in started else service.running_pid()
                if pid is None:
                    raise StackError(f"{service.name} stopped while the stack was coming up")
                timeout = (
                    S3_READY_TIMEOUT_SECONDS if service.name == "s3" else READY_TIMEOUT_SECONDS
                )
                service.wait_ready(pid, timeout)
                if service.name in started:
                    self.startup_seconds[service.name] = time.monotonic() - started[service.name][1]
            return self._endpoints(services, external, jwt_secret)

    def down(self) -> None:
        """Stop every server this root started; external services are never touched."""
        if not self.root.is_dir():
            return
        with self._locked():
            port_map = ports.load(self.ports_file)
            if port_map is None:
                return
            services = self._services(port_map)
            # The servers are independent: stop them together, so `down` takes the slowest one's
            # time (SeaweedFS, about a second), not the sum.
            with ThreadPoolExecutor(max_workers=len(services)) as pool:
                for stopping in [pool.submit(service.stop) for service in services]:
                    stopping.result()

    def status(self, environ: Mapping[str, str] = NO_ENVIRON) -> list[ServiceStatus]:
        """Report each service: its URL, who runs it, whether it runs and answers."""
        external = ExternalServices.from_environ(environ)
        port_map = ports.load(self.ports_file) if self.root.is_dir() else None
        services = {s.name: s for s in self._services(port_map)} if port_map else {}
        report = []
        for name in SERVICES:
            external_url = external.url_of(name)
            if external_url is not None:
                answering = external.answers(name)
                report.append(ServiceStatus(name, external_url, False, answering, answering, None))
                continue
            service = services.get(name)
            pid = service.running_pid() if service else None
            answering = service is not None and pid is not None and service.answers()
            url = service.url if service else ""
            report.append(ServiceStatus(name, url, True, pid is not None, answering, pid))
        return report

    def endpoints(self, environ: Mapping[str, str] = NO_ENVIRON) -> StackEndpoints:
        """Return the endpoints of a stack brought up before, without starting anything."""
        external = ExternalServices.from_environ(environ)
        port_map = ports.load(self.ports_file) if self.root.is_dir() else None
        if port_map is None or not self.jwt_secret_file.exists():
            raise StackError(f"no dev stack in {self.root} yet; run `exportctl dev up`")
        jwt_secret = load_or_create_jwt_secret(self.jwt_secret_file)
        return self._endpoints(self._services(port_map), external, jwt_secret)

    def managed_pids(self) -> dict[str, int]:
        """Return the pid of every server of this root that is running now."""
        port_map = ports.load(self.ports_file) if self.root.is_dir() else None
        found = {}
        for service in self._services(port_map) if port_map else []:
            pid = service.running_pid()
            if pid is not None:
                found[service.name] = pid
        return found

    def _services(self, port_map: dict[str, int]) -> list[ManagedService]:
        """Build the three managed services from the remembered ports."""
        data = self.root / "data"
        pids = self.root / "pids"
        keys = load_or_create_s3_keys(self.s3_config_file)
        return [
            PostgresService(
                data_dir=data / "postgres",
                log_path=self.log_path("postgres"),
                port=port_map["postgres"],
            ),
            ValkeyService(
                data_dir=data / "valkey",
                log_path=self.log_path("redis"),
                pid_path=pids / "redis.pid",
                port=port_map["redis"],
            ),
            SeaweedService(
                data_dir=data / "seaweedfs",
                log_path=self.log_path("s3"),
                pid_path=pids / "s3.pid",
                config_path=self.s3_config_file,
                ports=port_map,
                keys=keys,
                bucket=BUCKET,
            ),
        ]

    def _endpoints(
        self, services: list[ManagedService], external: ExternalServices, jwt_secret: str
    ) -> StackEndpoints:
        """Combine managed and external services into the endpoints handed to callers."""
        managed = {s.name: s.url for s in services}
        keys = load_or_create_s3_keys(self.s3_config_file)
        s3 = external.s3
        return StackEndpoints(
            database_url=external.database_url or managed["postgres"],
            redis_url=external.redis_url or managed["redis"],
            s3_endpoint_url=s3.endpoint_url if s3 else managed["s3"],
            s3_bucket=s3.bucket if s3 else BUCKET,
            s3_access_key_id=s3.access_key_id if s3 else keys.access_key_id,
            s3_secret_access_key=s3.secret_access_key if s3 else keys.secret_access_key,
            s3_region=s3.region if s3 else REGION,
            jwt_secret=jwt_secret,
        )

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the root's lock file, so two commands never start the same server twice."""
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_binaries(names: list[str]) -> None:
    """Fail with one message naming every `stack` package the wanted services lack."""
    locators = {
        "postgres": binaries.postgres_bin_dir,
        "redis": binaries.valkey_server_path,
        "s3": binaries.weed_path,
    }
    problems = []
    for name in names:
        try:
            locators[name]()
        except StackPackagesMissingError as exc:
            problems.append(str(exc).split(":", 1)[0])
    if problems:
        raise StackPackagesMissingError(f"{'; '.join(problems)}: {binaries.INSTALL_HINT}")
