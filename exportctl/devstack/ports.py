"""Ports of the local stack: chosen free on 127.0.0.1 once, remembered in `ports.json`.

Keeping the ports fixed across restarts keeps the printed URLs valid. A remembered port that some
other program took meanwhile is an error the operator must see, never silently replaced.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from exportctl.devstack.errors import PortTakenError, StackError
from exportctl.devstack.process import wait_until

LOOPBACK = "127.0.0.1"
# Ports come from below the kernel's ephemeral range (32768-60999 by default), so an outgoing
# connection never borrows one between two restarts.
LOW_PORT = 20000
HIGH_PORT = 22767
# SeaweedFS components derive a gRPC port as http port + 10000 in places that ignore the explicit
# flag (the mini worker dials admin port + 10000), so every gRPC port is its http port + 10000.
GRPC_OFFSET = 10000
# Random draws before giving up: the range holds 2768 candidates, nearly all free on a dev machine.
MAX_DRAWS = 2000

# How long a port may stay bound after its owner died before it counts as taken.
RELEASE_SECONDS = 3.0

# Every port name the stack uses; a `*_grpc` name is its http name's port + GRPC_OFFSET.
SINGLE_PORTS = ("postgres", "redis")
SEAWEED_HTTP_PORTS = ("s3", "seaweed_master", "seaweed_volume", "seaweed_filer", "seaweed_admin")


def port_is_free(port: int) -> bool:
    """Tell whether a listening socket can be bound on 127.0.0.1:`port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores TIME_WAIT leftovers of our own earlier run, not live listeners.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _draw(taken: set[int], offsets: tuple[int, ...]) -> int:
    """Pick a base port such that base + each offset is free and not already chosen."""
    for _ in range(MAX_DRAWS):
        base = random.randint(LOW_PORT, HIGH_PORT)  # noqa: S311 - not a secret, a free port
        wanted = [base + offset for offset in offsets]
        if not taken.intersection(wanted) and all(port_is_free(port) for port in wanted):
            taken.update(wanted)
            return base
    raise StackError(f"no free ports left between {LOW_PORT} and {HIGH_PORT + max(offsets)}")


def allocate() -> dict[str, int]:
    """Choose a fresh set of free ports for every service of the stack."""
    taken: set[int] = set()
    ports = {name: _draw(taken, (0,)) for name in SINGLE_PORTS}
    for name in SEAWEED_HTTP_PORTS:
        ports[name] = _draw(taken, (0, GRPC_OFFSET))
        ports[f"{name}_grpc"] = ports[name] + GRPC_OFFSET
    return ports


def load_or_allocate(path: Path) -> dict[str, int]:
    """Return the ports remembered in `path`, choosing and saving them on first use."""
    expected = {*SINGLE_PORTS, *SEAWEED_HTTP_PORTS, *(f"{n}_grpc" for n in SEAWEED_HTTP_PORTS)}
    remembered = load(path)
    if remembered is not None and set(remembered) == expected:
        return remembered
    ports = allocate()
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(ports, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return ports


def load(path: Path) -> dict[str, int] | None:
    """Return the ports remembered in `path`, or None when there are none yet."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path}: {exc}; delete it to choose new ports") from exc
    if not isinstance(raw, dict) or not all(isinstance(port, int) for port in raw.values()):
        raise StackError(f"{path} is not a map of names to ports; delete it to choose new ports")
    return {str(name): int(port) for name, port in raw.items()}


def require_free(service: str, ports: Iterable[int], *, ports_file: Path) -> None:
    """Fail with a clear message if any of `service`'s remembered ports stays in use."""
    wanted = list(ports)
    # A server that was just killed may hold its sockets for a moment longer.
    wait_until(lambda: all(port_is_free(port) for port in wanted), timeout_seconds=RELEASE_SECONDS)
    busy = sorted(port for port in wanted if not port_is_free(port))
    if busy:
        listing = ", ".join(str(port) for port in busy)
        raise PortTakenError(
            f"{service} cannot start: port(s) {listing} on {LOOPBACK} are used by another "
            f"program; stop it, or stop the stack and delete {ports_file} to choose new ports"
        )


def iter_listening_ports(pid: int) -> Iterator[tuple[str, int]]:
    """Yield (address, port) of every TCP socket `pid` listens on, from /proc."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().as_posix()
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                # State 0A is LISTEN; field 9 is the socket inode.
                if fields[3] == "0A" and fields[9] in inodes:
                    address, port = fields[1].split(":")
                    yield _decode_address(address, width), int(port, 16)


def _decode_address(raw: str, width: int) -> str:
    """Turn /proc/net/tcp's little-endian hex address into text."""
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(raw)[::-1])
    words = [bytes.fromhex(raw[i : i + 8])[::-1] for i in range(0, 32, 8)]
    return socket.inet_ntop(socket.AF_INET6, b"".join(words))
