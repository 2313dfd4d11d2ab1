"""Worker-only tuning read from the environment: leases, attempts, shard size, snapshot holding.

`WorkerSettings.from_env(environ)` is called by the worker entry point beside
`pipelines.settings.Settings.from_env`; it fails listing every malformed variable. It reads nothing
at import time. `WORKER_TEST_PART_DELAY_SECONDS` is a test hook only: it slows a worker after each
stored part so a test can kill it mid-upload; production leaves it at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.errors import SettingsError
from pipelines.sharding import TARGET_SHARD_ROWS

# A lease renewed every third of its length survives two missed renewals (a GC pause, a slow
# query) yet lets another worker take over a dead worker's job within a minute.
DEFAULT_LEASE_SECONDS = 60
# Attempts of one job before it is failed: a job that killed its worker three times will not be
# saved by a fourth try, and kill -9 bypasses Dramatiq's own retry count.
DEFAULT_MAX_ATTEMPTS = 3
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
    def from_env(cls, environ: Mapping[str, str]) -> WorkerSettings:
        """Parse the worker variables, raising SettingsError that lists every problem."""
        problems: list[str] = []

        def number(name: str, default: float, *, integer: bool = True, minimum: float = 1) -> float:
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                problems.append(f"{name}: expected a number, got {raw!r}")
                return default
            if value < minimum:
                problems.append(f"{name}: must be at least {minimum}, got {raw}")
            return value

        settings = cls(
            lease_seconds=int(number("WORKER_LEASE_SECONDS", DEFAULT_LEASE_SECONDS, minimum=2)),
            max_attempts=int(number("WORKER_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
            target_shard_rows=int(number("BULK_TARGET_SHARD_ROWS", TARGET_SHARD_ROWS)),
            snapshot_hold_seconds=int(
                number("BULK_SNAPSHOT_HOLD_SECONDS", DEFAULT_SNAPSHOT_HOLD_SECONDS)
            ),
            test_part_delay_seconds=number(
                "WORKER_TEST_PART_DELAY_SECONDS", 0.0, integer=False, minimum=0
            ),
        )
        if problems:
            raise SettingsError(problems)
        return settings
