"""What a webhook call is: its signed JSON body, its headers, and one attempt to send it.

A call is a small JSON document (ids, status, reason; never export data) signed with HMAC-SHA256
of `<timestamp>.<body>` under WEBHOOK_SECRET, sent as `X-Export-Signature: t=<unix seconds>,
v1=<hex>`. Receivers check it with `signature_valid` and drop duplicates by `X-Export-Delivery`.
Which calls are owed, and their retries, live in the database: `workers.webhook_outbox`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from pipelines.errors import PermanentError, RetryableError

SIGNATURE_HEADER: Final = "X-Export-Signature"
EVENT_HEADER: Final = "X-Export-Event"
DELIVERY_HEADER: Final = "X-Export-Delivery"
EXPORT_FAILED: Final = "export.failed"
VERIFICATION_FAILED: Final = "verification.failed"
# Seconds one call may take: a receiver should only store the event and answer.
REQUEST_TIMEOUT_SECONDS: Final = 5.0
# Seconds a receiver should accept between the signed timestamp and its clock (replay window).
SIGNATURE_TOLERANCE_SECONDS: Final = 300
# Problems of a failed verification named in the call; the rest are counted.
NAMED_PROBLEMS: Final = 5

Transport = Callable[[str, bytes, Mapping[str, str]], int]


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


def event_body(
    event: str, delivery_id: str, occurred_at: datetime, export_row: Mapping[str, Any]
) -> bytes:
    """Return the JSON body of a call about `export_row` as the event left it."""
    document: dict[str, Any] = {
        "event": event,
        "deliveryId": delivery_id,
        "occurredAt": occurred_at.isoformat(),
        "export": export_document(export_row),
    }
    if event == VERIFICATION_FAILED:
        report = export_row.get("verification_report") or {}
        problems = list(report.get("problems") or [])
        document["problems"] = problems[:NAMED_PROBLEMS]
        document["problemCount"] = len(problems) + int(report.get("problemsOmitted") or 0)
    return orjson.dumps(document)


def send_call(
    url: str,
    secret: str,
    *,
    event: str,
    delivery_id: str,
    body: bytes,
    transport: Transport = http_transport,
) -> None:
    """Send one call once; RetryableError when worth trying again, PermanentError when not."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "data-export-webhook/1",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        # Signed at each attempt, so a late retry still falls in the receiver's window.
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
    }
    status = transport(url, body, headers)
    if 200 <= status < 300:
        return
    if status in (408, 425, 429) or status >= 500:
        raise RetryableError(f"the receiver answered {status}")
    raise PermanentError(f"the receiver answered {status}")
