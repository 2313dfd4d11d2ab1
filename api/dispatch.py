"""What the API needs from the job queue, and an in-memory stand-in that records the calls.

The real implementation is `workers.dispatch.Dispatcher` (Dramatiq); `api.app.get_app` builds it,
so nothing else in `api/` imports the workers. Messages carry ids only. A method raises when the
broker does not take the message; `RetryableError` means the broker is unreachable (503).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from pipelines.errors import RetryableError


class Dispatcher(Protocol):
    """Send job messages to the workers."""

    def enqueue_user_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue the export of one user's data."""

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue the planning of a bulk export."""

    def enqueue_verification(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue a verification run of a completed export."""

    def enqueue_cleanup(self, *, request_id: str | None = None) -> None:
        """Queue a cleanup run: every maintenance sweep (lost messages, stuck jobs, expiry, ...)."""


@dataclass(frozen=True)
class Message:
    """One call recorded by `RecordingDispatcher`."""

    kind: str
    export_id: str | None
    request_id: str | None = None


@dataclass
class RecordingDispatcher:
    """Record messages in memory; `fail_with` makes every call raise (a broker that is down)."""

    messages: list[Message] = field(default_factory=list)
    fail_with: Exception | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _record(self, message: Message) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.messages.append(message)

    def enqueue_user_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Record a user-export message."""
        self._record(Message("user_export", export_id, request_id))

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Record a bulk-export message."""
        self._record(Message("bulk_export", export_id, request_id))

    def enqueue_verification(self, export_id: str, *, request_id: str | None = None) -> None:
        """Record a verification message."""
        self._record(Message("verification", export_id, request_id))

    def enqueue_cleanup(self, *, request_id: str | None = None) -> None:
        """Record a cleanup message."""
        self._record(Message("cleanup", None, request_id))

    def of_kind(self, kind: str) -> list[Message]:
        """Return the recorded messages of one kind, oldest first."""
        with self._lock:
            return [message for message in self.messages if message.kind == kind]


def broker_down() -> RetryableError:
    """Return the error a dispatcher raises when the broker does not answer."""
    return RetryableError("broker unavailable")
