"""The Prometheus exposition server of a worker machine: Dramatiq's metrics and the project's.

Runs as a Dramatiq fork process (see `workers.broker.WorkerMetrics`) and serves everything the
worker processes wrote into the shared multiprocess folder. It replaces Dramatiq's own server,
which binds 0.0.0.0 unless told otherwise: this one binds `dramatiq_prom_host`, 127.0.0.1 when
unset, on `dramatiq_prom_port` (9191, Dramatiq's default). Set `dramatiq_prom_host` to an
interface address on purpose when a scraper on another machine must reach it. Worker groups on
one machine share `dramatiq_prom_db`, so whichever binds the port first serves them all. Empty
that folder when the machine's workers start (prometheus-client's multiprocess rule).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from workers.metrics import use_multiprocess_dir

logger = logging.getLogger(__name__)

HOST_VARIABLE: Final = "dramatiq_prom_host"
PORT_VARIABLE: Final = "dramatiq_prom_port"
DEFAULT_HOST: Final = "127.0.0.1"  # loopback unless an operator opens it on purpose
DEFAULT_PORT: Final = 9191  # Dramatiq's default, so existing scrape configs keep working


def address(environ: Mapping[str, str]) -> tuple[str, int]:
    """Return the host and port the exposition server binds."""
    host = environ.get(HOST_VARIABLE) or DEFAULT_HOST
    port = int(environ.get(PORT_VARIABLE) or DEFAULT_PORT)
    return host, port


def render(folder: str) -> tuple[bytes, str]:
    """Return every metric written into `folder` in the text exposition format."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Handler(BaseHTTPRequestHandler):
    folder = ""

    def do_GET(self) -> None:
        """Serve the metrics."""
        body, content_type = render(self.folder)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Log requests at debug level, not on stderr."""
        logger.debug(format, *args)


def serve() -> int:
    """Serve the metrics until the process is stopped (a Dramatiq fork function)."""
    environ = os.environ  # noqa: TID251 - a fork process's entry point
    folder = use_multiprocess_dir(environ, environ)
    host, port = address(environ)
    handler = type("Handler", (_Handler,), {"folder": folder})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        # Another worker group on this machine serves the same folder already (the workers go
        # on without this process either way).
        logger.error("worker metrics not served on %s:%d: %s", host, port, exc)
        return 1
    logger.info("serving worker metrics from %s on http://%s:%d/", folder, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
