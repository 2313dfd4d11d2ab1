"""The export rate limiter against a real Redis: exact under concurrency, per-call limits, sliding.

Every test uses its own key prefix, so tests never share counters, and removes its keys after.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import falcon
import falcon.testing
import pytest
import redis

from api.problems import PROBLEM_CONTENT_TYPE, install_problem_handlers
from api.ratelimit import (
    RateLimitDecision,
    RateLimiter,
    apply_rate_limit_headers,
    create_redis,
    rate_limited,
)
from pipelines.errors import RetryableError

LIMIT = 10
ADMIN_LIMIT = 15


class FakeClock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"test:ratelimit:{uuid.uuid4().hex}:"
    yield prefix
    client = create_redis(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_limiter(redis_url: str, key_prefix: str) -> Iterator[Callable[..., RateLimiter]]:
    clients: list[redis.Redis] = []

    def make(**options: object) -> RateLimiter:
        client = create_redis(redis_url)
        clients.append(client)
        settings: dict[str, object] = {"limit": LIMIT, "admin_limit": ADMIN_LIMIT}
        settings.update(options)
        return RateLimiter(client, key_prefix=key_prefix, **settings)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


def test_twenty_concurrent_reservations_accept_exactly_the_limit(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    # One client per thread, as separate gunicorn workers would have.
    limiters = [make_limiter() for _ in range(20)]
    user_id = uuid.uuid4()
    start = threading.Barrier(len(limiters))
    decisions: list[RateLimitDecision] = []
    lock = threading.Lock()

    def reserve(limiter: RateLimiter) -> None:
        start.wait()
        decision = limiter.reserve(user_id)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=reserve, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    accepted = [decision for decision in decisions if decision.allowed]
    refused = [decision for decision in decisions if not decision.allowed]
    assert len(accepted) == LIMIT
    assert len(refused) == 10
    assert sorted(decision.remaining for decision in accepted) == list(range(LIMIT))
    assert all(decision.remaining == 0 for decision in refused)
    assert all(decision.reservation is None for decision in refused)
    assert all(0 < (decision.retry_after_seconds or 0) <= 3600 for decision in refused)


def test_release_gives_the_slot_back(make_limiter: Callable[..., RateLimiter]) -> None:
    limiter = make_limiter(limit=2)
    user_id = uuid.uuid4()
    first = limiter.reserve(user_id)
    assert limiter.reserve(user_id).allowed
    assert not limiter.reserve(user_id).allowed
    assert first.reservation is not None

    assert limiter.release(first.reservation) is True
    assert limiter.release(first.reservation) is False

    again = limiter.reserve(user_id)
    assert again.allowed
    assert again.remaining == 0


def test_refused_attempts_do_not_count(make_limiter: Callable[..., RateLimiter]) -> None:
    clock = FakeClock()
    limiter = make_limiter(limit=1, window_seconds=60, clock=clock)
    user_id = uuid.uuid4()
    assert limiter.reserve(user_id).allowed
    for _ in range(5):
        clock.now += 10
        assert not limiter.reserve(user_id).allowed
    clock.now += 10.001
    assert limiter.reserve(user_id).allowed


def test_window_slides_one_reservation_at_a_time(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    clock = FakeClock()
    limiter = make_limiter(limit=3, window_seconds=60, clock=clock)
    user_id = uuid.uuid4()
    start = clock.now
    for offset in (0, 10, 20):
        clock.now = start + offset
        decision = limiter.reserve(user_id)
        assert decision.allowed
    assert decision.remaining == 0
    assert decision.reset_seconds == 40

    clock.now = start + 30
    refused = limiter.reserve(user_id)
    assert not refused.allowed
    assert refused.retry_after_seconds == 30

    clock.now = start + 60
    assert limiter.reserve(user_id).allowed
    clock.now = start + 65
    assert not limiter.reserve(user_id).allowed
    clock.now = start + 70
    assert limiter.reserve(user_id).allowed


def test_users_are_counted_apart_and_admins_get_their_own_limit(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = make_limiter(limit=1, admin_limit=3)
    user, admin = uuid.uuid4(), uuid.uuid4()
    assert limiter.reserve(user).allowed
    assert not limiter.reserve(user).allowed
    admin_decisions = [limiter.reserve(admin, is_admin=True) for _ in range(4)]
    assert [decision.allowed for decision in admin_decisions] == [True, True, True, False]
    assert admin_decisions[0].limit == 3


def test_a_per_call_limit_replaces_the_role_default(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = make_limiter(limit=5, admin_limit=5)
    user, admin = uuid.uuid4(), uuid.uuid4()
    decisions = [limiter.reserve(user, limit=2) for _ in range(3)]
    assert [decision.allowed for decision in decisions] == [True, True, False]
    assert {decision.limit for decision in decisions} == {2}
    assert [decision.remaining for decision in decisions] == [1, 0, 0]
    generous = [limiter.reserve(admin, is_admin=True, limit=7) for _ in range(8)]
    assert [decision.allowed for decision in generous] == [True] * 7 + [False]


def test_a_lowered_limit_counts_the_exports_already_in_the_window(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiter = make_limiter(limit=5)
    user_id = uuid.uuid4()
    for _ in range(3):
        assert limiter.reserve(user_id).allowed
    refused = limiter.reserve(user_id, limit=2)
    assert not refused.allowed
    assert (refused.limit, refused.remaining) == (2, 0)
    assert limiter.reserve(user_id).allowed


def test_twenty_concurrent_reservations_with_a_per_call_limit_accept_exactly_it(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    limiters = [make_limiter() for _ in range(20)]
    user_id = uuid.uuid4()
    start = threading.Barrier(len(limiters))
    allowed: list[bool] = []
    lock = threading.Lock()

    def reserve(limiter: RateLimiter) -> None:
        start.wait()
        decision = limiter.reserve(user_id, limit=2)
        with lock:
            allowed.append(decision.allowed)

    threads = [threading.Thread(target=reserve, args=(limiter,)) for limiter in limiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 18 + [True] * 2


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_a_programming_error(
    make_limiter: Callable[..., RateLimiter], limit: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make_limiter().reserve(uuid.uuid4(), limit=limit)


def test_server_clock_reports_reset_within_the_window(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    decision = make_limiter().reserve(uuid.uuid4())
    assert decision.allowed
    assert decision.remaining == LIMIT - 1
    assert 3590 <= decision.reset_seconds <= 3600


def test_unreachable_redis_raises_retryable_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = create_redis(f"redis://127.0.0.1:{port}/0")
    limiter = RateLimiter(client, limit=LIMIT, admin_limit=ADMIN_LIMIT)
    with pytest.raises(RetryableError):
        limiter.reserve(uuid.uuid4())
    client.close()


class CreateExport:
    """What the export endpoint will do: reserve, then release if the job cannot be enqueued."""

    def __init__(self, limiter: RateLimiter, user_id: uuid.UUID) -> None:
        self._limiter = limiter
        self._user_id = user_id
        self.enqueue_fails = False

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        decision = self._limiter.reserve(self._user_id)
        if not decision.allowed:
            raise rate_limited(decision)
        if self.enqueue_fails and decision.reservation is not None:
            self._limiter.release(decision.reservation)
            raise RetryableError("broker down")
        apply_rate_limit_headers(resp, decision)
        resp.status = falcon.HTTP_202


def test_http_answers_carry_ratelimit_headers_and_429_has_retry_after(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    resource = CreateExport(make_limiter(limit=2), uuid.uuid4())
    app = falcon.App()
    install_problem_handlers(app)
    app.add_route("/api/exports/user", resource)
    client = falcon.testing.TestClient(app)

    resource.enqueue_fails = True
    failed = client.simulate_post("/api/exports/user")
    assert failed.status_code == 503
    resource.enqueue_fails = False

    first = client.simulate_post("/api/exports/user")
    assert first.status_code == 202
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    assert 0 < int(first.headers["RateLimit-Reset"]) <= 3600
    assert "Retry-After" not in first.headers
    assert client.simulate_post("/api/exports/user").status_code == 202

    refused = client.simulate_post("/api/exports/user")
    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert refused.json["type"] == "https://data-export.dev/problems/rate-limited"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
