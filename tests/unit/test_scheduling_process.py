"""The scheduler loop and the internal trigger endpoint, with injected passes (no sockets)."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import falcon.testing
import pytest
from api_support import DownDatabase, MemoryObjects, auth, make_settings

from api.app import AppDeps, create_app
from api.auth import internal_credential_from_settings, verifier_from_settings
from api.dispatch import RecordingDispatcher
from api.ratelimit import RateLimitDecision, Reservation
from exportctl.cli import build_parser
from pipelines.errors import RetryableError
from workers.scheduling import Fired, PassReport, SchedulerLoop

INTERNAL = "internal-token-" + "z" * 32
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


class FreeLimiter:
    """A limiter with a free slot for everyone."""

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        return RateLimitDecision(True, 1000, 999, 3600, None, Reservation("k", uuid.uuid4().hex))

    def release(self, reservation: Reservation) -> bool:
        return True


class CountingPass:
    """A pass that records calls and can fail or stop the loop."""

    def __init__(self, *, fail: bool = False, on_call: Callable[[], None] | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.on_call = on_call

    def run_pass(self, *, should_stop: Callable[[], bool] = lambda: False) -> PassReport:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if self.fail:
            raise RetryableError("database unavailable")
        export_id = str(uuid.uuid4())
        return PassReport(
            now=NOW,
            fired=(Fired("request", str(uuid.uuid4()), "enqueued", export_id=export_id),),
        )


def test_sigterm_ends_the_loop_after_the_current_pass() -> None:
    scheduler = CountingPass(on_call=lambda: os.kill(os.getpid(), signal.SIGTERM))
    loop = SchedulerLoop(scheduler, interval_seconds=30)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        loop.install_signal_handlers()
        finished = threading.Event()
        loop.run_forever()  # returns instead of waiting 30 s: the signal stopped it
        finished.set()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert finished.is_set()
    assert scheduler.calls == 1


def test_failed_pass_is_reported_and_the_loop_carries_on() -> None:
    loop = SchedulerLoop(CountingPass(fail=True), interval_seconds=1)
    assert loop.run_once() is None


@pytest.mark.parametrize(
    "interval", ["nan", "NaN", "inf", "-inf", "1e309", "0", "-1", "0.01", "301", "5s"]
)
def test_scheduler_interval_that_is_not_finite_and_in_range_is_a_usage_error(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["scheduler", "--interval", interval])
    assert exited.value.code == 2
    assert "--interval" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["0.1", "0.5", "2", "300"])
def test_scheduler_interval_within_range_is_accepted(interval: str) -> None:
    args = build_parser().parse_args(["scheduler", "--interval", interval])
    assert args.interval == float(interval)


@pytest.mark.parametrize("interval", [float("nan"), float("inf"), 0.0, 1e9])
def test_loop_refuses_an_interval_that_would_spin_or_overflow(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        SchedulerLoop(CountingPass(), interval_seconds=interval)


def test_process_scheduled_answers_what_the_pass_enqueued() -> None:
    scheduler = CountingPass()
    client = _client_with(scheduler)
    result = client.simulate_post(
        "/api/exports/process-scheduled", headers={"Authorization": f"Bearer {INTERNAL}"}
    )
    assert result.status_code == 200
    assert result.json["enqueued"] == 1
    assert result.json["fired"][0]["status"] == "enqueued"
    assert scheduler.calls == 1


def test_process_scheduled_rejects_a_user_token() -> None:
    scheduler = CountingPass()
    client = _client_with(scheduler)
    admin = uuid.uuid4()
    result = client.simulate_post(
        "/api/exports/process-scheduled", headers=auth(admin, roles=("admin",))
    )
    assert result.status_code == 401
    assert scheduler.calls == 0


def test_process_scheduled_without_a_scheduler_answers_503_with_retry_after() -> None:
    client = _client_with(None)
    result = client.simulate_post(
        "/api/exports/process-scheduled", headers={"Authorization": f"Bearer {INTERNAL}"}
    )
    assert result.status_code == 503
    assert result.json["detail"] == "Scheduling is not configured here."
    assert int(result.headers["retry-after"]) > 0


def _client_with(scheduler: CountingPass | None) -> falcon.testing.TestClient:
    settings = make_settings(INTERNAL_API_TOKEN=INTERNAL)
    deps = AppDeps(
        settings=settings,
        verifier=verifier_from_settings(settings),
        internal=internal_credential_from_settings(settings),
        database=DownDatabase(),
        limiter=FreeLimiter(),
        dispatcher=RecordingDispatcher(),
        objects=MemoryObjects(),
        checks={},
    )
    return falcon.testing.TestClient(create_app(replace(deps, scheduler=scheduler)))
