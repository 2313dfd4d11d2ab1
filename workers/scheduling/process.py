"""The scheduler process's loop: a pass every few seconds until SIGTERM, then a clean exit.

The loop owns no state between passes (the database does), so stopping it at any point is safe;
a signal only ends the loop between items and lets the current item finish. A pass that fails
because PostgreSQL is down is logged and tried again on the next tick; items whose message the
broker refused are in the pass's report and stay due for the next one.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final, Protocol

from pipelines.errors import RetryableError
from workers.scheduling.contracts import PassReport

logger = logging.getLogger(__name__)

# Seconds between passes: a one-off request fires at most this late, and a pass over an idle
# database costs three indexed queries, so a few seconds is cheap for any number of replicas.
DEFAULT_INTERVAL_SECONDS: Final = 5.0
# Shorter than this and an idle loop only hammers PostgreSQL with claims (times the replicas).
MIN_INTERVAL_SECONDS: Final = 0.1
# Longer than the maintenance cadence (5 min) and the sweeps lag behind it; ten minutes past
# their time the health metrics already count items as overdue.
MAX_INTERVAL_SECONDS: Final = 300.0


class PassRunner(Protocol):
    """Something that runs one pass (`workers.scheduling.firing.Scheduler`)."""

    def run_pass(self, *, should_stop: Callable[[], bool] = ...) -> PassReport:
        """Fire what is due."""


class SchedulerLoop:
    """Run passes every `interval_seconds` until stopped."""

    def __init__(self, scheduler: PassRunner, *, interval_seconds: float) -> None:
        if not (
            math.isfinite(interval_seconds)
            and MIN_INTERVAL_SECONDS <= interval_seconds <= MAX_INTERVAL_SECONDS
        ):
            raise ValueError(
                f"interval must be from {MIN_INTERVAL_SECONDS} to {MAX_INTERVAL_SECONDS}"
                f" seconds, got {interval_seconds}"
            )
        self._scheduler = scheduler
        self._interval = interval_seconds
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end after the item in progress."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Return whether a stop was asked for."""
        return self._stop.is_set()

    def run_once(self) -> PassReport | None:
        """Run one pass; None when it failed for a reason worth retrying."""
        started = time.monotonic()
        try:
            report = self._scheduler.run_pass(should_stop=self._stop.is_set)
        except RetryableError as exc:
            logger.warning("scheduler pass failed, retrying next tick: %s", exc)
            return None
        if report.fired or report.maintenance_enqueued:
            failed = [item for item in report.fired if item.status == "failed"]
            logger.log(
                logging.WARNING if failed else logging.INFO,
                "scheduler pass: %d fired (%d enqueued, %d failed), maintenance %s, %.3f s",
                len(report.fired),
                len(report.enqueued()),
                len(failed),
                "enqueued" if report.maintenance_enqueued else "not due",
                time.monotonic() - started,
            )
        return report

    def run_forever(self) -> None:
        """Run passes until `stop()` (or a handled signal)."""
        logger.info("scheduler started: a pass every %.1f s", self._interval)
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
        logger.info("scheduler stopped")

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT stop the loop cleanly (main thread only)."""

        def handle(signum: int, frame: FrameType | None) -> None:
            logger.info("scheduler received %s; stopping", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
