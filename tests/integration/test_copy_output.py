"""Reading COPY output row by row through libpq: the rows psycopg reads, errors raised as
psycopg's, and the connection left usable however the read ends."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from pipelines.copy_output import iter_copy_output

ROWS = sql.SQL("COPY (SELECT x, repeat('é', x % 7) FROM generate_series(1, 5000) x) TO STDOUT")


def test_messages_are_the_rows_psycopg_reads(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with conn.cursor().copy(ROWS) as copy:
            expected = [bytes(row) for row in copy]

        read = [bytes(row) for row in iter_copy_output(conn, ROWS)]

        assert read == expected
        assert len(read) == 5000
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_failure_mid_copy_raises_the_servers_error_and_leaves_the_connection_usable(
    database_url: str,
) -> None:
    failing = sql.SQL("COPY (SELECT 1 / (5000 - x) FROM generate_series(1, 5000) x) TO STDOUT")
    with psycopg.connect(database_url) as conn:
        read: list[memoryview] = []

        with pytest.raises(psycopg.errors.DivisionByZero):
            read.extend(iter_copy_output(conn, failing))

        assert len(read) == 4999
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_a_reader_closed_early_cancels_the_copy_and_fails_the_transaction(
    database_url: str,
) -> None:
    endless = sql.SQL("COPY (SELECT x FROM generate_series(1, 100000000) x) TO STDOUT")
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT 0")  # the caller's transaction, which the COPY runs in
        reader = iter_copy_output(conn, endless)
        first = [bytes(next(reader)) for _ in range(3)]
        started = time.monotonic()

        reader.close()

        assert time.monotonic() - started < 10  # cancelled, not read to the end
        assert first == [b"1\n", b"2\n", b"3\n"]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_a_query_that_is_not_a_copy_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.ProgrammingError, match="expected COPY"):
            list(iter_copy_output(conn, sql.SQL("SELECT 1")))

        conn.rollback()
        assert conn.execute("SELECT 4").fetchone() == (4,)


def test_a_copy_the_server_refuses_raises_its_error(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(iter_copy_output(conn, sql.SQL("COPY no_such_table TO STDOUT")))

        conn.rollback()
        assert conn.execute("SELECT 5").fetchone() == (5,)
