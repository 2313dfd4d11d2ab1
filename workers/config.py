"""How workers lease, retry and shard, taken from `Settings`, plus one test hook.

`WorkerSettings.from_settings(settings, environ)` is built by the worker entry point. The lease,
attempt, shard and snapshot settings are ordinary settings (`deploy/env.example`);
`WORKER_TEST_PART_DELAY_SECONDS` is a test hook only, kept out of `Settings` on purpose: it slows
a worker after each stored part so a test can kill it mid-upload; production leaves it unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.errors import SettingsError
from pipelines.settings import Settings
from pipelines.sharding import TARGET_SHARD_ROWS

# A lease renewed every third of its length survives two missed renewals (a GC pause, a slow
# query) yet lets another worker take over a dead worker's job within a minute.
DEFAULT_LEASE_SECONDS = 60
# Attempts of one job before it is failed: a job that killed its worker three times will not be
# saved by a fourth try, and kill -9 bypasses Dramatiq's own retry count.
DEFAULT_MAX_ATTEMPTS = 3
TEST_PART_DELAY_VARIABLE = "WORKER_TEST_PART_DELAY_SECONDS"
# A snapshot is held at most this long (6 h): a bulk export that has not finished by then is
# failed rather than keeping PostgreSQL's xmin horizon back forever.
DEFAULT_SNAPSHOT_HOLD_SECONDS = 6 * 3600


@dataclass(frozen=True)
class WorkerSettings:
    """How workers lease, retry and shard."""

    lease_seconds: int = DEFAULT_LEASE_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    target_shard_rows: int = TARGET_SHARD_ROWS
    snapshot_hold_seconds: int = DEFAULT_SNAPSHOT_HOLD_SECONDS
    test_part_delay_seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> WorkerSettings:
        """Take the worker settings from `settings`, and the test hook from the environment."""
        raw = environ.get(TEST_PART_DELAY_VARIABLE, "").strip() or "0"
        try:
            delay = float(raw)
        except ValueError as exc:
            raise SettingsError(
                [f"{TEST_PART_DELAY_VARIABLE}: expected seconds, got {raw!r}"]
            ) from exc
        if delay < 0:
            raise SettingsError([f"{TEST_PART_DELAY_VARIABLE}: must be zero or more, got {raw}"])
        return cls(
            lease_seconds=settings.worker_lease_seconds,
            max_attempts=settings.worker_max_attempts,
            target_shard_rows=settings.bulk_target_shard_rows,
            snapshot_hold_seconds=settings.bulk_snapshot_hold_seconds,
            test_part_delay_seconds=delay,
        )
