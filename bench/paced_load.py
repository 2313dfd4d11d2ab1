"""A paced HTTP load generator: requests on a fixed schedule, latency measured from the schedule.

Debian's `wrk` can only run closed loops (as fast as the server answers), so the API benchmark
uses this for runs at a fixed rate, as wrk2's `-R` does. Request `i` is due at `start + i / rate`;
each of `connections` threads owns one keep-alive connection and sends the requests
`i ≡ k (mod connections)`. Requests are encoded once and answers read with a minimal HTTP/1.1
reader (status line, headers, Content-Length body): `http.client` spends more CPU per answer
than the server under test does on a trivial endpoint, which on a 2-core machine distorts the
latency it means to measure. Latency is counted from the due time, not from when the request left,
so a server that falls behind shows its queueing delay (no coordinated omission). Loopback only;
bounded by `duration_seconds`. Not a test: it measures and reports.
"""

from __future__ import annotations

import io
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Seconds one request may take before it counts as an error; far above any latency of interest.
REQUEST_TIMEOUT_SECONDS = 10.0
# Seconds after the last due time that stragglers may still finish before the run ends.
DRAIN_SECONDS = 5.0
# Reconnections per wanted connection when spreading them over server processes; a handful
# suffices when workers race fairly, and the bound keeps a lopsided server from looping forever.
BALANCE_ATTEMPTS_PER_CONNECTION = 8
# Seconds an idle worker takes at most to accept a new loopback connection.
ACCEPT_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class PacedRequest:
    """One request to send: method, path, headers and body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None

    def encode(self, host: str, port: int) -> bytes:
        """Return the request as HTTP/1.1 bytes on a keep-alive connection."""
        headers = {"Host": f"{host}:{port}", **self.headers}
        if self.body is not None:
            headers["Content-Length"] = str(len(self.body))
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"{self.method} {self.path} HTTP/1.1\r\n{head}\r\n".encode() + (self.body or b"")


class AnswerError(Exception):
    """The server's answer could not be read as a Content-Length HTTP/1.1 response."""


def read_answer(reader: io.BufferedReader) -> int:
    """Read one response from a buffered socket reader; return its status code."""
    status_line = reader.readline()
    if not status_line:
        raise AnswerError("connection closed")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while True:
        line = reader.readline()
        if line in {b"\r\n", b"\n", b""}:
            break
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value)
        elif lowered == b"transfer-encoding":
            raise AnswerError("chunked answers are not read by this generator")
    if length and len(reader.read(length)) != length:
        raise AnswerError("connection closed inside a body")
    return status


class _Client:
    """One keep-alive connection that reconnects after a failed exchange."""

    def __init__(self, host: str, port: int) -> None:
        self._address = (host, port)
        self._connect()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self._address, timeout=REQUEST_TIMEOUT_SECONDS)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._sock.makefile("rb")

    def exchange(self, request: bytes) -> bool:
        """Send one request and read its answer; True for a status below 400."""
        try:
            self._sock.sendall(request)
            return read_answer(self._reader) < 400
        except (OSError, ValueError, AnswerError):
            self.close()
            self._connect()
            return False

    @property
    def local_port(self) -> int:
        """Return this end's port, by which the server side of the connection is found."""
        port: int = self._sock.getsockname()[1]
        return port

    def close(self) -> None:
        """Close the connection."""
        self._reader.close()
        self._sock.close()


def open_clients(
    host: str, port: int, count: int, *, owner_of: Callable[[int], int | None] | None, owners: int
) -> list[_Client]:
    """Open `count` connections; with `owner_of`, spread them evenly over `owners` processes.

    A pre-forked server (gunicorn) hands each connection to whichever worker accepts it first,
    and a burst of connections from one client often lands on a single worker, which then
    serves everything while the others idle. Many independent clients do not do that, so the
    generator keeps a connection only while its owner (`owner_of(local_port)`, a pid) has fewer
    than its share, reconnecting otherwise, within a bounded number of attempts.
    """
    share = math.ceil(count / max(1, owners))
    kept: list[_Client] = []
    spare: list[_Client] = []
    held: dict[int, int] = {}
    for _ in range(count * BALANCE_ATTEMPTS_PER_CONNECTION):
        if len(kept) == count:
            break
        client = _Client(host, port)
        owner = None if owner_of is None else _wait_for_owner(owner_of, client.local_port)
        if owner is None or held.get(owner, 0) < share:
            kept.append(client)
            if owner is not None:
                held[owner] = held.get(owner, 0) + 1
        else:
            spare.append(client)  # held open, so the next accept is not its worker's again
    for client in spare:
        client.close()
    while len(kept) < count:  # attempts ran out: accept the imbalance rather than fail the run
        kept.append(_Client(host, port))
    return kept


def _wait_for_owner(owner_of: Callable[[int], int | None], local_port: int) -> int | None:
    """Return the accepting process of a new connection once a worker has accepted it."""
    deadline = time.monotonic() + ACCEPT_WAIT_SECONDS
    while time.monotonic() < deadline:
        owner = owner_of(local_port)
        if owner is not None:
            return owner
        time.sleep(0.005)
    return None


@dataclass
class PacedResult:
    """What a paced run measured."""

    target_rate: float
    duration_seconds: float
    sent: int = 0
    errors: int = 0
    # Milliseconds from each request's due time to its complete answer, in completion order.
    latencies_ms: list[float] = field(default_factory=list)
    # Milliseconds a request left after its due time: waiting for the answer to the previous
    # request on its connection (the server's doing) plus the generator's own delay.
    late_ms: list[float] = field(default_factory=list)
    # Milliseconds a request left after it could have: after its due time or, if later, the
    # previous answer on its connection. Only the generator's own delay (scheduling, CPU).
    own_delay_ms: list[float] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        """Return the requests answered per second of the schedule."""
        return len(self.latencies_ms) / self.duration_seconds

    def percentile_ms(self, percent: float) -> float:
        """Return the nearest-rank percentile of the latencies, in milliseconds."""
        return percentile(self.latencies_ms, percent)


def percentile(values: Sequence[float], percent: float) -> float:
    """Return the nearest-rank percentile of `values` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def run_paced(
    host: str,
    port: int,
    requests: Sequence[PacedRequest],
    *,
    rate_per_second: float,
    duration_seconds: float,
    connections: int,
    owner_of: Callable[[int], int | None] | None = None,
    owners: int = 1,
) -> PacedResult:
    """Send `requests` round-robin at a fixed rate for a bounded time and measure the latency.

    `owner_of` and `owners` spread the connections over the server's processes (`open_clients`).
    """
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"the load generator targets loopback only, not {host!r}")
    if not requests or rate_per_second <= 0 or connections < 1:
        raise ValueError("need requests, a positive rate and at least one connection")
    total = int(rate_per_second * duration_seconds)
    result = PacedResult(target_rate=rate_per_second, duration_seconds=duration_seconds)
    lock = threading.Lock()
    encoded = [request.encode(host, port) for request in requests]
    clients = open_clients(host, port, connections, owner_of=owner_of, owners=owners)
    # Start a little ahead so every thread is waiting when the first request is due.
    start = time.monotonic() + 0.2
    deadline = start + duration_seconds + DRAIN_SECONDS

    def worker(first: int) -> None:
        latencies: list[float] = []
        late: list[float] = []
        own: list[float] = []
        errors = 0
        client = clients[first]
        answered = start
        try:
            for index in range(first, total, connections):
                due = start + index / rate_per_second
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sent_at = time.monotonic()
                if sent_at > deadline:
                    errors += 1
                    continue
                late.append((sent_at - due) * 1000)
                own.append((sent_at - max(due, answered)) * 1000)
                ok = client.exchange(encoded[index % len(encoded)])
                answered = time.monotonic()
                if ok:
                    latencies.append((answered - due) * 1000)
                else:
                    errors += 1
        finally:
            client.close()
            with lock:
                result.sent += len(late)
                result.errors += errors
                result.latencies_ms.extend(latencies)
                result.late_ms.extend(late)
                result.own_delay_ms.extend(own)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + REQUEST_TIMEOUT_SECONDS)
    return result
