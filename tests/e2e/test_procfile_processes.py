"""Every Procfile process under the supervisor: an export over HTTP, counted in /metrics of the
API and the workers; a failing export calls a local webhook receiver with a valid signature."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from worker_processes import as_url, free_port, fresh_redis_url, seed

from api.public_text import error_message
from exportctl.api_client import ApiClient
from exportctl.commands.token import mint_token
from exportctl.supervisor import Supervisor, load_procfile, with_bin_dir
from pipelines.database import connect
from workers.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signature_valid

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("web", "worker", "verifier", "scheduler")
WEBHOOK_SECRET = "webhook-secret-for-the-e2e-test-0123456789"
# Bytes: the small user's export fits, the large user's (hundreds of files) does not.
EXPORT_MAX_SIZE = 40_000
# Seconds for processes to start and exports to settle on a loaded machine.
READY_SECONDS = 60
SETTLE_SECONDS = 90


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every call it gets."""

    url: str
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            got.arrived.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/exports"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Running:
    """The supervised processes and how to reach them."""

    api_url: str
    worker_metrics: str
    secret: str
    small_user: str
    large_user: str
    lines: list[tuple[str, str]]


@pytest.fixture
def running(
    settings_env: dict[str, str], s3_bucket: str, redis_url: str, tmp_path: Path, receiver: Receiver
) -> Iterator[Running]:
    database_url = as_url(settings_env["DATABASE_URL"])
    seed(database_url, 12, max_files=600, files=1200)
    with connect(database_url) as conn:
        counts = conn.execute(
            "SELECT u.id::text FROM users u LEFT JOIN files f ON f.owner_id = u.id"
            " WHERE u.deleted_at IS NULL GROUP BY u.id ORDER BY count(f.id), u.id"
        ).fetchall()
    api_port, metrics_port = free_port(), free_port()
    env = with_bin_dir(
        {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            **settings_env,
            "DATABASE_URL": database_url,
            "REDIS_URL": fresh_redis_url(redis_url),
            "S3_BUCKET": s3_bucket,
            "EXPORT_MAX_SIZE": str(EXPORT_MAX_SIZE),
            "WEBHOOK_URL": receiver.url,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "LOG_FORMAT": "json",
            "API_BIND": f"127.0.0.1:{api_port}",
            "API_WORKERS": "1",
            "PYTHONUNBUFFERED": "1",
            "dramatiq_prom_host": "127.0.0.1",
        },
        ROOT / ".venv" / "bin",
    )
    lines: list[tuple[str, str]] = []
    supervisor = Supervisor(
        load_procfile(ROOT / "Procfile", required=PROCESSES),
        env=env,
        cwd=ROOT,
        sink=lambda name, line: lines.append((name, line)),
        extra_env={
            "worker": {
                "dramatiq_prom_port": str(metrics_port),
                "dramatiq_prom_db": str(tmp_path / "metrics-worker"),
            },
            "verifier": {
                "dramatiq_prom_port": str(free_port()),
                "dramatiq_prom_db": str(tmp_path / "metrics-verifier"),
            },
        },
    )
    supervisor.start(PROCESSES)
    try:
        api_url = f"http://127.0.0.1:{api_port}"
        _wait_ready(api_url, supervisor, lines)
        yield Running(
            api_url=api_url,
            worker_metrics=f"http://127.0.0.1:{metrics_port}/metrics",
            secret=settings_env["JWT_SECRET"],
            small_user=counts[0][0],
            large_user=counts[-1][0],
            lines=lines,
        )
    finally:
        died = supervisor.exited()
        supervisor.stop()
    assert died == [], _tail(lines)
    # SIGTERM is a clean stop for every process type.
    assert sorted(supervisor.exited()) == sorted((name, 0) for name in PROCESSES), _tail(lines)


def _wait_ready(api_url: str, supervisor: Supervisor, lines: list[tuple[str, str]]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert supervisor.exited() == [], _tail(lines)
        conn = http.client.HTTPConnection(api_url.removeprefix("http://"), timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    pytest.fail(f"the API never got ready:\n{_tail(lines)}")


def _tail(lines: list[tuple[str, str]]) -> str:
    return "\n".join(f"{name} | {line}" for name, line in lines[-60:])


def _settle(client: ApiClient, export_id: str, lines: list[tuple[str, str]]) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        export: dict[str, Any] = client.get(f"/api/exports/{export_id}/status")["export"]
        if export["status"] == "failed" or export["verification"]["status"] != "pending":
            return export
        time.sleep(0.3)
    pytest.fail(f"export {export_id} never settled:\n{_tail(lines)}")


def _samples(url: str) -> list[Any]:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback http
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    return sum(
        float(sample.value)
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_procfile_processes_count_an_export_in_metrics_and_call_the_webhook_on_failure(
    running: Running, receiver: Receiver, tmp_path: Path
) -> None:
    # One set of processes for both checks: starting them is most of this test's time.
    client = ApiClient(running.api_url, mint_token(running.secret, running.small_user))
    created = client.post(
        "/api/exports/user", {"format": "csv", "options": {"compression": "zstd"}}
    )
    export = _settle(client, created["export"]["id"], running.lines)
    assert export["status"] == "completed", export
    assert export["verification"]["status"] == "passed", export

    saved = client.download(export["id"], tmp_path / "out", expected_sha256=export["sha256"])
    assert saved.size_bytes == export["sizeBytes"]

    api = _samples(f"{running.api_url}/metrics")
    assert _value(api, "data_export_completed_last_24h") == 1
    assert _value(api, "data_export_http_requests_total", status="202") >= 1
    # The verifier's message counts reach the worker's exposition only through the folder it
    # shares: the export itself is counted by the worker that wrote it.
    worker = _samples(running.worker_metrics)
    assert _value(worker, "data_export_exports_total", status="completed", format="csv") == 1
    assert _value(worker, "data_export_rows_total", format="csv") == export["recordCount"]
    assert _value(worker, "dramatiq_messages_total", actor_name="export_user") >= 1
    assert receiver.calls == []  # nothing failed yet

    large = ApiClient(running.api_url, mint_token(running.secret, running.large_user))
    created = large.post(
        "/api/exports/user", {"format": "json", "options": {"compression": "none"}}
    )
    export = _settle(large, created["export"]["id"], running.lines)
    assert export["status"] == "failed", export

    assert receiver.arrived.wait(timeout=30), _tail(running.lines)
    headers, body = receiver.calls[0]
    assert signature_valid(WEBHOOK_SECRET, headers[SIGNATURE_HEADER.lower()], body)
    other_secret = "another-secret-of-the-same-length-0123456789"
    assert not signature_valid(other_secret, headers[SIGNATURE_HEADER.lower()], body)
    event = json.loads(body)
    assert headers[EVENT_HEADER.lower()] == event["event"] == "export.failed"
    assert headers[DELIVERY_HEADER.lower()] == event["deliveryId"]
    assert event["export"]["id"] == export["id"]
    # The receiver is the operator's: it gets the raw cause, which clients never see.
    assert event["export"]["error"]["code"] == export["error"]["code"] == "size_limit"
    assert export["error"]["message"] == error_message("size_limit")
    assert "EXPORT_MAX_SIZE" in event["export"]["error"]["message"]
