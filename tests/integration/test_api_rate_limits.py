"""Per-user rate limits from `export_permissions` through the API, on real PostgreSQL and Redis.

Several apps share one database and one Redis, as gunicorn workers on several hosts would, each
with its own Redis client and database connections. A user's own `rate_limit_per_hour` replaces
the role default; NULL, no row or an expired row falls back to it; the headers show the limit
that applied.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from threading import Barrier
from typing import Any

import falcon.testing
import pytest
import redis
from api_support import add_user, auth, build_client, make_settings

from api.database import APPLICATION_NAME, ThreadLocalDatabase
from api.dispatch import RecordingDispatcher
from api.ratelimit import RateLimitDecision, RateLimiter, Reservation, create_redis
from pipelines.database import connect

DEFAULT_LIMIT = 4
ADMIN_LIMIT = 6
CONCURRENT_REQUESTS = 20
# Apps serving the concurrent requests: stand-ins for gunicorn workers with their own clients.
APPS = 4
# Seconds a thread waits for the others at the start line before the test fails.
BARRIER_TIMEOUT_SECONDS = 30
# Milliseconds `pg_terminate_backend` waits for a terminated session to be gone.
TERMINATE_WAIT_MS = 5000


@dataclass
class App:
    """One API app and what it is wired to."""

    client: falcon.testing.TestClient
    database: ThreadLocalDatabase
    dispatcher: RecordingDispatcher


@pytest.fixture
def make_app(database_url: str, redis_url: str) -> Iterator[Callable[[], App]]:
    prefix = f"test:api-limits:{uuid.uuid4().hex}:"
    clients: list[redis.Redis] = []
    apps: list[App] = []

    def make() -> App:
        client = create_redis(redis_url)
        clients.append(client)
        limiter = RateLimiter(
            client, limit=DEFAULT_LIMIT, admin_limit=ADMIN_LIMIT, key_prefix=prefix
        )
        database = ThreadLocalDatabase(database_url)
        dispatcher = RecordingDispatcher()
        test_client = build_client(
            settings=make_settings(), database=database, limiter=limiter, dispatcher=dispatcher
        )
        app = App(test_client, database, dispatcher)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.database.close()
    for client in clients:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


class ConnectionLosing:
    """The real limiter, except that the next reservation is followed by a lost database link.

    After taking the slot it terminates the API's database sessions (and waits until they are
    gone), so the export's write that follows fails as with a dropped connection.
    """

    def __init__(self, inner: RateLimiter, database_url: str) -> None:
        self.inner = inner
        self.database_url = database_url
        self.lose_next = False

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        decision = self.inner.reserve(user_id, is_admin=is_admin, limit=limit)
        if self.lose_next:
            self.lose_next = False
            with connect(self.database_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = %s",
                    (TERMINATE_WAIT_MS, APPLICATION_NAME),
                )
        return decision

    def release(self, reservation: Reservation) -> bool:
        return self.inner.release(reservation)


def grant_limit(
    database_url: str, user: uuid.UUID, limit: int | None, *, expired: bool = False
) -> None:
    """Give the user an `export_permissions` row with this own limit (None: NULL)."""
    with connect(database_url) as conn:
        conn.execute(
            """
            INSERT INTO export_permissions (user_id, rate_limit_per_hour, expires_at)
            VALUES (%s, %s, CASE WHEN %s THEN now() - interval '1 minute' END)
            ON CONFLICT (user_id) DO UPDATE SET rate_limit_per_hour = EXCLUDED.rate_limit_per_hour,
                expires_at = EXCLUDED.expires_at
            """,
            (user, limit, expired),
        )
        conn.commit()


def post(app: App, user: uuid.UUID, **token: Any) -> falcon.testing.Result:
    """Request a JSON export of the user's data."""
    return app.client.simulate_post(
        "/api/exports/user", json={"format": "json"}, headers=auth(user, **token)
    )


def exports_of(database_url: str, user: uuid.UUID) -> int:
    """Return how many export rows the user has."""
    with connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM data_exports WHERE user_id = %s", (user,))
        found = row.fetchone()
    assert found is not None
    return int(found[0])


def all_at_once(
    apps: list[App], send: Callable[[App], falcon.testing.Result]
) -> list[falcon.testing.Result]:
    """Send CONCURRENT_REQUESTS requests from as many threads released together, across apps."""
    start = Barrier(CONCURRENT_REQUESTS)

    def request(index: int) -> falcon.testing.Result:
        app = apps[index % len(apps)]
        start.wait(timeout=BARRIER_TIMEOUT_SECONDS)
        try:
            return send(app)
        finally:
            app.database.close()  # this pool thread's connection

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        return list(pool.map(request, range(CONCURRENT_REQUESTS)))


def test_own_limit_of_two_accepts_exactly_two_of_twenty_concurrent_requests(
    database_url: str, make_app: Callable[[], App]
) -> None:
    apps = [make_app() for _ in range(APPS)]
    user = add_user(database_url)
    grant_limit(database_url, user, 2)

    results = all_at_once(apps, lambda app: post(app, user))

    statuses = sorted(result.status_code for result in results)
    assert statuses == [202] * 2 + [429] * (CONCURRENT_REQUESTS - 2)
    assert exports_of(database_url, user) == 2
    assert sum(len(app.dispatcher.of_kind("user_export")) for app in apps) == 2
    assert {result.headers["ratelimit-limit"] for result in results} == {"2"}
    refused = [result for result in results if result.status_code == 429]
    assert all(result.headers["ratelimit-remaining"] == "0" for result in refused)
    assert all(0 < int(result.headers["retry-after"]) <= 3600 for result in refused)


def test_concurrent_retries_of_one_request_replay_it_instead_of_taking_slots(
    database_url: str, make_app: Callable[[], App]
) -> None:
    apps = [make_app() for _ in range(APPS)]
    user = add_user(database_url)
    grant_limit(database_url, user, 1)
    headers = {**auth(user), "Idempotency-Key": f"retry-{uuid.uuid4()}"}

    results = all_at_once(
        apps,
        lambda app: app.client.simulate_post(
            "/api/exports/user", json={"format": "json"}, headers=headers
        ),
    )

    statuses = sorted(result.status_code for result in results)
    assert statuses == [200] * (CONCURRENT_REQUESTS - 1) + [202]
    assert len({result.json["export"]["id"] for result in results}) == 1
    assert exports_of(database_url, user) == 1
    assert sum(len(app.dispatcher.of_kind("user_export")) for app in apps) == 1
    # The one slot the export took is the only one taken: another request is refused.
    assert post(apps[0], user).status_code == 429


def test_headers_show_the_users_own_limit(database_url: str, make_app: Callable[[], App]) -> None:
    app = make_app()
    user = add_user(database_url)
    grant_limit(database_url, user, 2)
    first, second, third = (post(app, user) for _ in range(3))
    assert [result.status_code for result in (first, second, third)] == [202, 202, 429]
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert second.headers["ratelimit-remaining"] == "0"
    assert third.json["type"] == "https://data-export.dev/problems/rate-limited"
    assert "limit of 2 accepted exports" in third.json["detail"]


def test_null_own_limit_falls_back_to_the_default(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    user = add_user(database_url)
    grant_limit(database_url, user, None)
    results = [post(app, user) for _ in range(DEFAULT_LIMIT + 1)]
    assert [result.status_code for result in results] == [202] * DEFAULT_LIMIT + [429]
    assert {result.headers["ratelimit-limit"] for result in results} == {str(DEFAULT_LIMIT)}


def test_user_without_a_permissions_row_gets_the_default(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    user = add_user(database_url)
    results = [post(app, user) for _ in range(DEFAULT_LIMIT + 1)]
    assert [result.status_code for result in results] == [202] * DEFAULT_LIMIT + [429]
    assert results[0].headers["ratelimit-limit"] == str(DEFAULT_LIMIT)


def test_admin_with_null_own_limit_gets_the_admin_default(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    admin = add_user(database_url, role="admin")
    grant_limit(database_url, admin, None)
    results = [post(app, admin, roles=("admin",)) for _ in range(ADMIN_LIMIT + 1)]
    assert [result.status_code for result in results] == [202] * ADMIN_LIMIT + [429]
    assert results[0].headers["ratelimit-limit"] == str(ADMIN_LIMIT)


def test_admin_own_limit_replaces_the_admin_default(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    admin = add_user(database_url, role="admin")
    grant_limit(database_url, admin, 1)
    results = [post(app, admin, roles=("admin",)) for _ in range(2)]
    assert [result.status_code for result in results] == [202, 429]
    assert results[0].headers["ratelimit-limit"] == "1"


def test_own_limit_above_the_default_is_honoured(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    user = add_user(database_url)
    generous = DEFAULT_LIMIT + 3
    grant_limit(database_url, user, generous)
    results = [post(app, user) for _ in range(generous + 1)]
    assert [result.status_code for result in results] == [202] * generous + [429]
    assert results[-1].headers["ratelimit-limit"] == str(generous)


def test_expired_permissions_row_falls_back_to_the_default(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    user = add_user(database_url)
    grant_limit(database_url, user, 1, expired=True)
    results = [post(app, user) for _ in range(DEFAULT_LIMIT + 1)]
    assert [result.status_code for result in results] == [202] * DEFAULT_LIMIT + [429]
    assert results[0].headers["ratelimit-limit"] == str(DEFAULT_LIMIT)


def test_lowering_the_own_limit_applies_to_the_next_request(
    database_url: str, make_app: Callable[[], App]
) -> None:
    app = make_app()
    user = add_user(database_url)
    for _ in range(3):
        assert post(app, user).status_code == 202
    grant_limit(database_url, user, 2)
    refused = post(app, user)
    assert refused.status_code == 429
    assert (refused.headers["ratelimit-limit"], refused.headers["ratelimit-remaining"]) == (
        "2",
        "0",
    )
    assert exports_of(database_url, user) == 3


def test_export_whose_write_fails_gives_its_slot_back(database_url: str, redis_url: str) -> None:
    user = add_user(database_url)
    grant_limit(database_url, user, 1)
    database = ThreadLocalDatabase(database_url)
    client = create_redis(redis_url)
    prefix = f"test:api-limits:{uuid.uuid4().hex}:"
    limiter = ConnectionLosing(
        RateLimiter(client, limit=DEFAULT_LIMIT, admin_limit=ADMIN_LIMIT, key_prefix=prefix),
        database_url,
    )
    dispatcher = RecordingDispatcher()
    api = build_client(
        settings=make_settings(), database=database, limiter=limiter, dispatcher=dispatcher
    )
    try:
        limiter.lose_next = True
        failed = api.simulate_post("/api/exports/user", json={"format": "json"}, headers=auth(user))
        assert failed.status_code == 503
        assert exports_of(database_url, user) == 0
        assert dispatcher.messages == []
        accepted = api.simulate_post(
            "/api/exports/user", json={"format": "json"}, headers=auth(user)
        )
        assert accepted.status_code == 202
        assert accepted.headers["ratelimit-remaining"] == "0"
    finally:
        database.close()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
