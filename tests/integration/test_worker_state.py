"""Leases and fencing against a real database: one claimer wins, stale tokens change nothing."""

from __future__ import annotations

import threading

import pytest

from pipelines.database import connect
from pipelines.jobs import NewExport, create_export
from pipelines.options import ExportOptions
from workers.state import (
    ClaimOutcome,
    LeaseLostError,
    claim,
    complete,
    fail,
    renew,
    set_fields,
)

USER = "00000000-0000-4000-8000-00000000000b"
DIGEST = "0" * 64


def _export(url: str) -> str:
    with connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES (%s, 'b@example.com', 'B')",
            (USER,),
        )
        created = create_export(conn, NewExport(USER, "user", ExportOptions()))
        conn.commit()
    return str(created.row["id"])


def _claim(url: str, export_id: str, owner: str, *, lease: int = 30, attempts: int = 3):  # type: ignore[no-untyped-def]
    with connect(url, autocommit=True) as conn:
        return claim(
            conn, "export", export_id, owner=owner, lease_seconds=lease, max_attempts=attempts
        )


def _expire(url: str, export_id: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE data_exports SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (export_id,),
        )


def test_two_concurrent_claimers_only_one_wins(database_url: str) -> None:
    export_id = _export(database_url)
    outcomes: list[ClaimOutcome] = []
    barrier = threading.Barrier(2)

    def contend(owner: str) -> None:
        barrier.wait()
        outcomes.append(_claim(database_url, export_id, owner).outcome)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.value for o in outcomes) == ["busy", "claimed"]


def test_stale_fencing_token_cannot_complete_after_takeover(database_url: str) -> None:
    export_id = _export(database_url)
    first = _claim(database_url, export_id, "first").lease
    assert first is not None
    _expire(database_url, export_id)
    second = _claim(database_url, export_id, "second")
    assert second.outcome is ClaimOutcome.CLAIMED
    assert second.took_over
    assert second.lease is not None
    assert second.lease.token == first.token + 1
    with connect(database_url, autocommit=True) as conn:
        fields = {
            "object_key": "k",
            "size_bytes": 1,
            "content_size_bytes": 1,
            "record_count": 1,
            "sha256": DIGEST,
            "content_sha256": DIGEST,
        }
        with pytest.raises(LeaseLostError):
            complete(conn, first, fields)
        with pytest.raises(LeaseLostError):
            set_fields(conn, first, {"progress": 50})
        with pytest.raises(LeaseLostError):
            renew(conn, first, lease_seconds=30)
        status = conn.execute(
            "SELECT status, lease_owner FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
        assert status == ("running", "second")
        complete(conn, second.lease, fields)
        done = conn.execute(
            "SELECT status, lease_owner FROM data_exports WHERE id = %s", (export_id,)
        ).fetchone()
    assert done == ("completed", None)


def test_live_lease_is_busy_and_expired_lease_is_claimable_again(database_url: str) -> None:
    export_id = _export(database_url)
    assert _claim(database_url, export_id, "a").outcome is ClaimOutcome.CLAIMED
    assert _claim(database_url, export_id, "b").outcome is ClaimOutcome.BUSY
    _expire(database_url, export_id)
    again = _claim(database_url, export_id, "b")
    assert again.outcome is ClaimOutcome.CLAIMED
    assert again.row["attempts"] == 2


def test_attempts_cap_fails_the_export_with_the_reason(database_url: str) -> None:
    export_id = _export(database_url)
    for _ in range(2):
        assert _claim(database_url, export_id, "dies", attempts=2).outcome is ClaimOutcome.CLAIMED
        _expire(database_url, export_id)
    last = _claim(database_url, export_id, "next", attempts=2)
    assert last.outcome is ClaimOutcome.EXHAUSTED
    assert last.row["status"] == "failed"
    assert "gave up after 2 attempts" in last.row["error_message"]
    assert _claim(database_url, export_id, "later").outcome is ClaimOutcome.FINISHED


def test_failed_export_keeps_its_reason_and_releases_the_lease(database_url: str) -> None:
    export_id = _export(database_url)
    lease = _claim(database_url, export_id, "a").lease
    assert lease is not None
    with connect(database_url, autocommit=True) as conn:
        fail(conn, lease, code="permanent", message="user is gone")
        row = conn.execute(
            "SELECT status, error_message, lease_owner FROM data_exports WHERE id = %s",
            (export_id,),
        ).fetchone()
    assert row == ("failed", "user is gone", None)
