"""Webhook calls from the `webhook_deliveries` outbox to a real HTTP receiver on 127.0.0.1: owed in
the transaction that fails an export, signed, retried with backoff, given up with a reason, never
lost when a sender is killed mid-call, sent once by concurrent senders, and owed by the worker's
job functions when an export or its verification fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from api_support import add_user

from exportctl.seeding import seed_database
from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import parse_options
from pipelines.settings import Settings
from pipelines.storage.client import s3_client_from_settings
from workers.attempt import Outcome
from workers.config import WorkerSettings
from workers.maintenance import deliver_webhooks
from workers.runtime import Runtime
from workers.user_export import run_user_export
from workers.verification import run_verification
from workers.webhook_outbox import WebhookOutbox, outbox_for
from workers.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    event_body,
    http_transport,
    sign,
    signature_valid,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "a-webhook-secret-of-forty-characters-0123"
ROW: dict[str, Any] = {
    "id": "00000000-0000-4000-8000-000000000001",
    "export_type": "user",
    "user_id": "00000000-0000-4000-8000-000000000002",
    "format": "csv",
    "compression": "zstd",
    "status": "completed",
    "error_code": None,
    "error_message": None,
    "verification_status": "failed",
    "verification_report": {
        "problems": [{"code": "digest", "message": "stored SHA-256 differs"}] * 7,
        "problemsOmitted": 3,
    },
}


@dataclass
class Receiver:
    """Answers each call with the next planned status (then 204) and keeps what it got.

    With `hold_first` set, the first call gets no answer until `release` is set.
    """

    planned: list[int]
    url: str = ""
    hold_first: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)

    def wait_for_calls(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, f"{len(self.calls)} of {count} calls arrived"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver(planned=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.calls.append(({k.lower(): v for k, v in self.headers.items()}, body, time.time()))
            if got.hold_first and len(got.calls) == 1:
                got.release.wait(30)
            self.send_response(got.planned.pop(0) if got.planned else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield got
    finally:
        got.release.set()
        server.shutdown()
        server.server_close()


def _connector(url: str) -> Any:
    return lambda: connect(url, autocommit=True)


@pytest.fixture
def senders() -> Iterator[list[WebhookOutbox]]:
    """Senders a test made, each stopped before its database is dropped."""
    made: list[WebhookOutbox] = []
    yield made
    for sender in made:
        sender.stop()


@pytest.fixture
def make_outbox(
    database_url: str, receiver: Receiver, senders: list[WebhookOutbox]
) -> Callable[..., WebhookOutbox]:
    def make(**options: Any) -> WebhookOutbox:
        outbox = WebhookOutbox(receiver.url, SECRET, _connector(database_url), **options)
        senders.append(outbox)
        return outbox

    return make


def _failed_exports(database_url: str, count: int = 1) -> list[str]:
    """Create `count` exports and fail them, committed: each owes one call."""
    ids = []
    user = str(add_user(database_url))
    with connect(database_url) as conn:
        options = parse_options("csv", {"compression": "zstd"}, default_compression="zstd")
        for _ in range(count):
            row = create_export(conn, NewExport(user, "user", options)).row
            _fail(conn, str(row["id"]))
            ids.append(str(row["id"]))
        conn.commit()
    return ids


def _fail(conn: psycopg.Connection[Any], export_id: str) -> None:
    conn.execute(
        "UPDATE data_exports SET status = 'failed', error_code = 'too_large',"
        " error_message = 'the export exceeds EXPORT_MAX_SIZE', finished_at = now()"
        " WHERE id = %s",
        (export_id,),
    )


def _deliveries(database_url: str) -> list[dict[str, Any]]:
    with connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT id::text, event, export_id::text, attempts, delivered_at, abandoned_at,"
            " last_error, next_attempt_at FROM webhook_deliveries ORDER BY occurred_at, id"
        ).fetchall()


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    for headers, body, _ in receiver.calls:
        assert signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    return [json.loads(body) for _, body, _ in receiver.calls]


def test_failing_an_export_owes_one_call_written_in_the_same_transaction(
    database_url: str,
) -> None:
    (export_id,) = _failed_exports(database_url)
    with connect(database_url) as conn:
        conn.execute("UPDATE data_exports SET status = 'queued' WHERE id = %s", (export_id,))
        _fail(conn, export_id)
        conn.rollback()  # a failure that did not commit owes nothing
        conn.execute(
            "UPDATE data_exports SET error_message = 'reworded', updated_at = now() WHERE id = %s",
            (export_id,),
        )  # still failed: no new event
        conn.commit()
    (owed,) = _deliveries(database_url)
    assert owed["event"] == "export.failed"
    assert owed["export_id"] == export_id
    assert owed["attempts"] == 0
    assert owed["delivered_at"] is None


def test_an_owed_call_is_posted_signed_and_recorded_delivered(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    (export_id,) = _failed_exports(database_url)
    assert make_outbox().deliver_due() == 1
    ((headers, body, _),) = receiver.calls
    assert signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body)
    assert not signature_valid("x" * 40, headers[SIGNATURE_HEADER.lower()], body)
    assert not signature_valid(SECRET, headers[SIGNATURE_HEADER.lower()], body + b" ")
    event = json.loads(body)
    (owed,) = _deliveries(database_url)
    assert event["event"] == headers[EVENT_HEADER.lower()] == "export.failed"
    assert event["deliveryId"] == headers[DELIVERY_HEADER.lower()] == owed["id"]
    assert event["export"]["id"] == export_id
    assert event["export"]["status"] == "failed"
    assert event["export"]["error"] == {
        "code": "too_large",
        "message": "the export exceeds EXPORT_MAX_SIZE",
    }
    assert headers["content-type"] == "application/json"
    assert owed["delivered_at"] is not None
    assert owed["attempts"] == 1
    assert make_outbox().deliver_due() == 0  # delivered calls are not resent


def test_receiver_errors_are_retried_with_growing_delays_under_one_delivery_id(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    receiver.planned = [503, 500, 429]
    _failed_exports(database_url)
    outbox = make_outbox(backoff_seconds=(0.3, 0.6, 1.2))
    assert outbox.flush(15)  # the sender thread retries on its own
    assert len(receiver.calls) == 4
    deliveries = {headers[DELIVERY_HEADER.lower()] for headers, _, _ in receiver.calls}
    assert len(deliveries) == 1
    gaps = [b[2] - a[2] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert gaps[0] >= 0.25
    assert gaps[1] >= 0.55
    assert gaps[2] >= 1.15
    (owed,) = _deliveries(database_url)
    assert owed["attempts"] == 4
    assert owed["delivered_at"] is not None
    assert owed["last_error"] is None


def test_a_refusing_receiver_is_given_up_at_once_with_the_reason(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    receiver.planned = [400]
    _failed_exports(database_url)
    outbox = make_outbox(backoff_seconds=(0.1,))
    assert outbox.flush(10)
    assert len(receiver.calls) == 1
    (owed,) = _deliveries(database_url)
    assert owed["delivered_at"] is None
    assert owed["abandoned_at"] is not None
    assert owed["last_error"] == "the receiver answered 400"


def test_an_unreachable_receiver_keeps_the_call_owed_with_the_error(database_url: str) -> None:
    _failed_exports(database_url)
    outbox = WebhookOutbox(
        "http://127.0.0.1:9/hooks", SECRET, _connector(database_url), backoff_seconds=(60.0,)
    )  # fmt: skip  (port 9: discard)
    assert outbox.deliver_due() == 1
    (owed,) = _deliveries(database_url)
    assert owed["delivered_at"] is None
    assert owed["abandoned_at"] is None
    assert "unreachable" in owed["last_error"]
    assert owed["next_attempt_at"] > datetime.now(UTC)
    assert outbox.deliver_due() == 0  # not due again for a minute


def test_a_call_owed_for_over_a_day_is_given_up_unsent_until_asked_for_again(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    _failed_exports(database_url)
    with connect(database_url) as conn:
        conn.execute("UPDATE webhook_deliveries SET owed_since = now() - interval '2 days'")
        conn.commit()
    assert make_outbox().deliver_due() == 1
    assert receiver.calls == []
    (owed,) = _deliveries(database_url)
    assert owed["abandoned_at"] is not None
    assert owed["last_error"] == "not delivered within 86400 s of becoming owed"

    with connect(database_url) as conn:  # an operator asks for it again
        conn.execute(
            "UPDATE webhook_deliveries SET abandoned_at = NULL, owed_since = now(),"
            " next_attempt_at = now()"
        )
        conn.commit()
    assert make_outbox().deliver_due() == 1
    (event,) = _events(receiver)
    assert event["deliveryId"] == owed["id"]
    assert _deliveries(database_url)[0]["delivered_at"] is not None


def test_a_sender_killed_mid_call_leaves_the_call_to_the_next_sender(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    receiver.hold_first = True
    _failed_exports(database_url)
    script = textwrap.dedent(
        f"""
        from pipelines.database import connect
        from workers.webhook_outbox import WebhookOutbox
        WebhookOutbox({receiver.url!r}, {SECRET!r},
                      lambda: connect({database_url!r}, autocommit=True),
                      claim_seconds=3.0).deliver_due()
        """
    )
    sender = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    try:
        receiver.wait_for_calls(1, timeout=30)
    finally:
        os.kill(sender.pid, signal.SIGKILL)
        sender.wait(10)
    outbox = make_outbox()
    assert outbox.deliver_due() == 0  # the dead sender's claim still holds the call
    time.sleep(3.1)
    assert outbox.deliver_due() == 1
    receiver.wait_for_calls(2)
    first, second = (headers[DELIVERY_HEADER.lower()] for headers, _, _ in receiver.calls)
    assert first == second  # the receiver can drop the duplicate
    (owed,) = _deliveries(database_url)
    assert owed["attempts"] == 2
    assert owed["delivered_at"] is not None


def test_concurrent_senders_send_each_call_once(
    database_url: str, receiver: Receiver, make_outbox: Callable[..., WebhookOutbox]
) -> None:
    exports = _failed_exports(database_url, count=30)
    three = [make_outbox() for _ in range(3)]
    attempted: list[int] = []
    threads = [threading.Thread(target=lambda s=s: attempted.append(s.deliver_due()))
               for s in three]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(attempted) == 30
    events = _events(receiver)
    assert len(events) == 30
    assert sorted(event["export"]["id"] for event in events) == sorted(exports)
    assert all(owed["attempts"] == 1 for owed in _deliveries(database_url))


def test_the_maintenance_sweep_sends_calls_nobody_woke_for_and_prunes_old_ones(
    settings_env: dict[str, str], s3_bucket: str, receiver: Receiver, senders: list[WebhookOutbox]
) -> None:
    runtime = _runtime(settings_env, s3_bucket, receiver, senders)
    _failed_exports(runtime.settings.database_url, count=2)
    with connect(runtime.settings.database_url) as conn:
        conn.execute(
            "UPDATE webhook_deliveries SET occurred_at = now() - interval '31 days'"
            " WHERE id = (SELECT min(id::text)::uuid FROM webhook_deliveries)"
        )
        conn.commit()
    assert deliver_webhooks(runtime) == 1  # the recent one; the old one is gone unsent
    assert len(receiver.calls) == 1
    (kept,) = _deliveries(runtime.settings.database_url)
    assert kept["delivered_at"] is not None


def test_verification_failure_names_its_first_problems_and_counts_all() -> None:
    occurred = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    event = json.loads(event_body("verification.failed", "d-1", occurred, ROW))
    assert event["occurredAt"] == "2026-11-28T03:00:00+00:00"
    assert event["export"]["verificationStatus"] == "failed"
    assert len(event["problems"]) == 5
    assert event["problemCount"] == 10


def test_stale_signatures_are_rejected() -> None:
    body = b'{"event": "export.failed"}'
    header = sign(SECRET, 1_000_000, body)
    assert signature_valid(SECRET, header, body, now=1_000_100)
    assert not signature_valid(SECRET, header, body, now=1_000_000 + 3600)
    assert not signature_valid(SECRET, "v1=abc", body)


def test_no_url_means_no_sender(database_url: str) -> None:
    _failed_exports(database_url)
    outbox = outbox_for(None, SECRET, _connector(database_url))
    assert not isinstance(outbox, WebhookOutbox)
    assert outbox.deliver_due() == 0
    (owed,) = _deliveries(database_url)
    assert owed["attempts"] == 0  # kept owed: a webhook configured within a day still gets it


def test_http_transport_reports_an_unreachable_receiver_as_retryable() -> None:
    from pipelines.errors import RetryableError

    with pytest.raises(RetryableError, match="unreachable"):
        http_transport("http://127.0.0.1:9/hooks", b"{}", {})


@dataclass
class _Queue:
    verifications: list[str] = field(default_factory=list)

    def enqueue_shard(self, export_id: str, shard_id: str) -> None:
        raise AssertionError("no bulk export here")

    def enqueue_verification(self, export_id: str) -> None:
        self.verifications.append(export_id)


def _runtime(
    env: dict[str, str],
    bucket: str,
    receiver: Receiver,
    senders: list[WebhookOutbox],
    **extra: str,
) -> Runtime:
    info = psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"])
    user = info.get("user", "postgres")
    url = f"postgresql://{user}@{info['host']}:{info['port']}/{info['dbname']}"
    settings = Settings.from_env(
        {**env, "DATABASE_URL": url, "S3_BUCKET": bucket, "WEBHOOK_URL": receiver.url,
         "WEBHOOK_SECRET": SECRET, **extra}
    )  # fmt: skip
    runtime = Runtime(settings, WorkerSettings(lease_seconds=10),
                      s3_client_from_settings(settings), _Queue())  # fmt: skip
    assert isinstance(runtime.webhooks, WebhookOutbox)
    senders.append(runtime.webhooks)
    return runtime


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


def _sent(runtime: Runtime, receiver: Receiver) -> list[dict[str, Any]]:
    """Wait for the worker's sender thread to deliver every owed call; return the events."""
    assert isinstance(runtime.webhooks, WebhookOutbox)
    assert runtime.webhooks.flush(10)
    return _events(receiver)


def test_user_export_that_fails_calls_the_webhook(
    settings_env: dict[str, str], s3_bucket: str, receiver: Receiver, senders: list[WebhookOutbox]
) -> None:
    runtime = _runtime(settings_env, s3_bucket, receiver, senders, EXPORT_MAX_SIZE="20000")
    export_id = _user_export(runtime, most_files=True)
    assert run_user_export(runtime, export_id) is Outcome.FAILED
    (event,) = _sent(runtime, receiver)
    assert event["event"] == "export.failed"
    assert event["export"]["id"] == export_id
    assert event["export"]["status"] == "failed"
    assert event["export"]["error"]["code"] == "size_limit"


def test_verification_that_fails_calls_the_webhook_and_a_pass_does_not(
    settings_env: dict[str, str],
    s3_bucket: str,
    s3_client: S3Client,
    receiver: Receiver,
    senders: list[WebhookOutbox],
) -> None:
    runtime = _runtime(settings_env, s3_bucket, receiver, senders)
    export_id = _user_export(runtime, most_files=False)
    assert run_user_export(runtime, export_id) is Outcome.COMPLETED
    passed = run_verification(runtime, export_id)
    assert passed is not None
    assert passed.passed
    assert _sent(runtime, receiver) == []

    with connect(runtime.settings.database_url) as conn:
        key = conn.execute(
            "SELECT object_key FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert key is not None
    s3_client.put_object(Bucket=s3_bucket, Key=key[0], Body=b'{"tampered": true}')
    failed = run_verification(runtime, export_id)
    assert failed is not None
    assert not failed.passed
    (event,) = _sent(runtime, receiver)
    assert event["event"] == "verification.failed"
    assert event["export"]["id"] == export_id
    assert event["export"]["verificationStatus"] == "failed"
    assert event["problemCount"] == len(failed.problems) + failed.problems_omitted >= 1
    assert uuid.UUID(event["deliveryId"])
