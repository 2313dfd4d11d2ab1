"""What one pass fires and in which order, on a real PostgreSQL: priority across requests and
schedules, a bound per owner, refused messages, and a schedule whose last run is due.

The clock is injected and messages go to an in-memory queue (what a worker would receive); the
helpers come from `test_scheduler_claims`, the exactly-once tests.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from api_support import add_user
from test_scheduler_claims import NOW, FreeLimiter, RecordingQueue, add_request, rows

from api.schedule_policy import ScheduledExportPolicy
from pipelines.database import connect
from pipelines.errors import RetryableError
from workers.scheduling import PassConfig, Scheduler
from workers.scheduling.firing import MAX_CONSECUTIVE_SEND_FAILURES, MAX_ITEMS_PER_OWNER_PER_PASS


class RefusingQueue(RecordingQueue):
    """A broker that refuses user-export messages of some priorities (a full queue)."""

    def __init__(self, *, refuse: frozenset[str], refuse_cleanup: bool = False) -> None:
        super().__init__()
        self.refuse = refuse
        self.refuse_cleanup = refuse_cleanup
        self.refused = 0

    def enqueue_user_export(
        self, export_id: str, *, request_id: str | None = None, priority: str = "normal"
    ) -> None:
        if priority in self.refuse:
            self.refused += 1
            raise RetryableError(f"exports.{priority} refused the message (queue full)")
        super().enqueue_user_export(export_id, request_id=request_id, priority=priority)

    def enqueue_cleanup(self) -> None:
        if self.refuse_cleanup:
            raise RetryableError("maintenance refused the message (broker down)")
        super().enqueue_cleanup()


def make_scheduler(
    url: str, queue: RecordingQueue, *, now: datetime = NOW, max_items: int | None = None
) -> Scheduler:
    return Scheduler(
        lambda: connect(url),
        ScheduledExportPolicy(FreeLimiter()),
        queue,
        config=PassConfig() if max_items is None else PassConfig(max_items=max_items),
        clock=lambda: now,
    )


def add_schedule(
    url: str,
    user_id: uuid.UUID,
    cron: str,
    next_run_at: datetime,
    *,
    priority: str = "normal",
    timezone: str = "Europe/Berlin",
) -> str:
    with connect(url) as conn:
        row = conn.execute(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, timezone,"
            " priority, next_run_at) VALUES (%s, 'nightly', 'json', %s, %s, %s, %s)"
            " RETURNING id::text",
            (user_id, cron, timezone, priority, next_run_at),
        ).fetchone()
        conn.commit()
    assert row is not None
    return str(row[0])


# -- the last run of a schedule -----------------------------------------------------------------


def test_due_run_with_no_later_run_fires_then_stops_the_schedule_with_the_reason(
    database_url: str,
) -> None:
    user = add_user(database_url)
    # Feb 1st on a Monday: 2027, then 2038, beyond the 8-year search for the next run.
    occurrence = datetime(2027, 2, 1, tzinfo=UTC)
    schedule_id = add_schedule(database_url, user, "0 0 */31 2 1", occurrence, timezone="UTC")
    queue = RecordingQueue()
    report = make_scheduler(database_url, queue, now=occurrence + timedelta(seconds=30)).run_pass()
    [fired] = report.fired
    assert (fired.kind, fired.source_id, fired.status) == ("schedule", schedule_id, "enqueued")
    assert fired.occurrence == occurrence
    assert "stopped" in str(fired.reason)
    assert [export_id for _, export_id, _ in queue.messages] == [fired.export_id]
    run = rows(
        database_url,
        "SELECT status, export_id::text, reason FROM export_schedule_runs WHERE schedule_id = %s",
        schedule_id,
    )
    assert run[0][:2] == ("enqueued", fired.export_id)
    assert "does not fire" in run[0][2]
    schedule = rows(
        database_url,
        "SELECT next_run_at, last_run_at FROM export_schedules WHERE id = %s",
        schedule_id,
    )
    assert schedule == [(None, occurrence)]
    logged = rows(
        database_url,
        "SELECT event, details->>'reason' FROM export_logs WHERE schedule_id = %s ORDER BY id",
        schedule_id,
    )
    assert [event for event, _ in logged] == [
        "export.requested",
        "schedule.run_enqueued",
        "schedule.stopped",
    ]
    assert "does not fire" in str(logged[-1][1])
    later = make_scheduler(database_url, queue, now=occurrence + timedelta(days=400)).run_pass()
    assert later.fired == ()
    assert len(queue.messages) == 1


# -- priority across requests and schedules -----------------------------------------------------


def test_high_priority_schedule_fires_before_earlier_low_priority_requests(
    database_url: str,
) -> None:
    user, other = add_user(database_url), add_user(database_url)
    requests = [
        add_request(database_url, other, NOW - timedelta(minutes=30 - i), priority="low")
        for i in range(3)
    ]
    schedule_id = add_schedule(
        database_url, user, "0 3 * * *", NOW - timedelta(minutes=1), priority="high"
    )
    report = make_scheduler(database_url, RecordingQueue(), max_items=2).run_pass()
    assert [(item.kind, item.source_id) for item in report.fired] == [
        ("schedule", schedule_id),
        ("request", requests[0]),
    ]
    assert {item.status for item in report.fired} == {"enqueued"}


def test_items_of_equal_priority_fire_oldest_due_first_across_both_kinds(
    database_url: str,
) -> None:
    user = add_user(database_url)
    late_request = add_request(database_url, user, NOW - timedelta(minutes=1))
    schedule_id = add_schedule(database_url, user, "0 3 * * *", NOW - timedelta(hours=1))
    early_request = add_request(database_url, user, NOW - timedelta(hours=2))
    high_request = add_request(database_url, user, NOW - timedelta(seconds=1), priority="high")
    report = make_scheduler(database_url, RecordingQueue()).run_pass()
    assert [item.source_id for item in report.fired] == [
        high_request,
        early_request,
        schedule_id,
        late_request,
    ]


# -- a refused message --------------------------------------------------------------------------


def test_refused_message_leaves_that_item_due_and_the_pass_fires_the_rest(
    database_url: str,
) -> None:
    owner, other = add_user(database_url), add_user(database_url)
    urgent = add_request(database_url, owner, NOW - timedelta(minutes=5), priority="high")
    routine = [add_request(database_url, other, NOW - timedelta(minutes=1)) for _ in range(3)]
    schedule_id = add_schedule(database_url, other, "0 3 * * *", NOW - timedelta(hours=1))
    queue = RefusingQueue(refuse=frozenset({"high"}))
    report = make_scheduler(database_url, queue).run_pass()
    outcome = {item.source_id: item for item in report.fired}
    assert outcome[urgent].status == "failed"
    assert "broker refused" in str(outcome[urgent].reason)
    assert queue.refused == 1  # not tried again within the pass
    assert all(outcome[request].status == "enqueued" for request in routine)
    assert outcome[schedule_id].status == "enqueued"
    assert report.maintenance_enqueued
    assert queue.cleanups == 1
    assert rows(
        database_url, "SELECT status, enqueued_at FROM export_requests WHERE id = %s", urgent
    ) == [("pending", None)]
    assert rows(
        database_url, "SELECT count(*) FROM export_logs WHERE export_request_id = %s"
        " AND event LIKE 'schedule.%%'", urgent,
    ) == [(0,)]  # fmt: skip
    queue.refuse = frozenset()
    again = make_scheduler(database_url, queue).run_pass()
    assert [(item.source_id, item.status, item.resent) for item in again.fired] == [
        (urgent, "enqueued", False)
    ]
    exports = rows(
        database_url, "SELECT id::text FROM data_exports WHERE export_request_id = %s", urgent
    )
    assert len(exports) == 1  # the second pass sent the export the first one created
    sent = [export_id for _, export_id, _ in queue.messages]
    assert sent.count(exports[0][0]) == 1
    assert rows(database_url, "SELECT status FROM export_requests WHERE id = %s", urgent) == [
        ("enqueued",)
    ]


def test_broker_down_ends_the_pass_after_consecutive_refusals(database_url: str) -> None:
    user = add_user(database_url)
    due = MAX_CONSECUTIVE_SEND_FAILURES + 4
    assert due <= MAX_ITEMS_PER_OWNER_PER_PASS
    for minute in range(due):
        add_request(database_url, user, NOW - timedelta(minutes=minute + 1))
    queue = RefusingQueue(refuse=frozenset({"low", "normal", "high"}), refuse_cleanup=True)
    report = make_scheduler(database_url, queue).run_pass()
    assert queue.refused == MAX_CONSECUTIVE_SEND_FAILURES
    assert [item.status for item in report.fired] == ["failed"] * MAX_CONSECUTIVE_SEND_FAILURES
    assert not report.maintenance_enqueued
    assert rows(database_url, "SELECT DISTINCT status FROM export_requests") == [("pending",)]
    # The refused maintenance message did not use up the slot: the next pass sends it.
    queue.refuse, queue.refuse_cleanup = frozenset(), False
    again = make_scheduler(database_url, queue).run_pass()
    assert again.maintenance_enqueued
    assert len(again.enqueued()) == due
    assert rows(database_url, "SELECT count(*) FROM data_exports") == [(due,)]
    assert len({export_id for _, export_id, _ in queue.messages}) == due


# -- one owner's share of a pass ----------------------------------------------------------------


def test_one_owner_cannot_fill_a_pass(database_url: str) -> None:
    busy, quiet = add_user(database_url), add_user(database_url)
    busy_items = [
        add_request(database_url, busy, NOW - timedelta(minutes=10), priority="high")
        for _ in range(MAX_ITEMS_PER_OWNER_PER_PASS)
    ] + [
        add_schedule(database_url, busy, "* * * * *", NOW - timedelta(minutes=10), priority="high")
        for _ in range(3)
    ]
    quiet_request = add_request(database_url, quiet, NOW - timedelta(minutes=1), priority="low")
    quiet_schedule = add_schedule(database_url, quiet, "0 3 * * *", NOW - timedelta(minutes=1))
    queue = RecordingQueue()
    first = make_scheduler(database_url, queue).run_pass()
    fired = [item.source_id for item in first.fired]
    assert quiet_schedule in fired
    assert quiet_request in fired
    assert len([source for source in fired if source in busy_items]) == MAX_ITEMS_PER_OWNER_PER_PASS
    assert {item.status for item in first.fired} == {"enqueued"}
    waiting = rows(
        database_url,
        "SELECT (SELECT count(*) FROM export_requests WHERE status = 'pending')"
        " + (SELECT count(*) FROM export_schedules WHERE next_run_at <= %s)",
        NOW,
    )
    assert waiting == [(3,)]  # the rest of the busy owner's items stay due
    second = make_scheduler(database_url, queue).run_pass()
    assert sorted(item.source_id for item in first.fired + second.fired) == sorted(
        [*busy_items, quiet_request, quiet_schedule]
    )
    assert len(queue.messages) == len(busy_items) + 2


def test_one_owner_cannot_fill_a_small_pass(database_url: str) -> None:
    busy, quiet = add_user(database_url), add_user(database_url)
    for _ in range(8):
        add_schedule(database_url, busy, "* * * * *", NOW - timedelta(minutes=10), priority="high")
    quiet_request = add_request(database_url, quiet, NOW - timedelta(minutes=1), priority="low")
    report = make_scheduler(database_url, RecordingQueue(), max_items=8).run_pass()
    owners = rows(
        database_url,
        "SELECT user_id, count(*) FROM data_exports GROUP BY user_id ORDER BY user_id",
    )
    assert sorted(owners) == sorted([(busy, 1), (quiet, 1)])  # a tenth of 8 items, at least 1
    assert quiet_request in [item.source_id for item in report.fired]


# -- several replicas ---------------------------------------------------------------------------


def test_replicas_claiming_across_both_kinds_fire_each_item_once(database_url: str) -> None:
    users = [add_user(database_url) for _ in range(6)]
    priorities = ("high", "normal", "low")
    requests = [
        add_request(
            database_url, users[i % 6], NOW - timedelta(seconds=i), priority=priorities[i % 3]
        )
        for i in range(60)
    ]
    schedules = {
        add_schedule(database_url, user, "0 3 * * *", NOW - timedelta(minutes=i), priority=level)
        for i, (user, level) in enumerate(zip(users * 2, priorities * 4, strict=True))
    }
    queue = RefusingQueue(refuse=frozenset({"low"}))
    replicas = [make_scheduler(database_url, queue) for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    errors: list[BaseException] = []

    def run(replica: Scheduler) -> None:
        barrier.wait()
        try:
            for _ in range(3):
                replica.run_pass()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    exports = rows(
        database_url,
        "SELECT id::text, export_request_id::text, schedule_id::text, priority FROM data_exports",
    )
    fired = [e for e in exports if e[3] != "low"]
    not_low = sorted(request for i, request in enumerate(requests) if priorities[i % 3] != "low")
    assert sorted(e[1] for e in fired if e[1]) == not_low
    assert len({e[2] for e in fired if e[2]} & schedules) == 8
    sources = [e[1] or e[2] for e in exports]
    assert len(sources) == len(set(sources))  # no item has two exports, refused ones included
    sent = [export_id for _, export_id, _ in queue.messages]
    assert sorted(sent) == sorted(e[0] for e in fired)  # each sent once; no refused one sent
    pending = rows(database_url, "SELECT priority, count(*) FROM export_requests"
                   " WHERE status = 'pending' GROUP BY priority")  # fmt: skip
    assert pending == [("low", 20)]
    runs = rows(database_url, "SELECT count(*) FROM export_schedule_runs r JOIN export_schedules"
                " s ON s.id = r.schedule_id WHERE s.next_run_at > %s", NOW)  # fmt: skip
    assert runs == [(8,)]  # the low ones stay due, with their run waiting for its message
