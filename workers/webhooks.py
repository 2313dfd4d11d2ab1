"""Call the operator's webhook when an export fails or fails verification.

Each call POSTs a small JSON document (ids, status, reason; never export data) signed with
HMAC-SHA256 of `<timestamp>.<body>` under WEBHOOK_SECRET, sent as `X-Export-Signature:
t=<unix seconds>,v1=<hex>`. Calls leave on one background thread per process, so a slow or dead
receiver never holds up a job; a failed call is retried with exponential backoff under the same
delivery id, so a receiver can drop duplicates. At exit a process waits briefly for pending calls.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import http.client
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import orjson

from pipelines.errors import PermanentError, RetryableError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Export-Signature"
EVENT_HEADER: Final = "X-Export-Event"
DELIVERY_HEADER: Final = "X-Export-Delivery"
EXPORT_FAILED: Final = "export.failed"
VERIFICATION_FAILED: Final = "verification.failed"
# Seconds to wait before each retry: five retries over about half a minute ride out a receiver's
# restart without keeping a dying process busy for long.
BACKOFF_SECONDS: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
# Seconds one call may take: a receiver should only store the event and answer.
REQUEST_TIMEOUT_SECONDS: Final = 5.0
# Calls waiting to be sent per process; beyond it new events are logged and dropped, so a dead
# receiver cannot grow a worker's memory without bound.
MAX_PENDING: Final = 1000
# Seconds a stopping process waits for pending calls.
EXIT_WAIT_SECONDS: Final = 5.0
# Seconds a receiver should accept between the signed timestamp and its clock (replay window).
SIGNATURE_TOLERANCE_SECONDS: Final = 300
# Problems of a failed verification named in the call; the rest are counted.
NAMED_PROBLEMS: Final = 5

Transport = Callable[[str, bytes, Mapping[str, str]], int]


class Notifier(Protocol):
    """What the job functions call when something failed."""

    def export_failed(self, row: Mapping[str, Any]) -> None:
        """Report an export that ended failed."""

    def verification_failed(self, row: Mapping[str, Any], report: Mapping[str, Any]) -> None:
        """Report an export whose verification failed."""


class NullNotifier:
    """No webhook configured: every event is dropped."""

    def export_failed(self, row: Mapping[str, Any]) -> None:
        """Drop the event."""

    def verification_failed(self, row: Mapping[str, Any], report: Mapping[str, Any]) -> None:
        """Drop the event."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def signature_valid(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """Return whether `header` signs `body` with `secret` recently enough (for receivers)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def export_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a call says about an export: ids, type, format, status and the reason."""
    return {
        "id": str(row["id"]),
        "type": row["export_type"],
        "userId": str(row["user_id"]),
        "format": row["format"],
        "compression": row["compression"],
        "status": row["status"],
        "error": {"code": row.get("error_code"), "message": row.get("error_message")},
        "verificationStatus": row.get("verification_status"),
    }


def http_transport(url: str, body: bytes, headers: Mapping[str, str]) -> int:
    """POST `body` to `url` and return the status; a network failure is RetryableError."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.netloc, timeout=REQUEST_TIMEOUT_SECONDS)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        raise RetryableError(f"webhook {parts.netloc} unreachable: {exc}") from exc
    finally:
        conn.close()


@dataclass(frozen=True)
class _Call:
    event: str
    delivery_id: str
    document: dict[str, Any]


class WebhookNotifier:
    """Send signed webhook calls from a background thread, retrying with backoff."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        transport: Transport = http_transport,
        backoff_seconds: Sequence[float] = BACKOFF_SECONDS,
    ) -> None:
        self._url = url
        self._secret = secret
        self._transport = transport
        self._backoff = tuple(backoff_seconds)
        self._pending: queue.Queue[_Call] = queue.Queue(maxsize=MAX_PENDING)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def export_failed(self, row: Mapping[str, Any]) -> None:
        """Report an export that ended failed."""
        self._notify(EXPORT_FAILED, {"export": export_document(row)})

    def verification_failed(self, row: Mapping[str, Any], report: Mapping[str, Any]) -> None:
        """Report an export whose verification failed, naming its first problems."""
        problems = list(report.get("problems") or [])
        self._notify(
            VERIFICATION_FAILED,
            {
                "export": export_document(row),
                "problems": problems[:NAMED_PROBLEMS],
                "problemCount": len(problems) + int(report.get("problemsOmitted") or 0),
            },
        )

    def flush(self, timeout_seconds: float = EXIT_WAIT_SECONDS) -> bool:
        """Wait until every pending call was sent or given up; return whether all were."""
        deadline = time.monotonic() + timeout_seconds
        while self._pending.unfinished_tasks:
            if time.monotonic() >= deadline:
                logger.warning("webhook: %d call(s) still pending", self._pending.unfinished_tasks)
                return False
            time.sleep(0.05)
        return True

    def deliver(self, call: _Call) -> bool:
        """Send one call, retrying retryable failures; return whether the receiver took it."""
        body = orjson.dumps(
            {
                "event": call.event,
                "deliveryId": call.delivery_id,
                "occurredAt": datetime.now(UTC).isoformat(),
                **call.document,
            }
        )
        export_id = call.document["export"]["id"]
        for attempt, delay in enumerate((*self._backoff, None), start=1):
            try:
                self._send_once(call, body)
            except PermanentError as exc:
                logger.error("webhook %s for export %s refused: %s", call.event, export_id, exc)
                return False
            except RetryableError as exc:
                if delay is None:
                    logger.error(
                        "webhook %s for export %s failed %d times, giving up: %s",
                        call.event, export_id, attempt, exc,
                    )  # fmt: skip
                    return False
                logger.warning(
                    "webhook %s for export %s failed (attempt %d), retrying in %.0f s: %s",
                    call.event, export_id, attempt, delay, exc,
                )  # fmt: skip
                time.sleep(delay)
            else:
                logger.info("webhook %s for export %s delivered", call.event, export_id)
                return True
        return False

    def _send_once(self, call: _Call, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "data-export-webhook/1",
            EVENT_HEADER: call.event,
            DELIVERY_HEADER: call.delivery_id,
            # Signed at each attempt, so a late retry still falls in the receiver's window.
            SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
        }
        status = self._transport(self._url, body, headers)
        if 200 <= status < 300:
            return
        if status in (408, 425, 429) or status >= 500:
            raise RetryableError(f"the receiver answered {status}")
        raise PermanentError(f"the receiver answered {status}")

    def _notify(self, event: str, document: dict[str, Any]) -> None:
        call = _Call(event, uuid.uuid4().hex, document)
        try:
            self._pending.put_nowait(call)
        except queue.Full:
            logger.error(
                "webhook %s for export %s dropped: %d calls pending",
                event, document["export"]["id"], MAX_PENDING,
            )  # fmt: skip
            return
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            call = self._pending.get()
            try:
                self.deliver(call)
            except Exception:  # the sender thread must outlive any one call's surprise
                logger.exception("webhook %s: unexpected failure", call.event)
            finally:
                self._pending.task_done()


def notifier_for(url: str | None, secret: str | None) -> Notifier:
    """Return the notifier for the settings: a real one when a URL and secret are set."""
    if url and secret:
        return WebhookNotifier(url, secret)
    return NullNotifier()
