"""Keep a lease alive from a background thread while the job's own thread streams data.

A part can take a while to fill (a large user's first rows, a slow bucket), so the lease is renewed
every third of its length on a connection of its own. When renewal finds the lease taken by
another worker, `check()` raises `LeaseLostError` in the job's thread at its next part; a renewal
that fails for another reason (the database restarting) is retried at the next beat.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import psycopg

from pipelines.errors import ExportError
from workers.state import Lease, LeaseLostError, renew

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renew one lease until closed; use as a context manager around the job."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        lease: Lease,
        *,
        lease_seconds: int,
    ) -> None:
        self._connect = connect
        self._lease = lease
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._lost: LeaseLostError | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{lease.kind}-{lease.row_id}", daemon=True
        )

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise LeaseLostError if the renewal thread found the lease gone."""
        if self._lost is not None:
            raise self._lost

    def _run(self) -> None:
        interval = self._lease_seconds / 3
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.wait(interval):
                try:
                    if conn is None or conn.closed:
                        conn = self._connect()
                    renew(conn, self._lease, lease_seconds=self._lease_seconds)
                except LeaseLostError as lost:
                    self._lost = lost
                    return
                except (ExportError, psycopg.Error):
                    logger.warning(
                        "%s %s: lease renewal failed; retrying at the next beat",
                        self._lease.kind,
                        self._lease.row_id,
                        exc_info=True,
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
