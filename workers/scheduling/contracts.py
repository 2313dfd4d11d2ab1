"""What a scheduling pass is given and what it reports: config, policy, queue, fired items.

The value types and protocols shared by `firing` (which runs a pass), `process` (which loops over
passes) and the API (which supplies the policy and reports a pass); no SQL and no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Protocol

import psycopg

from pipelines.options import ExportOptions

# Items fired per pass at most, so one pass stays short and a SIGTERM is honoured quickly;
# a backlog larger than this drains over the next passes (seconds apart).
MAX_ITEMS_PER_PASS: Final = 200
# Maintenance sweeps (lost messages, stuck jobs, verification, uploads, expiry, webhooks), every
# 5 min: each is cheap and idempotent, and a stuck job is only declared after 15 min anyway.
MAINTENANCE_EVERY_SECONDS: Final = 300

FiredStatus = Literal["enqueued", "skipped", "failed"]


class ExportQueue(Protocol):
    """Where the scheduler sends messages (`workers.dispatch.Dispatcher`)."""

    def enqueue_user_export(
        self, export_id: str, *, request_id: str | None = None, priority: str = "normal"
    ) -> None:
        """Queue a user export on its priority's queue."""

    def enqueue_bulk_export(self, export_id: str, *, request_id: str | None = None) -> None:
        """Queue the planning of a bulk export."""

    def enqueue_cleanup(self) -> None:
        """Queue the maintenance sweeps."""


@dataclass(frozen=True)
class Firing:
    """An export about to be created for a request or schedule occurrence."""

    user_id: str
    export_type: Literal["user", "bulk"]
    options: ExportOptions
    priority: str


@dataclass(frozen=True)
class Admission:
    """A policy's answer: admitted (with a way to give the rate-limit slot back) or why not."""

    reason: str | None = None
    release: Callable[[], None] | None = None

    @property
    def allowed(self) -> bool:
        """Return whether the export may be created."""
        return self.reason is None


class FiringPolicy(Protocol):
    """Decide at firing time whether the owner may still have this export, and count it."""

    def admit(self, conn: psycopg.Connection[Any], firing: Firing) -> Admission:
        """Return an admission (taking a rate-limit slot) or the reason to skip."""


class AdmitAll:
    """A policy that admits everything (tools and tests that check no permissions)."""

    def admit(self, conn: psycopg.Connection[Any], firing: Firing) -> Admission:
        """Admit the firing."""
        return Admission()


@dataclass(frozen=True)
class Fired:
    """What a pass did with one due item."""

    kind: Literal["request", "schedule"]
    source_id: str
    status: FiredStatus
    export_id: str | None = None
    occurrence: datetime | None = None
    reason: str | None = None
    missed: int = 0
    resent: bool = False

    def as_json(self) -> dict[str, Any]:
        """Return the item as the API reports it."""
        return {
            "kind": self.kind,
            "id": self.source_id,
            "status": self.status,
            "exportId": self.export_id,
            "occurrence": self.occurrence.isoformat() if self.occurrence else None,
            "reason": self.reason,
            "missedOccurrences": self.missed,
            "resent": self.resent,
        }


@dataclass(frozen=True)
class PassReport:
    """Everything one pass fired, and whether it enqueued the maintenance sweeps."""

    now: datetime
    fired: tuple[Fired, ...] = ()
    maintenance_enqueued: bool = False

    def enqueued(self) -> list[Fired]:
        """Return the items that sent an export message."""
        return [item for item in self.fired if item.status == "enqueued"]


@dataclass(frozen=True)
class PassConfig:
    """Limits and cadences of a pass."""

    max_items: int = MAX_ITEMS_PER_PASS
    maintenance_every_seconds: int = MAINTENANCE_EVERY_SECONDS
    compression_enabled: bool = True
