"""Read what `COPY ... TO STDOUT` sends with one libpq call per row, for the export sources.

psycopg's `Copy` hands over each row through a Python generator and its wait loop, which costs
about as much client CPU as the rest of the row's trip into CSV (bench/RESULTS.md). Here each row
is one `PQgetCopyData` call through psycopg's libpq binding (`psycopg.pq`), and the socket is
waited on only when libpq holds no whole row. The COPY runs as the connection stands, in the
caller's open transaction (the sources' snapshot; no transaction is begun for it), holding the
connection's lock as psycopg's cursors do. On an error, or when the reader is closed early, it is
cancelled and the connection drained: the connection is left usable with the transaction failed,
as psycopg's `Copy` leaves it.
"""

from __future__ import annotations

import select
from collections.abc import Generator, Iterator
from contextlib import suppress
from typing import Any

import psycopg
from psycopg import errors, pq, sql


def iter_copy_output(
    conn: psycopg.Connection[Any], query: sql.Composable
) -> Generator[memoryview, None, None]:
    """Yield the data messages of `query`, a `COPY ... TO STDOUT` (one row each, as the server
    sends them), then check that the command succeeded.

    Raises the psycopg error of a failed command, and `psycopg.ProgrammingError` for a query that
    is not a COPY to the client.
    """
    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(query.as_bytes(conn))
        copying = finished = False
        try:
            started = _next_result(pgconn)
            if started.status != pq.ExecStatus.COPY_OUT:
                _raise_for(started, "COPY ... TO STDOUT", conn.info.encoding)
            copying = True
            yield from _rows(pgconn)
            finished = True
            _check_end(pgconn, conn.info.encoding)
        finally:
            if not finished:
                _cancel_and_drain(conn, copying=copying)


def _rows(pgconn: pq.abc.PGconn) -> Iterator[memoryview]:
    """Yield each row libpq holds, waiting for the socket only when it holds none."""
    get_copy_data = pgconn.get_copy_data
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    while True:
        size, data = get_copy_data(1)
        if size > 0:
            yield data
        elif size == 0:
            poller.poll()
            pgconn.consume_input()
        elif size == -1:
            return
        else:
            raise psycopg.OperationalError(f"reading COPY output: {pgconn.get_error_message()}")


def _next_result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """Wait for and return the next result of the command sent."""
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN)
    pgconn.consume_input()
    while pgconn.is_busy():
        poller.poll()
        pgconn.consume_input()
    result = pgconn.get_result()
    if result is None:
        raise psycopg.ProgrammingError("the command sent returned no result")
    return result


def _check_end(pgconn: pq.abc.PGconn, encoding: str) -> None:
    """Read the COPY's closing result and the end of the command; raise if it failed."""
    result = _next_result(pgconn)
    failure = None if result.status == pq.ExecStatus.COMMAND_OK else result
    while (extra := pgconn.get_result()) is not None:
        failure = failure or (extra if extra.status != pq.ExecStatus.COMMAND_OK else None)
    if failure is not None:
        _raise_for(failure, "COPY", encoding)


def _raise_for(result: pq.abc.PGresult, expected: str, encoding: str) -> None:
    """Raise the error `result` reports, or say the command was not what was expected."""
    if result.status == pq.ExecStatus.FATAL_ERROR:
        raise errors.error_from_result(result, encoding=encoding)
    status = pq.ExecStatus(result.status).name
    raise psycopg.ProgrammingError(f"expected {expected}, the server answered {status}")


def _cancel_and_drain(conn: psycopg.Connection[Any], *, copying: bool) -> None:
    """Stop the command in flight (a COPY when `copying`) and read the connection back to idle,
    ignoring what is read."""
    pgconn = conn.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        return
    if copying and pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
        conn.cancel_safe()
        with suppress(psycopg.OperationalError):  # the binding raises where libpq says -2
            while pgconn.get_copy_data(0)[0] >= 0:  # blocking; -1 once the COPY has ended
                pass
    while pgconn.get_result() is not None:
        pass
