"""The scheduler: one-off requests and cron schedules fired exactly once by any number of replicas.

`cron` parses expressions, `occurrences` turns them into instants in a time zone (pure, driven by
the caller's clock), `claims` holds the SQL, `contracts` the pass's types and protocols, `firing`
runs one pass, `process` loops over passes.
"""

from __future__ import annotations

from workers.scheduling.contracts import (
    Admission,
    AdmitAll,
    ExportQueue,
    Fired,
    Firing,
    FiringPolicy,
    PassConfig,
    PassReport,
)
from workers.scheduling.cron import CronError, CronSpec, parse_cron
from workers.scheduling.firing import Scheduler
from workers.scheduling.occurrences import (
    Due,
    ZoneError,
    due_occurrence,
    last_at_or_before,
    next_after,
    zone_for,
)
from workers.scheduling.process import DEFAULT_INTERVAL_SECONDS, SchedulerLoop

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "Admission",
    "AdmitAll",
    "CronError",
    "CronSpec",
    "Due",
    "ExportQueue",
    "Fired",
    "Firing",
    "FiringPolicy",
    "PassConfig",
    "PassReport",
    "Scheduler",
    "SchedulerLoop",
    "ZoneError",
    "due_occurrence",
    "last_at_or_before",
    "next_after",
    "parse_cron",
    "zone_for",
]
