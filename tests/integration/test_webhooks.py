"""Webhook calls to a real HTTP receiver on 127.0.0.1: signed, retried with backoff, and made by
the worker's job functions when an export or its verification fails."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.runtime import Runtime
from workers.user_export import run_user_export
from workers.verification import run_verification
from workers.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookNotifier,
    http_transport,
    notifier_for,
    sign,
    signature_valid,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SECRET = "a-webhook-secret-of-forty-characters-0123"
ROW: dict[str, Any] = {
    "id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    "export_type": "user",
    "user_id": uuid.UUID("00000000-0000-4000-8000-000000000002"),
    "format": "csv",
    "compression": "zstd",
    "status": "failed",
    "error_code": "too_large",
    "error_message": "the export exceeds EXPORT_MAX_SIZE",
    "verification_status": "pending",
}


@dataclass
class Receiver:
    """Answers each call with the next planned status (then 204) and keeps what it got."""

    planned: list[int]
    url: str = ""
    calls: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver(planned=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.calls.append(({k.lower(): v for k, v in self.headers.items()}, body, time.time()))
            self.send_response(got.planned.pop(0) if got.planned else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


def test_failed_export_is_posted_signed_with_the_shared_secret(receiver: Receiver) -> None:
    notifier = WebhookNotifier(receiver.url, SECRET)
    notifier.export_failed(ROW)
    assert notifier.flush(10)
    ((headers, body, _),) = receiver.calls
    assert signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    assert not signature_valid("x" * 40, headers[SIGNATURE_HEADER.lower()], body)
    assert not signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body + b" ")
    event = json.loads(body)
    assert event["event"] == headers[EVENT_HEADER.lower()] == "export.failed"
    assert event["deliveryId"] == headers[DELIVERY_HEADER.lower()]
    assert event["export"]["id"] == str(ROW["id"])
    assert event["export"]["error"] == {"code": "too_large", "message": ROW["error_message"]}
    assert headers["content-type"] == "application/json"


def test_receiver_errors_are_retried_with_growing_delays_under_one_delivery_id(
    receiver: Receiver,
) -> None:
    receiver.planned = [503, 500, 429]
    notifier = WebhookNotifier(receiver.url, SECRET, backoff_seconds=(0.2, 0.4, 0.8))
    notifier.verification_failed(
        {**ROW, "status": "completed", "verification_status": "failed"},
        {"problems": [{"code": "digest", "message": "stored SHA-256 differs"}] * 7,
         "problemsOmitted": 3},
    )  # fmt: skip
    assert notifier.flush(10)
    assert len(receiver.calls) == 4
    deliveries = {headers[DELIVERY_HEADER.lower()] for headers, _, _ in receiver.calls}
    assert len(deliveries) == 1
    gaps = [b[2] - a[2] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert gaps[0] >= 0.15
    assert gaps[1] >= 0.35
    assert gaps[2] >= 0.7
    event = json.loads(receiver.calls[-1][1])
    assert event["event"] == "verification.failed"
    assert len(event["problems"]) == 5
    assert event["problemCount"] == 10


def test_a_refusing_receiver_is_not_retried(receiver: Receiver) -> None:
    receiver.planned = [400]
    notifier = WebhookNotifier(receiver.url, SECRET, backoff_seconds=(0.1, 0.1))
    notifier.export_failed(ROW)
    assert notifier.flush(10)
    assert len(receiver.calls) == 1


def test_an_unreachable_receiver_is_given_up_after_the_last_retry() -> None:
    attempts: list[float] = []

    def unreachable(url: str, body: bytes, headers: Any) -> int:
        attempts.append(time.monotonic())
        return http_transport("http://127.0.0.1:9/hooks", body, headers)  # discard port

    notifier = WebhookNotifier("http://127.0.0.1:9/hooks", SECRET, transport=unreachable,
                               backoff_seconds=(0.05, 0.05))  # fmt: skip
    notifier.export_failed(ROW)
    assert notifier.flush(10)
    assert len(attempts) == 3


def test_stale_signatures_are_rejected() -> None:
    body = b'{"event": "export.failed"}'
    header = sign(SECRET, 1_000_000, body)
    assert signature_valid(SECRET, header, body, now=1_000_100)
    assert not signature_valid(SECRET, header, body, now=1_000_000 + 3600)
    assert not signature_valid(SECRET, "v1=abc", body)


def test_no_url_means_no_calls() -> None:
    notifier = notifier_for(None, SECRET)
    notifier.export_failed(ROW)  # nothing to send, nothing raised
    assert not isinstance(notifier, WebhookNotifier)


@dataclass
class _Queue:
    verifications: list[str] = field(default_factory=list)

    def enqueue_shard(self, export_id: str, shard_id: str) -> None:
        raise AssertionError("no bulk export here")

    def enqueue_verification(self, export_id: str) -> None:
        self.verifications.append(export_id)


def _runtime(env: dict[str, str], bucket: str, receiver: Receiver, **extra: str) -> Runtime:
    info = psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"])
    user = info.get("user", "postgres")
    url = f"postgresql://{user}@{info['host']}:{info['port']}/{info['dbname']}"
    settings = Settings.from_env(
        {**env, "DATABASE_URL": url, "S3_BUCKET": bucket, "WEBHOOK_URL": receiver.url,
         "WEBHOOK_SECRET": SECRET, **extra}
    )  # fmt: skip
    return Runtime(settings, WorkerSettings(lease_seconds=10), s3_client_from_settings(settings),
                   _Queue())  # fmt: skip


def _user_export(runtime: Runtime, *, most_files: bool) -> str:
    with connect(runtime.settings.database_url) as conn:
        seed_database(conn, users=6, max_files=300, seed=3, files=400)
        order = "DESC" if most_files else "ASC"
        user = conn.execute(
            "SELECT u.id::text FROM users u LEFT JOIN files f ON f.owner_id = u.id"
            f" GROUP BY u.id ORDER BY count(f.id) {order}, u.id LIMIT 1"
        ).fetchone()
        assert user is not None
        options = parse_options("json", {"compression": "none"}, default_compression="zstd")
        created = create_export(conn, NewExport(user[0], "user", options))
        conn.commit()
    return str(created.row["id"])


def _events(receiver: Receiver, notifier: Any) -> list[dict[str, Any]]:
    assert notifier.flush(10)
    for headers, body, _ in receiver.calls:
        assert signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    return [json.loads(body) for _, body, _ in receiver.calls]


def test_user_export_that_fails_calls_the_webhook(
    settings_env: dict[str, str], s3_bucket: str, receiver: Receiver
) -> None:
    runtime = _runtime(settings_env, s3_bucket, receiver, EXPORT_MAX_SIZE="20000")
    export_id = _user_export(runtime, most_files=True)
    assert run_user_export(runtime, export_id) is Outcome.FAILED
    (event,) = _events(receiver, runtime.webhooks)
    assert event["event"] == "export.failed"
    assert event["export"]["id"] == export_id
    assert event["export"]["status"] == "failed"


def test_verification_that_fails_calls_the_webhook_and_a_pass_does_not(
    settings_env: dict[str, str], s3_bucket: str, s3_client: S3Client, receiver: Receiver
) -> None:
    runtime = _runtime(settings_env, s3_bucket, receiver)
    export_id = _user_export(runtime, most_files=False)
    assert run_user_export(runtime, export_id) is Outcome.COMPLETED
    passed = run_verification(runtime, export_id)
    assert passed is not None
    assert passed.passed
    assert _events(receiver, runtime.webhooks) == []

    with connect(runtime.settings.database_url) as conn:
        key = conn.execute(
            "SELECT object_key FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert key is not None
    s3_client.put_object(Bucket=s3_bucket, Key=key[0], Body=b'{"tampered": true}')
    failed = run_verification(runtime, export_id)
    assert failed is not None
    assert not failed.passed
    (event,) = _events(receiver, runtime.webhooks)
    assert event["event"] == "verification.failed"
    assert event["export"]["verificationStatus"] == "failed"
    assert event["problemCount"] >= 1
