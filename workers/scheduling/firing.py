"""One scheduling pass: fire every due one-off request and schedule occurrence exactly once.

Each item is claimed on one connection (its row lock held until the item is done) while the
export is created and committed on a second, so the worker that receives the message can read
the row. The order per item is: create the export (committed), send its message, then mark the
claimed row done. A scheduler killed in between leaves the row due; the next pass finds the
export the first one created (by request id, or by the schedule's run row) and sends its
message again, which a worker ignores if the export already ran: nothing is lost and no export
is created twice. Items are claimed in one order across requests and schedules (priority, then
due time), each owner fires a bounded share of a pass, and a message the broker refuses leaves
only its own item due. Permissions and the rate limit are decided by an injected `FiringPolicy`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import psycopg

from pipelines.errors import ExportError, RetryableError
from pipelines.jobs import NewExport, append_log, create_export
from pipelines.options import InvalidOptionsError, parse_options
from workers.scheduling import claims
from workers.scheduling.contracts import (
    ExportQueue,
    Fired,
    FiredStatus,
    Firing,
    FiringPolicy,
    PassConfig,
    PassReport,
)
from workers.scheduling.cron import CronError, CronSpec, parse_cron
from workers.scheduling.occurrences import (
    MAX_COUNTED_MISSES,
    due_occurrence,
    last_at_or_before,
    next_after,
    zone_for,
)

logger = logging.getLogger(__name__)

MAINTENANCE_KEY: Final = "scheduler.maintenance_enqueued_at"
# Items one owner may fire in one pass (a tenth of MAX_ITEMS_PER_PASS): an owner with hundreds of
# due schedules cannot crowd out everyone else's; the rest stay due and fire a few seconds later,
# in the next passes. Each replica counts its own pass.
MAX_ITEMS_PER_OWNER_PER_PASS: Final = 20
# A pass configured smaller than usual still has room for this many owners: one owner gets at
# most that fraction of its items (at least one).
MIN_OWNERS_PER_PASS: Final = 10
# Refused messages in a row after which a pass stops claiming: the broker is down, and trying
# every due item would only create their exports and log a refusal each. Those stay due.
MAX_CONSECUTIVE_SEND_FAILURES: Final = 5
# What the pass report says about an item whose message the broker refused (details in the log).
SEND_REFUSED_REASON: Final = (
    "the broker refused the message; the item stays due and is tried again on the next pass"
)


class _AlreadyFiredError(ExportError):
    """Another firing recorded this occurrence first (the primary key said so)."""

    def __str__(self) -> str:
        return f"{self.args[0]} was already fired by another scheduler"


class _SendError(RetryableError):
    """The broker refused an export's message; the item's claim is rolled back."""

    def __init__(self, message: str, *, export_id: str) -> None:
        super().__init__(message)
        self.export_id = export_id
        self.occurrence: datetime | None = None


@dataclass
class _Connections:
    claim: psycopg.Connection[Any]
    write: psycopg.Connection[Any]
    fired: list[Fired] = field(default_factory=list)
    # Items whose message was refused in this pass: not claimed again until the next one.
    passed_over: set[str] = field(default_factory=set)
    per_owner: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _DueRun:
    """The run a due schedule fires now and its next one (None stops it, `stop_reason` says why)."""

    occurrence: datetime
    missed: int
    next_run_at: datetime | None
    stop_reason: str | None = None


class Scheduler:
    """Run claiming passes against a database, a policy and a queue."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        policy: FiringPolicy,
        queue: ExportQueue,
        *,
        config: PassConfig | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._connect = connect
        self._policy = policy
        self._queue = queue
        self._config = config or PassConfig()
        self._per_owner = min(
            MAX_ITEMS_PER_OWNER_PER_PASS, max(1, self._config.max_items // MIN_OWNERS_PER_PASS)
        )
        # None: the database's clock, so replicas on hosts with skewed clocks agree.
        self._clock = clock

    def run_pass(self, *, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        """Fire what is due now, then the maintenance sweeps if their time has come."""
        try:
            with self._open() as conns:
                now = self._now(conns.write)
                self._fire_due(conns, now, should_stop)
                maintenance = self._maintenance(conns.write, now)
                return PassReport(
                    now=now, fired=tuple(conns.fired), maintenance_enqueued=maintenance
                )
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise RetryableError(f"database unavailable during a pass: {exc}") from exc

    @contextmanager
    def _open(self) -> Iterator[_Connections]:
        claim = self._connect()
        try:
            write = self._connect()
            try:
                yield _Connections(claim=claim, write=write)
            finally:
                write.close()
        finally:
            claim.close()

    def _now(self, conn: psycopg.Connection[Any]) -> datetime:
        if self._clock is not None:
            return self._clock()
        row = conn.execute("SELECT now()").fetchone()
        conn.commit()
        assert row is not None
        moment: datetime = row[0]
        return moment

    def _fire_due(
        self, conns: _Connections, now: datetime, should_stop: Callable[[], bool]
    ) -> None:
        """Claim and fire due items, best first, until none is left or the pass is full."""
        refused_in_a_row = 0
        while len(conns.fired) < self._config.max_items and not should_stop():
            full = [owner for owner, n in conns.per_owner.items() if n >= self._per_owner]
            claimed = claims.claim_next_due(
                conns.claim, now, passed_over=conns.passed_over, full_owners=full
            )
            if claimed is None:
                conns.claim.rollback()
                return
            kind, row = claimed
            conns.per_owner[str(row["user_id"])] += 1
            try:
                fired = self._within_claim(conns, kind, row, now)
            except _SendError as exc:
                conns.passed_over.add(str(row["id"]))
                conns.fired.append(_refused(kind, str(row["id"]), exc))
                refused_in_a_row += 1
                if refused_in_a_row >= MAX_CONSECUTIVE_SEND_FAILURES:
                    logger.warning(
                        "the broker refused %d messages in a row; this pass stops firing",
                        refused_in_a_row,
                    )
                    return
                continue
            refused_in_a_row = 0
            conns.fired.append(fired)

    def _within_claim(
        self, conns: _Connections, kind: claims.ItemKind, row: dict[str, Any], now: datetime
    ) -> Fired:
        """Fire a claimed row in its transaction: committed if it fires, else rolled back."""
        try:
            if kind == "request":
                fired = self._request(conns, row)
            else:
                fired = self._schedule(conns, row, now)
        except BaseException:
            conns.claim.rollback()
            raise
        conns.claim.commit()
        return fired

    # -- one-off requests ------------------------------------------------------------------

    def _request(self, conns: _Connections, row: dict[str, Any]) -> Fired:
        request_id = str(row["id"])
        existing = claims.export_for_request(conns.write, request_id)
        conns.write.commit()
        if existing is not None:
            export, resent = existing, existing["status"] == "queued"
        else:
            created = self._create(conns.write, row, export_request_id=request_id)
            if isinstance(created, Fired):
                outcome = created
                claims.finish_request(
                    conns.claim, request_id, status=outcome.status, reason=outcome.reason
                )
                self._log_request(conns.claim, row, outcome)
                return Fired("request", request_id, outcome.status, reason=outcome.reason)
            export, resent = created, True
        if resent:
            self._send(export)
        claims.finish_request(conns.claim, request_id, status="enqueued", reason=None)
        fired = Fired("request", request_id, "enqueued", export_id=str(export["id"]))
        self._log_request(conns.claim, row, fired)
        return fired

    # -- recurring schedules ---------------------------------------------------------------

    def _schedule(self, conns: _Connections, row: dict[str, Any], now: datetime) -> Fired:
        schedule_id = str(row["id"])
        try:
            spec, zone = parse_cron(row["cron_expression"]), zone_for(row["timezone"])
        except CronError as exc:
            # Cannot be computed (a zone removed from the tz database): stop it, say why.
            claims.advance_schedule(conns.claim, schedule_id, next_run_at=None, last_run_at=None)
            fired = Fired("schedule", schedule_id, "failed", reason=str(exc))
            self._log_schedule(conns.claim, row, fired)
            return fired
        due = _due_run(spec, zone, row["next_run_at"], now)
        try:
            fired = self._occurrence(conns, row, due.occurrence)
        except _SendError as exc:
            exc.occurrence = due.occurrence
            raise
        reason = fired.reason
        if due.stop_reason is not None:
            claims.note_run_reason(conns.claim, schedule_id, due.occurrence, due.stop_reason)
            reason = "; ".join(filter(None, (fired.reason, due.stop_reason)))
        fired = Fired(
            "schedule", schedule_id, fired.status, fired.export_id, due.occurrence,
            reason, due.missed, fired.resent,
        )  # fmt: skip
        claims.apply_schedule_retention(conns.claim, row)
        claims.advance_schedule(
            conns.claim, schedule_id, next_run_at=due.next_run_at, last_run_at=due.occurrence
        )
        self._log_schedule(conns.claim, row, fired)
        if due.stop_reason is not None:
            self._log_stopped(conns.claim, row, due)
        return fired

    def _occurrence(self, conns: _Connections, row: dict[str, Any], occurrence: datetime) -> Fired:
        schedule_id = str(row["id"])
        write = conns.write
        run = claims.existing_run(write, schedule_id, occurrence)
        write.commit()
        if run is None:
            created = self._create(write, row, schedule_id=schedule_id, occurrence=occurrence)
            if isinstance(created, Fired):
                return created
            self._send(created)
            return Fired("schedule", schedule_id, "enqueued", export_id=str(created["id"]))
        # An earlier pass fired this occurrence and died before advancing the schedule.
        resent = run["status"] == "enqueued" and run["export_status"] == "queued"
        if resent:
            self._send({"id": run["export_id"], "export_type": run["export_type"],
                        "priority": run["priority"], "request_id": None})  # fmt: skip
        return Fired(
            "schedule", schedule_id, run["status"], run["export_id"], reason=run["reason"],
            resent=resent,
        )  # fmt: skip

    # -- shared steps ----------------------------------------------------------------------

    def _create(
        self,
        write: psycopg.Connection[Any],
        row: dict[str, Any],
        *,
        export_request_id: str | None = None,
        schedule_id: str | None = None,
        occurrence: datetime | None = None,
    ) -> dict[str, Any] | Fired:
        """Check, admit and create the export (committed); a Fired says why it was not."""
        kind: Literal["request", "schedule"] = "schedule" if schedule_id else "request"
        source = str(row["id"])
        try:
            firing = self._firing(row)
        except InvalidOptionsError as exc:
            return self._refuse(write, kind, source, occurrence, status="failed", reason=str(exc))
        admission = self._policy.admit(write, firing)
        write.commit()
        if not admission.allowed:
            return self._refuse(
                write, kind, source, occurrence, status="skipped", reason=admission.reason
            )
        try:
            created = create_export(
                write,
                NewExport(
                    user_id=firing.user_id,
                    export_type=firing.export_type,
                    options=firing.options,
                    priority=firing.priority,  # type: ignore[arg-type]
                    request_id=row.get("request_id"),
                    template_id=str(row["template_id"]) if row["template_id"] else None,
                    export_request_id=export_request_id,
                    schedule_id=schedule_id,
                ),
            ).row
            # The run row and the export commit together: the primary key refuses a twin.
            if (
                occurrence is not None
                and schedule_id is not None
                and not claims.record_run(
                    write, schedule_id, occurrence, status="enqueued",
                    export_id=str(created["id"]), reason=None,
                )
            ):  # fmt: skip
                raise _AlreadyFiredError(f"occurrence {occurrence} of {schedule_id}")
            append_log(
                write,
                event="export.requested",
                message=f"{created['export_type']} export requested as {created['format']}"
                f" by {kind} {source}",
                actor_type="scheduler",
                export_id=str(created["id"]),
                export_request_id=export_request_id,
                schedule_id=schedule_id,
                details={"occurrence": occurrence.isoformat()} if occurrence else None,
            )
            write.commit()
        except BaseException as exc:
            write.rollback()
            if admission.release is not None:
                admission.release()
            if isinstance(exc, _AlreadyFiredError):
                return Fired(kind, source, "skipped", occurrence=occurrence, reason=str(exc))
            raise
        return created

    def _refuse(
        self,
        write: psycopg.Connection[Any],
        kind: Literal["request", "schedule"],
        source: str,
        occurrence: datetime | None,
        *,
        status: FiredStatus,
        reason: str | None,
    ) -> Fired:
        reason = reason or "refused"
        if kind == "schedule" and occurrence is not None:
            claims.record_run(
                write, source, occurrence, status=status, export_id=None, reason=reason
            )
            write.commit()
        logger.warning("%s %s %s: %s", kind, source, status, reason)
        return Fired(kind, source, status, occurrence=occurrence, reason=reason)

    def _firing(self, row: dict[str, Any]) -> Firing:
        options = dict(row["options"] or {})
        options["compression"] = row["compression"]
        parsed = parse_options(
            row["format"],
            options,
            default_compression="none",
            compression_enabled=self._config.compression_enabled,
        )
        return Firing(
            user_id=str(row["user_id"]),
            export_type=row["export_type"],
            options=parsed,
            priority=row["priority"],
        )

    def _send(self, export: dict[str, Any]) -> None:
        export_id = str(export["id"])
        try:
            if export["export_type"] == "bulk":
                self._queue.enqueue_bulk_export(export_id, request_id=export["request_id"])
            else:
                self._queue.enqueue_user_export(
                    export_id, request_id=export["request_id"], priority=export["priority"]
                )
        except RetryableError as exc:
            # The export stays committed and `queued`: the next pass finds it and sends it again.
            raise _SendError(str(exc), export_id=export_id) from exc

    def _log_request(
        self, conn: psycopg.Connection[Any], row: dict[str, Any], fired: Fired
    ) -> None:
        append_log(
            conn,
            event=f"schedule.request_{fired.status}",
            message=f"scheduled request {fired.status}"
            + (f": {fired.reason}" if fired.reason else ""),
            level="info" if fired.status == "enqueued" else "warning",
            actor_type="scheduler",
            export_id=fired.export_id,
            export_request_id=fired.source_id,
            details={"userId": str(row["user_id"]), "reason": fired.reason},
        )

    def _log_schedule(
        self, conn: psycopg.Connection[Any], row: dict[str, Any], fired: Fired
    ) -> None:
        when = fired.occurrence.isoformat() if fired.occurrence else None
        append_log(
            conn,
            event=f"schedule.run_{fired.status}",
            message=f"occurrence {when} of schedule {row['name']!r} {fired.status}"
            + (f": {fired.reason}" if fired.reason else ""),
            level="info" if fired.status == "enqueued" else "warning",
            actor_type="scheduler",
            export_id=fired.export_id,
            schedule_id=fired.source_id,
            details={
                "userId": str(row["user_id"]),
                "occurrence": when,
                "missedOccurrences": fired.missed,
                "reason": fired.reason,
            },
        )

    def _log_stopped(
        self, conn: psycopg.Connection[Any], row: dict[str, Any], due: _DueRun
    ) -> None:
        append_log(
            conn,
            event="schedule.stopped",
            message=f"schedule {row['name']!r} stopped: {due.stop_reason}",
            level="warning",
            actor_type="scheduler",
            schedule_id=str(row["id"]),
            details={
                "userId": str(row["user_id"]),
                "occurrence": due.occurrence.isoformat(),
                "reason": due.stop_reason,
            },
        )

    # -- maintenance -----------------------------------------------------------------------

    def _maintenance(self, conn: psycopg.Connection[Any], now: datetime) -> bool:
        """Enqueue the maintenance sweeps if no replica did within the cadence."""
        try:
            if not claims.claim_maintenance_slot(
                conn, MAINTENANCE_KEY, now=now, every_seconds=self._config.maintenance_every_seconds
            ):
                conn.rollback()
                return False
            self._queue.enqueue_cleanup()  # before commit: a refused message frees the slot
            conn.commit()
        except RetryableError as exc:
            conn.rollback()
            logger.warning("the broker refused the maintenance message; next pass: %s", exc)
            return False
        except BaseException:
            conn.rollback()
            raise
        return True


def _refused(kind: claims.ItemKind, source_id: str, exc: _SendError) -> Fired:
    """Report an item whose message was refused: failed in this pass, still due in the database."""
    logger.warning(
        "%s %s not fired, it stays due: the broker refused the message of export %s: %s",
        kind, source_id, exc.export_id, exc,
    )  # fmt: skip
    return Fired(
        kind, source_id, "failed", export_id=exc.export_id, occurrence=exc.occurrence,
        reason=SEND_REFUSED_REASON,
    )  # fmt: skip


def _due_run(spec: CronSpec, zone: ZoneInfo, next_run_at: datetime, now: datetime) -> _DueRun:
    """Return the run to fire now (claimed, so due); with no run after it, stop the schedule."""
    try:
        due = due_occurrence(spec, zone, next_run_at, now)
    except CronError:
        pass  # some run is not within the search window: decided below, the due run still fires
    else:
        assert due is not None  # claimed because next_run_at <= now
        return _DueRun(due.occurrence, due.missed, due.next_run_at)
    try:
        occurrence = max(last_at_or_before(spec, zone, now), next_run_at)
    except CronError:
        occurrence = next_run_at  # set by hand to an instant the expression does not produce
    missed = _missed_runs(spec, zone, next_run_at, occurrence)
    try:
        following = next_after(spec, zone, max(occurrence, now))
    except CronError as exc:
        return _DueRun(occurrence, missed, None, f"schedule stopped after this run: {exc}")
    return _DueRun(occurrence, missed, following)


def _missed_runs(spec: CronSpec, zone: ZoneInfo, first: datetime, last: datetime) -> int:
    """Count runs from `first` (inclusive) to `last` (exclusive), as far as they can be found."""
    count, current = 0, first
    while current < last and count < MAX_COUNTED_MISSES:
        count += 1
        try:
            current = next_after(spec, zone, current)
        except CronError:
            break
    return count
