"""Send the webhook calls the database owes the operator, from the `webhook_deliveries` outbox.

Triggers in schema.sql write a call in the very transaction that fails an export or its
verification, so no crash can lose one. A sender claims a due call by moving its next attempt
past the request timeout, sends it, and records the outcome: delivered; tried again later with
growing delays while the receiver errs or cannot be reached; or given up, with the reason, when
the receiver refuses it (a 4xx other than 408, 425 and 429) or the call has been owed for
DELIVERY_MAX_AGE_SECONDS. Any number of processes may send at once: a claim skips the calls
another sender holds, and a sender that dies mid-call leaves the call to the next one once its
claim runs out. Delivery is therefore at least once; a receiver drops duplicates by the
X-Export-Delivery id, which every attempt of a call shares.

A worker wakes its process's sender thread after it commits a failure, so calls leave within
moments; the maintenance sweep (`deliver_due`) sends whatever a dead process left behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

import psycopg
from psycopg.rows import dict_row

from pipelines.errors import PermanentError
from workers import metrics
from workers.webhooks import (
    REQUEST_TIMEOUT_SECONDS,
    Transport,
    event_body,
    http_transport,
    send_call,
)

logger = logging.getLogger(__name__)

# Seconds before each retry of a call; the last one repeats. A receiver's restart is ridden out
# in seconds, a longer outage costs one attempt per call every five minutes.
BACKOFF_SECONDS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 60.0, 300.0)
# A call not delivered within a day is given up: it is stale, and its failure is in the audit
# trail and the export's status either way.
DELIVERY_MAX_AGE_SECONDS: Final = 24 * 3600
# Seconds a claim holds a call: one request's timeout and a margin to record its outcome.
CLAIM_SECONDS: Final = REQUEST_TIMEOUT_SECONDS + 10.0
# Calls one pass sends at most, so a sweep stays short; the next pass takes the rest.
PASS_CALLS: Final = 500
# Seconds the sender thread waits after a pass that could not reach the database.
FAILED_PASS_RETRY_SECONDS: Final = 30.0
# Seconds the sender thread waits at least between passes while calls are owed.
MIN_WAIT_SECONDS: Final = 0.05
# Days a delivered or given-up call is kept for inspection.
RETENTION_DAYS: Final = 30

Connect = Callable[[], psycopg.Connection[Any]]

_CLAIM_SQL: Final = """
UPDATE webhook_deliveries
SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => %(claim)s)
WHERE id = (
    SELECT id FROM webhook_deliveries
    WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id::text, event, export_id::text, export_row, occurred_at, attempts,
    now() - owed_since > make_interval(secs => %(max_age)s) AS stale
"""


@dataclass(frozen=True)
class OwedCall:
    """One claimed call: what to send, and which attempt this is."""

    id: str
    event: str
    export_id: str
    export_row: dict[str, Any]
    occurred_at: datetime
    attempts: int
    stale: bool


class Outbox(Protocol):
    """What the job functions and the maintenance sweep need from the webhook sender."""

    def wake(self) -> None:
        """Say that calls may be due: the process's sender sends them soon."""

    def deliver_due(self, limit: int = PASS_CALLS) -> int:
        """Send the calls due now, here; return how many were attempted."""


class NullOutbox:
    """No webhook configured: calls stay owed in the table until they are pruned."""

    def wake(self) -> None:
        """Nothing to send to."""

    def deliver_due(self, limit: int = PASS_CALLS) -> int:
        """Nothing to send to: nothing attempted."""
        return 0


def claim_due(
    conn: psycopg.Connection[Any],
    *,
    claim_seconds: float = CLAIM_SECONDS,
    max_age_seconds: float = DELIVERY_MAX_AGE_SECONDS,
) -> OwedCall | None:
    """Claim the call due first that no other sender holds (autocommit: the claim commits)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            _CLAIM_SQL, {"claim": claim_seconds, "max_age": max_age_seconds}
        ).fetchone()
    return None if row is None else OwedCall(**row)


def record_delivered(conn: psycopg.Connection[Any], call: OwedCall) -> None:
    """Mark the call taken by the receiver (unless another sender claimed it since)."""
    conn.execute(
        "UPDATE webhook_deliveries SET delivered_at = now(), last_error = NULL"
        " WHERE id = %s AND attempts = %s AND delivered_at IS NULL",
        (call.id, call.attempts),
    )


def record_retry(
    conn: psycopg.Connection[Any], call: OwedCall, error: str, *, delay_seconds: float
) -> None:
    """Keep the call owed, due again after `delay_seconds`, with the error that stopped it."""
    conn.execute(
        "UPDATE webhook_deliveries SET last_error = %s,"
        " next_attempt_at = now() + make_interval(secs => %s)"
        " WHERE id = %s AND attempts = %s AND delivered_at IS NULL",
        (error, delay_seconds, call.id, call.attempts),
    )


def record_abandoned(conn: psycopg.Connection[Any], call: OwedCall, error: str) -> None:
    """Give the call up, with the reason."""
    conn.execute(
        "UPDATE webhook_deliveries SET abandoned_at = now(), last_error = %s"
        " WHERE id = %s AND attempts = %s AND delivered_at IS NULL",
        (error, call.id, call.attempts),
    )


def seconds_until_next_due(conn: psycopg.Connection[Any]) -> float | None:
    """Return how long until the next owed call is due (0 if one is now); None if none is owed."""
    row = conn.execute(
        "SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8"
        " FROM webhook_deliveries WHERE delivered_at IS NULL AND abandoned_at IS NULL"
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def prune_deliveries(conn: psycopg.Connection[Any], *, retention_days: int = RETENTION_DAYS) -> int:
    """Delete calls older than the retention, whatever became of them; return how many."""
    cursor = conn.execute(
        "DELETE FROM webhook_deliveries WHERE occurred_at < now() - make_interval(days => %s)",
        (retention_days,),
    )
    return cursor.rowcount


class WebhookOutbox:
    """Send owed calls to one receiver: now (`deliver_due`) or on a background thread (`wake`)."""

    def __init__(
        self,
        url: str,
        secret: str,
        connect: Connect,
        *,
        transport: Transport = http_transport,
        backoff_seconds: Sequence[float] = BACKOFF_SECONDS,
        max_age_seconds: float = DELIVERY_MAX_AGE_SECONDS,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        if not backoff_seconds:
            raise ValueError("backoff_seconds needs at least one delay")
        self._url = url
        self._secret = secret
        self._connect = connect
        self._transport = transport
        self._backoff = tuple(backoff_seconds)
        self._max_age = max_age_seconds
        self._claim = claim_seconds
        self._wakeup = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Start the sender thread if needed and have it look for due calls now."""
        with self._lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
                self._thread.start()
        self._wakeup.set()

    def deliver_due(self, limit: int = PASS_CALLS) -> int:
        """Send the calls due now, one at a time; return how many were attempted."""
        attempted = 0
        with self._connect() as conn:
            while attempted < limit:
                call = claim_due(conn, claim_seconds=self._claim, max_age_seconds=self._max_age)
                if call is None:
                    break
                attempted += 1
                self._attempt(conn, call)
        return attempted

    def owed(self) -> int:
        """Return how many calls are neither delivered nor given up."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM webhook_deliveries"
                " WHERE delivered_at IS NULL AND abandoned_at IS NULL"
            ).fetchone()
        return int(row[0]) if row else 0

    def flush(self, timeout_seconds: float) -> bool:
        """Wake the sender and wait until no call is owed; return whether none is."""
        self.wake()
        deadline = time.monotonic() + timeout_seconds
        while self.owed():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop the sender thread after its current pass; owed calls stay owed."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wakeup.set()
        if thread is not None:
            thread.join(timeout_seconds)

    def _attempt(self, conn: psycopg.Connection[Any], call: OwedCall) -> None:
        what = f"webhook {call.event} for export {call.export_id} (delivery {call.id})"
        if call.stale:
            reason = f"not delivered within {self._max_age:.0f} s of becoming owed"
            logger.error("%s given up: %s", what, reason)
            record_abandoned(conn, call, reason)
            metrics.webhook_attempted(event=call.event, outcome="abandoned")
            return
        body = event_body(call.event, call.id, call.occurred_at, call.export_row)
        try:
            send_call(self._url, self._secret, event=call.event, delivery_id=call.id, body=body,
                      transport=self._transport)  # fmt: skip
        except PermanentError as exc:
            logger.error("%s refused, given up: %s", what, exc)
            record_abandoned(conn, call, str(exc))
            metrics.webhook_attempted(event=call.event, outcome="abandoned")
        except Exception as exc:  # any other failure is worth another attempt
            delay = self._backoff[min(call.attempts, len(self._backoff)) - 1]
            logger.warning("%s failed (attempt %d), retrying in %.0f s: %s",
                           what, call.attempts, delay, exc)  # fmt: skip
            record_retry(conn, call, str(exc) or type(exc).__name__, delay_seconds=delay)
            metrics.webhook_attempted(event=call.event, outcome="retrying")
        else:
            logger.info("%s delivered (attempt %d)", what, call.attempts)
            record_delivered(conn, call)
            metrics.webhook_attempted(event=call.event, outcome="delivered")

    def _run(self) -> None:
        wait: float | None = None  # None: until woken
        while True:
            self._wakeup.wait(wait)
            self._wakeup.clear()
            if self._stopping:
                return
            try:
                self.deliver_due()
                with self._connect() as conn:
                    due_in = seconds_until_next_due(conn)
                # Not less than a moment: a call due now may be mid-claim by another sender.
                wait = None if due_in is None else max(due_in, MIN_WAIT_SECONDS)
            except Exception:  # the sender thread must outlive a database outage
                logger.exception(
                    "webhook sender: pass failed, trying again in %.0f s", FAILED_PASS_RETRY_SECONDS
                )
                wait = FAILED_PASS_RETRY_SECONDS


def outbox_for(url: str | None, secret: str | None, connect: Connect) -> Outbox:
    """Return the sender for the settings: a real one when a URL and secret are set."""
    if url and secret:
        return WebhookOutbox(url, secret, connect)
    return NullOutbox()
