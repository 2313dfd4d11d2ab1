"""PostgreSQL access for the API: one reused connection per thread, transactions as blocks.

`transaction()` wraps a block in BEGIN/COMMIT; `autocommit()` runs each statement as its own
transaction, for requests whose write is one statement (the export request), saving two round
trips.

Gunicorn workers serve one request per thread, so a thread-local connection is a pool of the
right size without a pool library. Connection and I/O failures become `RetryableError` (503) and
drop the connection, so the next request reconnects instead of reusing a dead socket.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg

from pipelines.database import connect
from pipelines.errors import RetryableError

APPLICATION_NAME = "data-export-api"
# API queries touch a handful of indexed rows; anything slower than this is a fault, and a
# client is better served by a 503 than by a worker thread stuck behind a lock.
API_STATEMENT_TIMEOUT_MS = 5000


class Database(Protocol):
    """Where resources get a connection: one transaction per `with` block."""

    def transaction(self) -> Any:
        """Return a context manager yielding a connection, committed on success."""

    def autocommit(self) -> Any:
        """Return a context manager yielding a connection on which each statement commits."""

    def ping(self) -> None:
        """Raise RetryableError unless the database answers a trivial query."""


class ThreadLocalDatabase:
    """Hand each thread its own long-lived connection, reconnecting after a failure."""

    def __init__(self, url: str, *, statement_timeout_ms: int = API_STATEMENT_TIMEOUT_MS) -> None:
        self._url = url
        self._statement_timeout_ms = statement_timeout_ms
        self._local = threading.local()

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(
                self._url,
                statement_timeout_ms=self._statement_timeout_ms,
                application_name=APPLICATION_NAME,
            )
            self._local.conn = conn
        return conn

    def _discard(self) -> None:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield this thread's connection; commit after the block, roll back if it raises."""
        conn = self._connection()
        try:
            yield conn
            conn.commit()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._discard()
            raise RetryableError(f"database unavailable: {type(exc).__name__}") from exc
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self._discard()
            raise

    @contextmanager
    def autocommit(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield this thread's connection in autocommit: every statement is its own transaction.

        No BEGIN and no COMMIT round trips: a statement has committed when it returns. For
        requests that write with one statement (or read with one); the connection goes back to
        transactions after the block.
        """
        conn = self._connection()
        conn.autocommit = True
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._discard()
            raise RetryableError(f"database unavailable: {type(exc).__name__}") from exc
        finally:
            self._end_autocommit(conn)

    def _end_autocommit(self, conn: psycopg.Connection[Any]) -> None:
        """Put the connection back into transaction mode, or drop it if that is impossible."""
        if conn.closed:
            return
        try:
            conn.autocommit = False
        except psycopg.Error:
            self._discard()

    def ping(self) -> None:
        """Raise RetryableError unless the database answers `SELECT 1`."""
        with self.transaction() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        """Close this thread's connection, if it has one."""
        self._discard()
