"""The API as operators run it: a real gunicorn with two workers, real PostgreSQL and Redis.

One server per module on a free loopback port, stopped at the end; every wait is bounded.
Covers the rate limit under 20 concurrent requests from one user (exactly the limit accepted,
across processes), idempotent retries, forged tokens, readiness, metrics, and that the real
dispatcher puts the export's id on the broker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
from api_gunicorn import AUDIENCE, REQUEST_TIMEOUT_SECONDS, Server, run_gunicorn
from api_support import add_user

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RATE_LIMIT = 5
CONCURRENT_REQUESTS = 20


@pytest.fixture(scope="module")
def server(
    stack: Any, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A gunicorn with two workers and a small rate limit."""
    workdir = Path(tmp_path_factory.mktemp("gunicorn"))
    env = {"EXPORT_RATE_LIMIT": str(RATE_LIMIT), "API_WORKERS": "2"}
    with run_gunicorn(stack, template_database, workdir, env=env) as running:
        yield running


def test_exactly_the_limit_is_accepted_under_20_concurrent_requests(server: Server) -> None:
    user = add_user(server.database_url)
    headers = server.auth(user)
    start = threading.Barrier(CONCURRENT_REQUESTS)

    def post(_: int) -> int:
        start.wait(timeout=REQUEST_TIMEOUT_SECONDS)
        answer = server.request(
            "POST", "/api/exports/user", body={"format": "json"}, headers=headers
        )
        return answer[0]

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        statuses = list(pool.map(post, range(CONCURRENT_REQUESTS)))
    assert sorted(statuses) == [202] * RATE_LIMIT + [429] * (CONCURRENT_REQUESTS - RATE_LIMIT)
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM data_exports WHERE user_id = %s", (user,)
        ).fetchone()
    assert row == (RATE_LIMIT,)


def test_idempotent_retry_returns_the_same_export(server: Server) -> None:
    user = add_user(server.database_url)
    headers = {**server.auth(user), "Idempotency-Key": f"retry-{uuid.uuid4()}"}
    body = {"format": "csv", "options": {"compression": "gzip"}}
    first = server.request("POST", "/api/exports/user", body=body, headers=headers)
    again = server.request("POST", "/api/exports/user", body=body, headers=headers)
    assert (first[0], again[0]) == (202, 200)
    assert json.loads(first[2])["export"]["id"] == json.loads(again[2])["export"]["id"]
    other = server.request("POST", "/api/exports/user", body={"format": "xml"}, headers=headers)
    assert other[0] == 422


def test_the_real_dispatcher_puts_the_export_on_the_broker(server: Server) -> None:
    user = add_user(server.database_url)
    status, headers, body = server.request(
        "POST", "/api/exports/user", body={"format": "jsonl"}, headers=server.auth(user)
    )
    assert status == 202
    export_id = json.loads(body)["export"]["id"]
    client = redis.Redis.from_url(server.broker_url)
    try:
        messages = [json.loads(raw) for raw in client.hvals("dramatiq:exports.msgs")]
    finally:
        client.close()
    [message] = [m for m in messages if m["args"] == [export_id]]
    assert message["actor_name"] == "export_user"
    assert message["kwargs"]["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"aud": "someone-else"}, id="wrong-audience"),
        pytest.param({"exp": int(time.time()) - 3600}, id="expired"),
    ],
)
def test_tokens_with_bad_claims_get_401(server: Server, claims: dict[str, Any]) -> None:
    user = add_user(server.database_url)
    forged = server.token(user, **claims)
    status, headers, body = server.request(
        "GET", "/api/exports", headers={"Authorization": f"Bearer {forged}"}
    )
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["type"].endswith("/unauthorized")


def test_unsigned_and_tampered_tokens_get_401(server: Server) -> None:
    user = add_user(server.database_url)
    unsigned = jwt.encode(
        {"sub": str(user), "exp": int(time.time()) + 300, "aud": AUDIENCE, "roles": ["admin"]},
        key="",
        algorithm="none",
    )
    header, _, signature = server.token(user).split(".")
    _, payload, _ = unsigned.split(".")
    for forged in (unsigned, f"{header}.{payload}.{signature}"):
        status, _, _ = server.request(
            "POST", "/api/exports/cleanup", headers={"Authorization": f"Bearer {forged}"}
        )
        assert status == 401


def test_readiness_and_metrics_answer(server: Server) -> None:
    status, _, body = server.request("GET", "/readyz")
    assert status == 200
    assert json.loads(body)["checks"] == {"database": "ok", "broker": "ok", "rateLimiter": "ok"}
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"data_export_database_up 1.0" in body
    assert b"data_export_http_requests_total" in body


def test_metrics_show_a_schedule_the_scheduler_left_unfired(server: Server) -> None:
    owner = add_user(server.database_url)
    with psycopg.connect(server.database_url) as conn:
        conn.execute(
            "INSERT INTO export_schedules (user_id, name, format, cron_expression, next_run_at)"
            " VALUES (%s, 'nightly', 'json', '@daily', now() - interval '20 minutes')",
            (owner,),
        )
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    gauges = dict(
        line.split(" ", 1)
        for line in body.decode().splitlines()
        if line.startswith(("data_export_overdue_scheduled_count", "data_export_oldest_due_age"))
    )
    assert float(gauges["data_export_overdue_scheduled_count"]) == 1.0
    assert float(gauges["data_export_oldest_due_age_seconds"]) >= 1200
