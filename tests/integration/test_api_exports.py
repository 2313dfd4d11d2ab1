"""The export endpoints against real PostgreSQL, Redis and S3, with a recording dispatcher.

Covers creation (202, Location, rate-limit headers, audit entry, message), idempotent retries and
reused keys, the rate limit counting only accepted exports, a broker that is down (row failed
with a reason, slot given back), permissions from `export_permissions`, listing with filters,
status with a window of its audit entries (`log_limit`, `log_offset`), another user's export
answering 404, verification, cleanup and statistics.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import falcon.testing
import pytest
import redis
from api_support import add_user, auth, build_client, complete, make_settings

from api.database import ThreadLocalDatabase
from api.dispatch import RecordingDispatcher, broker_down
from api.openapi import build_spec
from api.public_text import ENQUEUE_FAILED_CODE, error_message, event_message
from api.queries import DEFAULT_LOG_WINDOW, MAX_LOG_WINDOW, MAX_OFFSET
from api.ratelimit import RateLimiter, create_redis
from pipelines.database import connect
from pipelines.jobs import NewExport, append_log, create_export, export_logs
from pipelines.logs import JsonFormatter
from pipelines.options import ExportOptions

LIMIT = 3


@dataclass
class Api:
    """A test client and what it is wired to."""

    client: falcon.testing.TestClient
    dispatcher: RecordingDispatcher
    database_url: str


@pytest.fixture
def limiter_factory(redis_url: str) -> Iterator[Callable[[], RateLimiter]]:
    prefix = f"test:api:{uuid.uuid4().hex}:"
    clients: list[redis.Redis] = []

    def make() -> RateLimiter:
        client = create_redis(redis_url)
        clients.append(client)
        return RateLimiter(client, limit=LIMIT, admin_limit=LIMIT + 2, key_prefix=prefix)

    yield make
    for client in clients:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def api(database_url: str, limiter_factory: Callable[[], RateLimiter]) -> Iterator[Api]:
    dispatcher = RecordingDispatcher()
    database = ThreadLocalDatabase(database_url)
    client = build_client(
        settings=make_settings(),
        database=database,
        limiter=limiter_factory(),
        dispatcher=dispatcher,
    )
    yield Api(client, dispatcher, database_url)
    database.close()


def create(
    api: Api, user: uuid.UUID, body: dict[str, Any] | None = None, *, key: str | None = None
) -> Any:
    headers = auth(user) if key is None else {**auth(user), "Idempotency-Key": key}
    return api.client.simulate_post(
        "/api/exports/user", json=body or {"format": "json"}, headers=headers
    )


def test_user_export_is_accepted_queued_enqueued_and_audited(api: Api) -> None:
    user = add_user(api.database_url)
    result = create(api, user, {"format": "csv", "options": {"compression": True}})
    assert result.status_code == 202
    export = result.json["export"]
    assert (export["status"], export["format"], export["compression"]) == ("queued", "csv", "zstd")
    assert result.headers["location"] == f"/api/exports/{export['id']}/status"
    assert result.headers["ratelimit-limit"] == str(LIMIT)
    assert result.headers["ratelimit-remaining"] == str(LIMIT - 1)
    [message] = api.dispatcher.of_kind("user_export")
    assert message.export_id == export["id"]
    assert message.request_id == result.headers["x-request-id"]
    status = api.client.simulate_get(export["links"]["status"], headers=auth(user))
    assert status.status_code == 200
    assert [entry["event"] for entry in status.json["export"]["logs"]] == ["export.requested"]


def test_status_lists_a_short_trail_whole_oldest_first_as_the_trail_holds_them(api: Api) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    with connect(api.database_url) as conn:
        for event, level, message in [
            ("export.started", "info", "started"),
            ("export.part_retried", "warning", "part 2 retried: 'reset', \"again\"\n"),
            ("export.failed", "error", "ünïcode"),
        ]:
            append_log(
                conn, event=event, message=message, actor_type="worker", export_id=export_id,
                level=level,
            )  # fmt: skip
        conn.commit()
        trail = export_logs(conn, export_id)

    status = api.client.simulate_get(f"/api/exports/{export_id}/status", headers=auth(user))

    assert status.status_code == 200
    assert status.json["export"]["logs"] == [
        {
            "at": entry["created_at"].isoformat(),
            "event": entry["event"],
            "level": entry["level"],
            "message": event_message(entry["event"]),
            "actorType": entry["actor_type"],
        }
        for entry in trail
    ]
    assert [entry["event"] for entry in status.json["export"]["logs"]] == [
        "export.requested", "export.started", "export.part_retried", "export.failed",
    ]  # fmt: skip
    assert status.json["export"]["logPage"] == {
        "total": 4,
        "limit": DEFAULT_LOG_WINDOW,
        "offset": 0,
    }


def test_raw_failure_text_never_reaches_the_owner(api: Api) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    internal = (
        "gave up after 3 attempts; last error: UploadPart users/x/export.json failed: Could not"
        ' connect to the endpoint URL: "http://minio.internal.corp:9000/prod-exports/users/x"'
        " (lease holder worker-7.internal pid 4242, upload 2~AbCdEf)"
    )
    with connect(api.database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET status = 'failed', error_code = 'attempts_exhausted',"
            " error_message = %s, finished_at = now() WHERE id = %s",
            (internal, export_id),
        )
        append_log(
            conn, event="export.retrying", message=internal, actor_type="worker",
            export_id=export_id, level="warning",
        )  # fmt: skip
        append_log(
            conn, event="export.failed", message=internal, actor_type="worker",
            export_id=export_id, level="error",
        )  # fmt: skip
        conn.commit()

    status = api.client.simulate_get(f"/api/exports/{export_id}/status", headers=auth(user))
    listed = api.client.simulate_get("/api/exports", headers=auth(user))

    assert status.status_code == listed.status_code == 200
    for answer in (status, listed):
        assert "internal" not in answer.text
        assert "2~AbCdEf" not in answer.text
    error = status.json["export"]["error"]
    assert error == {"code": "attempts_exhausted", "message": error_message("attempts_exhausted")}
    assert [entry["message"] for entry in status.json["export"]["logs"]] == [
        event_message("export.requested"),
        event_message("export.retrying"),
        event_message("export.failed"),
    ]


def test_status_of_an_export_without_audit_entries_lists_none(api: Api) -> None:
    user = add_user(api.database_url)
    with connect(api.database_url) as conn:
        created = create_export(
            conn, NewExport(user_id=str(user), export_type="user", options=ExportOptions())
        )
        conn.commit()
    export_id = str(created.row["id"])

    status = api.client.simulate_get(f"/api/exports/{export_id}/status", headers=auth(user))

    assert status.status_code == 200
    assert status.json["export"]["id"] == export_id
    assert status.json["export"]["logs"] == []
    assert status.json["export"]["logPage"] == {
        "total": 0,
        "limit": DEFAULT_LOG_WINDOW,
        "offset": 0,
    }


def add_entries(database_url: str, export_id: str, user: uuid.UUID, count: int) -> list[str]:
    """Append `count` numbered audit entries; return every event of the trail, in order."""
    with connect(database_url) as conn:
        conn.execute(
            """
            INSERT INTO export_logs (event, message, export_id, actor_type, actor_id)
            SELECT 'test.entry_' || n, 'entry ' || n, %s, 'user', %s
            FROM generate_series(1, %s) AS n
            """,
            (export_id, user, count),
        )
        conn.commit()
        return [entry["event"] for entry in export_logs(conn, export_id)]


def status_of(api: Api, user: uuid.UUID, export_id: str, **params: str) -> Any:
    return api.client.simulate_get(
        f"/api/exports/{export_id}/status", params=params, headers=auth(user)
    )


def test_status_lists_the_newest_entries_oldest_first_and_counts_them_all(api: Api) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    trail = add_entries(api.database_url, export_id, user, DEFAULT_LOG_WINDOW + 50)

    status = status_of(api, user, export_id)

    assert status.status_code == 200
    export = status.json["export"]
    assert len(trail) == DEFAULT_LOG_WINDOW + 51  # the request's own entry and the added ones
    assert [entry["event"] for entry in export["logs"]] == trail[-DEFAULT_LOG_WINDOW:]
    assert export["logPage"] == {"total": len(trail), "limit": DEFAULT_LOG_WINDOW, "offset": 0}


def test_status_document_with_a_log_window_matches_its_openapi_schema(api: Api) -> None:
    import jsonschema_rs  # schemathesis's validator

    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    add_entries(api.database_url, export_id, user, 3)
    spec = build_spec()
    envelope = {
        "$ref": "#/components/schemas/ExportStatusEnvelope",
        "components": spec["components"],
    }

    status = status_of(api, user, export_id, log_limit="2", log_offset="1")

    assert status.status_code == 200
    jsonschema_rs.validator_for(envelope).validate(status.json)


@pytest.mark.parametrize(
    ("limit", "offset", "window"),
    [
        pytest.param("10", "0", slice(-10, None), id="newest-ten"),
        pytest.param("10", "100", slice(-110, -100), id="ten-before-the-newest-hundred"),
        pytest.param("10", "145", slice(0, 6), id="window-past-the-oldest-is-cut-short"),
        pytest.param("10", "151", slice(0, 0), id="offset-past-every-entry-lists-none"),
        pytest.param(str(MAX_LOG_WINDOW), "0", slice(None), id="widest-window-lists-all"),
    ],
)
def test_log_limit_and_offset_select_entries_counted_from_the_newest(
    api: Api, limit: str, offset: str, window: slice
) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    trail = add_entries(api.database_url, export_id, user, 150)

    status = status_of(api, user, export_id, log_limit=limit, log_offset=offset)

    assert status.status_code == 200
    export = status.json["export"]
    assert [entry["event"] for entry in export["logs"]] == trail[window]
    assert export["logPage"] == {"total": 151, "limit": int(limit), "offset": int(offset)}


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        pytest.param({"log_limit": "0"}, {"log_limit"}, id="limit-zero"),
        pytest.param({"log_limit": str(MAX_LOG_WINDOW + 1)}, {"log_limit"}, id="limit-too-wide"),
        pytest.param({"log_limit": "abc"}, {"log_limit"}, id="limit-not-an-integer"),
        pytest.param({"log_offset": "-1"}, {"log_offset"}, id="offset-negative"),
        pytest.param({"log_offset": str(MAX_OFFSET + 1)}, {"log_offset"}, id="offset-too-deep"),
        pytest.param({"log_offset": "abc"}, {"log_offset"}, id="offset-not-an-integer"),
        pytest.param(
            {"log_limit": "0", "log_offset": "-1"}, {"log_limit", "log_offset"}, id="both"
        ),
        pytest.param({"limit": "10"}, {"limit"}, id="unknown-parameter"),
    ],
)
def test_bad_log_window_parameters_answer_400_naming_each_field(
    api: Api, params: dict[str, str], fields: set[str]
) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]

    status = status_of(api, user, export_id, **params)

    assert status.status_code == 400
    assert status.headers["content-type"] == "application/problem+json"
    assert status.json["type"].endswith("/invalid-request")
    assert {error["field"] for error in status.json["errors"]} == fields


def test_log_window_parameters_do_not_reveal_another_users_export(api: Api) -> None:
    owner, other = add_user(api.database_url), add_user(api.database_url)
    export_id = create(api, owner).json["export"]["id"]
    window = {"log_limit": "5", "log_offset": "1"}

    theirs = status_of(api, other, export_id, **window)
    missing = status_of(api, other, str(uuid.uuid4()), **window)

    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["detail"] == missing.json["detail"]


def test_accepted_export_is_logged_in_one_json_access_line_with_request_and_export_ids(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    user = add_user(api.database_url)
    with caplog.at_level(logging.INFO):
        result = create(api, user)
    request_id = result.headers["x-request-id"]
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    [access] = [line for line in lines if line["logger"] == "api.access"]
    assert access["export_id"] == result.json["export"]["id"]
    assert (access["request_id"], access["status"], access["user_id"]) == (
        request_id,
        202,
        str(user),
    )
    assert all(line["request_id"] == request_id for line in lines)


def test_export_for_a_user_unknown_to_the_application_is_refused(api: Api) -> None:
    result = create(api, uuid.uuid4())
    assert result.status_code == 403
    assert api.dispatcher.messages == []


def test_export_for_an_account_the_application_deleted_is_refused(api: Api) -> None:
    user = add_user(api.database_url)
    with connect(api.database_url) as conn:
        conn.execute("UPDATE users SET deleted_at = now() WHERE id = %s", (user,))
        conn.commit()
    result = create(api, user)
    assert result.status_code == 403
    assert result.json["detail"] == "This account has no data to export."
    assert api.dispatcher.messages == []


def test_idempotent_retry_returns_the_same_export_without_counting(api: Api) -> None:
    user = add_user(api.database_url)
    first = create(api, user, {"format": "xml"}, key="abc-1")
    again = create(api, user, {"format": "xml"}, key="abc-1")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["export"]["id"] == first.json["export"]["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert len(api.dispatcher.of_kind("user_export")) == 1
    # Two more fresh exports still fit: the retry took no slot.
    assert create(api, user).status_code == 202
    assert create(api, user).status_code == 202
    assert create(api, user).status_code == 429


def test_reused_idempotency_key_with_another_body_answers_422(api: Api) -> None:
    user = add_user(api.database_url)
    assert create(api, user, {"format": "xml"}, key="k").status_code == 202
    reused = create(api, user, {"format": "csv"}, key="k")
    assert reused.status_code == 422
    assert reused.json["type"].endswith("/idempotency-key-reused")


def test_rate_limit_answers_429_with_headers_and_counts_only_accepted(api: Api) -> None:
    user = add_user(api.database_url)
    assert create(api, user, {"format": "pdf"}).status_code == 400  # rejected: not counted
    for _ in range(LIMIT):
        assert create(api, user).status_code == 202
    refused = create(api, user)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit-remaining"] == "0"
    with connect(api.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM data_exports").fetchone()
    assert row is not None
    assert row[0] == LIMIT


def test_broker_down_fails_the_row_with_a_reason_and_frees_the_slot(api: Api) -> None:
    user = add_user(api.database_url)
    api.dispatcher.fail_with = broker_down()
    for _ in range(LIMIT + 1):
        result = create(api, user, key="same")
        assert result.status_code == 503
        assert result.headers["retry-after"]
    with connect(api.database_url) as conn:
        rows = conn.execute(
            "SELECT status, error_code, error_message, idempotency_key FROM data_exports"
        ).fetchall()
    assert len(rows) == LIMIT + 1
    assert all(row[0] == "failed" and row[1] == ENQUEUE_FAILED_CODE and row[2] for row in rows)
    assert all(row[3] is None for row in rows)
    api.dispatcher.fail_with = None
    retried = create(api, user, key="same")
    assert retried.status_code == 202
    assert retried.json["export"]["status"] == "queued"


def test_another_users_export_answers_404_like_a_missing_one(api: Api) -> None:
    owner, other = add_user(api.database_url), add_user(api.database_url)
    export_id = create(api, owner).json["export"]["id"]
    for suffix in ("status", "download"):
        theirs = api.client.simulate_get(f"/api/exports/{export_id}/{suffix}", headers=auth(other))
        missing = api.client.simulate_get(
            f"/api/exports/{uuid.uuid4()}/{suffix}", headers=auth(other)
        )
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json["detail"] == missing.json["detail"]
    verify = api.client.simulate_post(f"/api/exports/{export_id}/verify", headers=auth(other))
    assert verify.status_code == 404
    assert (
        api.client.simulate_get("/api/exports/not-a-uuid/status", headers=auth(other)).status_code
        == 404
    )


def test_admin_may_read_any_export(api: Api) -> None:
    owner, admin = add_user(api.database_url), add_user(api.database_url, role="admin")
    export_id = create(api, owner).json["export"]["id"]
    result = api.client.simulate_get(
        f"/api/exports/{export_id}/status", headers=auth(admin, roles=("admin",))
    )
    assert result.status_code == 200


def test_list_filters_paginates_and_counts_only_own_exports(api: Api) -> None:
    user, other = add_user(api.database_url), add_user(api.database_url)
    ids = [
        create(api, user, {"format": fmt}).json["export"]["id"] for fmt in ("json", "csv", "csv")
    ]
    create(api, other)
    complete(api.database_url, ids[1], object_key=f"exports/{ids[1]}/export.csv")
    page = api.client.simulate_get("/api/exports", params={"limit": "2"}, headers=auth(user))
    assert page.status_code == 200
    assert (page.json["total"], page.json["limit"], page.json["offset"]) == (3, 2, 0)
    assert [item["id"] for item in page.json["exports"]] == [ids[2], ids[1]]
    rest = api.client.simulate_get(
        "/api/exports", params={"limit": "2", "offset": "2"}, headers=auth(user)
    )
    assert [item["id"] for item in rest.json["exports"]] == [ids[0]]
    csv_done = api.client.simulate_get(
        "/api/exports", params={"format": "csv", "status": "completed"}, headers=auth(user)
    )
    assert csv_done.json["total"] == 1
    assert csv_done.json["exports"][0]["id"] == ids[1]


def test_permission_row_restricts_formats_and_own_exports(api: Api) -> None:
    user = add_user(api.database_url)
    with connect(api.database_url) as conn:
        conn.execute(
            "INSERT INTO export_permissions (user_id, allowed_formats) VALUES (%s, ARRAY['csv'])",
            (user,),
        )
        conn.commit()
    assert create(api, user, {"format": "json"}).status_code == 403
    assert create(api, user, {"format": "csv"}).status_code == 202
    with connect(api.database_url) as conn:
        conn.execute(
            "UPDATE export_permissions SET can_export_own = false WHERE user_id = %s", (user,)
        )
        conn.commit()
    assert create(api, user, {"format": "csv"}).status_code == 403


def test_expired_permission_row_falls_back_to_role_defaults(api: Api) -> None:
    user = add_user(api.database_url)
    with connect(api.database_url) as conn:
        conn.execute(
            "INSERT INTO export_permissions (user_id, can_export_own, expires_at)"
            " VALUES (%s, false, now() - interval '1 day')",
            (user,),
        )
        conn.commit()
    assert create(api, user).status_code == 202


def test_system_fields_need_an_admin(api: Api) -> None:
    user = add_user(api.database_url)
    body = {"format": "json", "options": {"includeSystemFields": True}}
    assert create(api, user, body).status_code == 403
    admin = add_user(api.database_url, role="admin")
    result = api.client.simulate_post(
        "/api/exports/user", json=body, headers=auth(admin, roles=("admin",))
    )
    assert result.status_code == 202


def test_bulk_export_by_an_admin_is_queued_on_the_bulk_path(api: Api) -> None:
    admin = add_user(api.database_url, role="admin")
    result = api.client.simulate_post(
        "/api/exports/bulk",
        json={"format": "jsonl", "options": {"includeSystemFields": True, "compression": "gzip"}},
        headers=auth(admin, roles=("admin",)),
    )
    assert result.status_code == 202
    assert result.json["export"]["type"] == "bulk"
    assert [m.export_id for m in api.dispatcher.of_kind("bulk_export")] == [
        result.json["export"]["id"]
    ]
    assert result.headers["ratelimit-limit"] == str(LIMIT + 2)


def test_admin_without_bulk_right_in_their_row_is_refused(api: Api) -> None:
    admin = add_user(api.database_url, role="admin")
    with connect(api.database_url) as conn:
        conn.execute("INSERT INTO export_permissions (user_id) VALUES (%s)", (admin,))
        conn.commit()
    result = api.client.simulate_post(
        "/api/exports/bulk", json={"format": "json"}, headers=auth(admin, roles=("admin",))
    )
    assert result.status_code == 403


def test_verify_queues_completed_exports_and_refuses_others(api: Api) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    path = f"/api/exports/{export_id}/verify"
    assert api.client.simulate_post(path, headers=auth(user)).status_code == 409
    complete(api.database_url, export_id, object_key=f"exports/{export_id}/export.json")
    accepted = api.client.simulate_post(path, headers=auth(user))
    assert accepted.status_code == 202
    [message] = api.dispatcher.of_kind("verification")
    assert (message.export_id, message.request_id) == (export_id, accepted.headers["x-request-id"])
    complete(api.database_url, export_id, object_key="gone", status="expired")
    assert api.client.simulate_post(path, headers=auth(user)).status_code == 410


def test_verify_answers_410_once_retention_ends_before_cleanup_runs(api: Api) -> None:
    user = add_user(api.database_url)
    export_id = create(api, user).json["export"]["id"]
    complete(api.database_url, export_id, object_key=f"exports/{export_id}/export.json")
    with connect(api.database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
            (export_id,),
        )
        conn.commit()
    result = api.client.simulate_post(f"/api/exports/{export_id}/verify", headers=auth(user))
    assert result.status_code == 410
    assert api.dispatcher.of_kind("verification") == []


def test_cleanup_by_an_admin_is_queued_and_audited(api: Api) -> None:
    admin = add_user(api.database_url, role="admin")
    result = api.client.simulate_post("/api/exports/cleanup", headers=auth(admin, roles=("admin",)))
    assert result.status_code == 202
    assert result.json["cleanup"]["status"] == "queued"
    [message] = api.dispatcher.of_kind("cleanup")
    assert message.request_id == result.headers["x-request-id"]
    with connect(api.database_url) as conn:
        row = conn.execute(
            "SELECT actor_type, actor_id FROM export_logs WHERE event = 'cleanup.requested'"
        ).fetchone()
    assert row == ("admin", admin)


def test_stats_give_user_figures_and_system_figures_to_admins(api: Api) -> None:
    user, admin = add_user(api.database_url), add_user(api.database_url, role="admin")
    export_id = create(api, user).json["export"]["id"]
    create(api, user)
    complete(api.database_url, export_id, object_key=f"exports/{export_id}/export.json")
    mine = api.client.simulate_get("/api/exports/stats", headers=auth(user))
    assert mine.status_code == 200
    assert mine.json["user"]["totalExports"] == 2
    assert mine.json["user"]["completedExports"] == 1
    assert mine.json["user"]["completedSizeBytes"] == 11
    assert "system" not in mine.json
    system = api.client.simulate_get(
        "/api/exports/stats",
        params={"include_system": "true"},
        headers=auth(admin, roles=("admin",)),
    )
    assert system.status_code == 200
    assert system.json["user"]["totalExports"] == 0
    assert sum(row["exportCount"] for row in system.json["system"]["summary"]) == 2
    assert system.json["system"]["health"]["queuedCount"] == 1
