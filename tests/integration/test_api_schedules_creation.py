"""Creating scheduled exports against a real PostgreSQL: roles, caps, list totals, idempotency.

An administrator's scheduled export needs the admin role in the token and in `users.role`
(the scheduler only sees the latter); one user holds a bounded number of schedules and pending
requests; list totals count every row whatever the page; an Idempotency-Key on a one-off request
replays it instead of creating a twin.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon.testing
import pytest
from api_support import add_user, auth, build_client

from api.database import ThreadLocalDatabase
from api.openapi import build_spec
from api.schedule_policy import (
    MAX_PENDING_REQUESTS_PER_USER,
    MAX_SCHEDULES_PER_USER,
)
from pipelines.database import connect

SCHEDULES = "/api/exports/schedules"
REQUESTS = "/api/exports/schedule"


@pytest.fixture
def database(database_url: str) -> Iterator[ThreadLocalDatabase]:
    found = ThreadLocalDatabase(database_url)
    yield found
    found.close()


@pytest.fixture
def client(database: ThreadLocalDatabase) -> falcon.testing.TestClient:
    return build_client(database=database)


def tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()


def new_schedule(
    client: falcon.testing.TestClient,
    user: uuid.UUID,
    body: dict[str, Any] | None = None,
    **tok: Any,
) -> falcon.testing.Result:
    document = {"name": "nightly", "cron": "0 3 * * *", "format": "json", **(body or {})}
    return client.simulate_post(SCHEDULES, json=document, headers=auth(user, **tok))


def new_request(
    client: falcon.testing.TestClient,
    user: uuid.UUID,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    **tok: Any,
) -> falcon.testing.Result:
    headers = auth(user, **tok)
    if key is not None:
        headers["Idempotency-Key"] = key
    document = {"format": "json", "scheduledAt": tomorrow(), **(body or {})}
    return client.simulate_post(REQUESTS, json=document, headers=headers)


def execute(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(database_url) as conn:
        cursor = conn.execute(query, params)
        found = cursor.fetchall() if cursor.description else []
        conn.commit()
    return found


def count(database_url: str, table: str, user: uuid.UUID) -> int:
    return int(
        execute(database_url, f"SELECT count(*) FROM {table} WHERE user_id = %s", user)[0][0]
    )


def fill_schedules(database_url: str, user: uuid.UUID, how_many: int) -> None:
    execute(
        database_url,
        "INSERT INTO export_schedules (user_id, name, format, cron_expression, next_run_at)"
        " SELECT %s, 'filler ' || n, 'json', '0 3 * * *', now() + interval '1 day'"
        " FROM generate_series(1, %s) AS n",
        user,
        how_many,
    )


def fill_requests(database_url: str, user: uuid.UUID, how_many: int) -> None:
    execute(
        database_url,
        "INSERT INTO export_requests (user_id, format, scheduled_at)"
        " SELECT %s, 'json', now() + interval '1 day' FROM generate_series(1, %s)",
        user,
        how_many,
    )


# -- the admin role from both sources ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (SCHEDULES, {"exportType": "bulk"}),
        (SCHEDULES, {"options": {"includeSystemFields": True}}),
        (REQUESTS, {"exportType": "bulk"}),
        (REQUESTS, {"options": {"includeSystemFields": True}}),
    ],
)
def test_admin_token_of_a_user_account_cannot_schedule_admin_exports(
    client: falcon.testing.TestClient, database_url: str, path: str, body: dict[str, Any]
) -> None:
    user = add_user(database_url)  # users.role = 'user'
    create = new_schedule if path == SCHEDULES else new_request
    result = create(client, user, body, roles=("admin",))
    assert result.status_code == 403, result.text
    assert "administrator account" in result.json["detail"]
    assert count(database_url, "export_schedules", user) == 0
    assert count(database_url, "export_requests", user) == 0


@pytest.mark.parametrize("path", [SCHEDULES, REQUESTS])
def test_admin_token_of_an_admin_account_schedules_bulk_exports(
    client: falcon.testing.TestClient, database_url: str, path: str
) -> None:
    admin = add_user(database_url, role="admin")
    create = new_schedule if path == SCHEDULES else new_request
    result = create(client, admin, {"exportType": "bulk"}, roles=("admin",))
    assert result.status_code == 201, result.text


@pytest.mark.parametrize("path", [SCHEDULES, REQUESTS])
def test_soft_deleted_account_cannot_schedule_exports(
    client: falcon.testing.TestClient, database_url: str, path: str
) -> None:
    admin = add_user(database_url, role="admin")
    execute(database_url, "UPDATE users SET deleted_at = now() WHERE id = %s", admin)
    create = new_schedule if path == SCHEDULES else new_request
    result = create(client, admin, {"exportType": "bulk"}, roles=("admin",))
    assert result.status_code == 403, result.text


# -- caps on what one user holds ----------------------------------------------------------


def test_user_at_the_schedule_cap_is_refused_until_one_is_deleted(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user = add_user(database_url)
    fill_schedules(database_url, user, MAX_SCHEDULES_PER_USER - 1)
    assert new_schedule(client, user).status_code == 201
    refused = new_schedule(client, user)
    assert refused.status_code == 409, refused.text
    assert refused.json["type"].endswith("/conflict")
    assert refused.json["limit"] == MAX_SCHEDULES_PER_USER
    assert count(database_url, "export_schedules", user) == MAX_SCHEDULES_PER_USER
    other = add_user(database_url)
    assert new_schedule(client, other).status_code == 201  # a cap per user, not for all
    victim = new_schedule(client, other).json["schedule"]["id"]
    assert client.simulate_delete(f"{SCHEDULES}/{victim}", headers=auth(other)).status_code == 204
    one = execute(database_url, "SELECT id FROM export_schedules WHERE user_id = %s LIMIT 1", user)
    deleted = client.simulate_delete(f"{SCHEDULES}/{one[0][0]}", headers=auth(user))
    assert deleted.status_code == 204
    assert new_schedule(client, user).status_code == 201


def test_user_at_the_pending_request_cap_is_refused_and_cancelled_ones_do_not_count(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user = add_user(database_url)
    fill_requests(database_url, user, MAX_PENDING_REQUESTS_PER_USER)
    refused = new_request(client, user)
    assert refused.status_code == 409, refused.text
    assert refused.json["type"].endswith("/conflict")
    assert refused.json["limit"] == MAX_PENDING_REQUESTS_PER_USER
    execute(
        database_url,
        "UPDATE export_requests SET status = 'cancelled', cancelled_at = now()"
        " WHERE id = (SELECT id FROM export_requests WHERE user_id = %s LIMIT 1)",
        user,
    )
    assert new_request(client, user).status_code == 201


def test_concurrent_creations_never_exceed_the_schedule_cap(
    client: falcon.testing.TestClient, database: ThreadLocalDatabase, database_url: str
) -> None:
    user = add_user(database_url)
    fill_schedules(database_url, user, MAX_SCHEDULES_PER_USER - 2)
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def create() -> None:
        barrier.wait()
        try:
            statuses.append(new_schedule(client, user).status_code)
        finally:
            database.close()  # this thread's connection

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) == [201, 201, 409, 409, 409, 409]
    assert count(database_url, "export_schedules", user) == MAX_SCHEDULES_PER_USER


@pytest.mark.parametrize("path", [SCHEDULES, REQUESTS])
def test_administrator_gets_more_room_than_the_user_cap(
    client: falcon.testing.TestClient, database_url: str, path: str
) -> None:
    admin = add_user(database_url, role="admin")
    if path == SCHEDULES:
        fill_schedules(database_url, admin, MAX_SCHEDULES_PER_USER)
        result = new_schedule(client, admin, roles=("admin",))
    else:
        fill_requests(database_url, admin, MAX_PENDING_REQUESTS_PER_USER)
        result = new_request(client, admin, roles=("admin",))
    assert result.status_code == 201, result.text


def test_cap_refusal_is_in_the_openapi_document() -> None:
    paths = build_spec()["paths"]
    assert "409" in paths[SCHEDULES]["post"]["responses"]
    assert "409" in paths[REQUESTS]["post"]["responses"]


# -- list totals -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "items"), [(SCHEDULES, "schedules"), (REQUESTS, "requests")])
def test_list_past_the_last_page_still_reports_the_total(
    client: falcon.testing.TestClient, database_url: str, path: str, items: str
) -> None:
    user = add_user(database_url)
    for _ in range(3):
        created = new_schedule(client, user) if path == SCHEDULES else new_request(client, user)
        assert created.status_code == 201
    for query, shown in [("limit=2&offset=0", 2), ("limit=2&offset=2", 1), ("limit=2&offset=4", 0)]:
        page = client.simulate_get(path, query_string=query, headers=auth(user))
        assert page.status_code == 200
        assert len(page.json[items]) == shown
        assert page.json["total"] == 3


# -- Idempotency-Key on one-off requests -------------------------------------------------


def test_retry_with_the_same_key_and_body_replays_the_request(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user = add_user(database_url)
    body = {"scheduledAt": tomorrow(), "priority": "high"}
    first = new_request(client, user, body, key="retry-1")
    again = new_request(client, user, body, key="retry-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["request"]["id"] == first.json["request"]["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert count(database_url, "export_requests", user) == 1


def test_same_key_with_another_body_is_refused_as_reused(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user = add_user(database_url)
    assert new_request(client, user, {"priority": "low"}, key="k").status_code == 201
    reused = new_request(client, user, {"priority": "high"}, key="k")
    assert reused.status_code == 422, reused.text
    assert reused.json["type"].endswith("/idempotency-key-reused")
    assert count(database_url, "export_requests", user) == 1


def test_keys_are_per_user_and_requests_without_a_key_are_not_replayed(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user, other = add_user(database_url), add_user(database_url)
    body = {"scheduledAt": tomorrow()}
    assert new_request(client, user, body, key="shared").status_code == 201
    assert new_request(client, other, body, key="shared").status_code == 201
    assert new_request(client, user, body).status_code == 201
    assert new_request(client, user, body).status_code == 201
    assert count(database_url, "export_requests", user) == 3


def test_replay_is_answered_after_the_requested_time_has_passed(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    user = add_user(database_url)
    body = {"scheduledAt": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
    first = new_request(client, user, body, key="late")
    assert first.status_code == 201, first.text
    time.sleep(1.2)  # the body's time is now in the past: new, it would be refused
    again = new_request(client, user, body, key="late")
    assert again.status_code == 200, again.text
    assert again.json["request"]["id"] == first.json["request"]["id"]


def test_concurrent_retries_with_one_key_create_one_request(
    client: falcon.testing.TestClient, database: ThreadLocalDatabase, database_url: str
) -> None:
    user = add_user(database_url)
    body = {"scheduledAt": tomorrow()}
    barrier = threading.Barrier(5)
    results: list[falcon.testing.Result] = []

    def post() -> None:
        barrier.wait()
        try:
            results.append(new_request(client, user, body, key="burst"))
        finally:
            database.close()  # this thread's connection

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(result.status_code for result in results) == [200, 200, 200, 200, 201]
    assert len({result.json["request"]["id"] for result in results}) == 1
    assert count(database_url, "export_requests", user) == 1


def test_malformed_idempotency_key_is_refused(
    client: falcon.testing.TestClient, database_url: str
) -> None:
    result = new_request(client, add_user(database_url), key="not visible ascii")
    assert result.status_code == 400


def test_idempotency_key_and_replay_are_in_the_openapi_document() -> None:
    operation = build_spec()["paths"][REQUESTS]["post"]
    assert [parameter["name"] for parameter in operation["parameters"]] == ["Idempotency-Key"]
    assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
    assert "422" in operation["responses"]


@pytest.mark.parametrize("key", [None, "retry-1"], ids=["without-key", "with-key"])
def test_a_past_time_is_named_with_the_other_bad_fields_or_alone_for_a_keyed_request(
    client: falcon.testing.TestClient, database_url: str, key: str | None
) -> None:
    user = add_user(database_url)
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    both_bad = new_request(client, user, {"format": "pdf", "scheduledAt": past}, key=key)
    only_time_bad = new_request(client, user, {"scheduledAt": past}, key=key)

    assert both_bad.status_code == only_time_bad.status_code == 400
    named = {error["field"] for error in both_bad.json["errors"]}
    # Without a key every problem is named at once; a keyed request is checked for a replay
    # before its time, so a past time is named once the body is otherwise valid.
    assert named == ({"format", "scheduledAt"} if key is None else {"format"})
    assert [error["field"] for error in only_time_bad.json["errors"]] == ["scheduledAt"]
