"""The API app through falcon.testing with injected collaborators and no sockets.

Covers what needs no database: authentication through the real app, admin-only endpoints,
request validation naming each bad field, body size and media type, method errors, health,
readiness, metrics, the OpenAPI document, and 503 when the database is down.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from api_support import auth, build_client, token

from api.metrics import ApiMetrics
from api.openapi import build_spec
from api.problems import PROBLEM_BASE_URI, PROBLEM_CONTENT_TYPE
from pipelines.errors import RetryableError

USER = uuid.UUID("0d3c7e8a-5b1f-4c2d-9e6a-7f8091a2b3c4")
ADMIN = uuid.UUID("1e4d8f9b-6c2a-4d3e-8f7b-8091a2b3c4d5")


def _problem_type(result: Any) -> str:
    assert result.headers["content-type"] == PROBLEM_CONTENT_TYPE
    slug: str = result.json["type"].removeprefix(PROBLEM_BASE_URI)
    return slug


def test_missing_token_answers_401_with_bearer_challenge() -> None:
    result = build_client().simulate_get("/api/exports")
    assert result.status_code == 401
    assert result.headers["www-authenticate"].startswith("Bearer")
    assert _problem_type(result) == "unauthorized"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(
            _b64({"alg": "none", "typ": "JWT"})
            + "."
            + _b64({"sub": str(USER), "exp": 4102444800})
            + ".",
            id="alg-none",
        ),
        pytest.param(token(USER, lifetime_seconds=-3600), id="expired"),
        pytest.param(token(USER, secret="another-secret-" + "z" * 40), id="wrong-key"),
        pytest.param(
            ".".join(
                [
                    token(USER).split(".")[0],
                    _b64({"sub": str(ADMIN), "exp": 4102444800, "roles": ["admin"]}),
                    token(USER).split(".")[2],
                ]
            ),
            id="tampered-payload",
        ),
    ],
)
def test_forged_tokens_are_refused_by_the_app(forged: str) -> None:
    result = build_client().simulate_get(
        "/api/exports", headers={"Authorization": f"Bearer {forged}"}
    )
    assert result.status_code == 401
    assert "WWW-Authenticate" in result.headers or "www-authenticate" in result.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/exports/bulk"),
        ("POST", "/api/exports/cleanup"),
    ],
)
def test_non_admin_on_admin_endpoint_answers_403(method: str, path: str) -> None:
    result = build_client().simulate_request(
        method, path, json={"format": "json"}, headers=auth(USER)
    )
    assert result.status_code == 403
    assert _problem_type(result) == "forbidden"


def test_system_stats_for_a_non_admin_answer_403() -> None:
    result = build_client().simulate_get(
        "/api/exports/stats", params={"include_system": "true"}, headers=auth(USER)
    )
    assert result.status_code == 403


def test_scoped_token_without_write_scope_cannot_create() -> None:
    result = build_client().simulate_post(
        "/api/exports/user", json={"format": "json"}, headers=auth(USER, scope="exports:read")
    )
    assert result.status_code == 403
    assert "exports:write" in result.json["detail"]


def test_invalid_export_request_names_every_bad_field() -> None:
    body = {
        "format": "pdf",
        "color": "blue",
        "options": {
            "compression": "brotli",
            "shout": True,
            "dateRange": {"start": "2024-05-10", "end": "2024-13-40"},
        },
    }
    result = build_client().simulate_post("/api/exports/user", json=body, headers=auth(USER))
    assert result.status_code == 400
    fields = {error["field"] for error in result.json["errors"]}
    assert fields == {
        "format",
        "color",
        "options.compression",
        "options.shout",
        "options.dateRange.end",
    }


def test_end_before_start_is_a_400_on_the_date_range() -> None:
    body = {"format": "csv", "options": {"dateRange": {"start": "2024-05-10", "end": "2024-05-01"}}}
    result = build_client().simulate_post("/api/exports/user", json=body, headers=auth(USER))
    assert result.status_code == 400
    assert [error["field"] for error in result.json["errors"]] == ["options.dateRange"]


def test_malformed_json_answers_400() -> None:
    result = build_client().simulate_post(
        "/api/exports/user",
        body=b"{not json",
        headers={**auth(USER), "Content-Type": "application/json"},
    )
    assert result.status_code == 400
    assert _problem_type(result) == "invalid-request"


def test_deeply_nested_json_answers_400_not_500() -> None:
    for body in (
        b"[" * 5000 + b"]" * 5000,
        b'{"format": "json", "options": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        result = build_client().simulate_post(
            "/api/exports/user",
            body=body,
            headers={**auth(USER), "Content-Type": "application/json"},
        )
        assert result.status_code == 400
        assert _problem_type(result) == "invalid-request"
        assert result.json["detail"] == "The request body is nested too deeply."


def test_end_date_past_the_calendar_answers_400_naming_the_field() -> None:
    body = {"format": "json", "options": {"dateRange": {"end": "9999-12-31"}}}
    result = build_client().simulate_post("/api/exports/user", json=body, headers=auth(USER))
    assert result.status_code == 400
    assert [error["field"] for error in result.json["errors"]] == ["options.dateRange.end"]


def test_malformed_idempotency_key_answers_400() -> None:
    result = build_client().simulate_post(
        "/api/exports/user",
        json={"format": "json"},
        headers={**auth(USER), "Idempotency-Key": "x" * 300},
    )
    assert result.status_code == 400
    assert result.json["errors"][0]["field"] == "Idempotency-Key"


def test_oversized_body_answers_413() -> None:
    result = build_client().simulate_post(
        "/api/exports/user",
        body=b"{" + b" " * 70_000 + b"}",
        headers={**auth(USER), "Content-Type": "application/json"},
    )
    assert result.status_code == 413


def test_wrong_content_type_answers_415() -> None:
    result = build_client().simulate_post(
        "/api/exports/user",
        body=b"format=json",
        headers={**auth(USER), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert result.status_code == 415


def test_wrong_method_answers_405_problem() -> None:
    result = build_client().simulate_delete("/api/exports/user", headers=auth(USER))
    assert result.status_code == 405
    assert _problem_type(result) == "method-not-allowed"


def test_bad_list_parameters_are_named() -> None:
    result = build_client().simulate_get(
        "/api/exports",
        params={"status": "lost", "limit": "1000", "offset": "-1", "sort": "x"},
        headers=auth(USER),
    )
    assert result.status_code == 400
    assert {error["field"] for error in result.json["errors"]} == {"sort"}
    result = build_client().simulate_get(
        "/api/exports",
        params={"status": "lost", "limit": "1000", "offset": "-1"},
        headers=auth(USER),
    )
    assert {error["field"] for error in result.json["errors"]} == {"status", "limit", "offset"}


@pytest.mark.parametrize("path", ["/api/exports/schedules", "/api/exports/schedule"])
def test_bad_schedule_page_parameters_are_named(path: str) -> None:
    result = build_client().simulate_get(
        path, params={"limit": "0", "offset": "100001"}, headers=auth(USER)
    )
    assert result.status_code == 400
    assert {error["field"] for error in result.json["errors"]} == {"limit", "offset"}


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param(" 5", "must be an integer", id="leading-space"),
        pytest.param("+5", "must be an integer", id="plus-sign"),
        pytest.param("1_0", "must be an integer", id="underscore"),
        pytest.param("\u0665", "must be an integer", id="arabic-indic-digit-five"),
        pytest.param("9" * 5000, "must be from 1 to 100", id="five-thousand-digits"),
    ],
)
def test_list_limit_takes_plain_ascii_digits_only(raw: str, detail: str) -> None:
    result = build_client().simulate_get("/api/exports", params={"limit": raw}, headers=auth(USER))
    assert result.status_code == 400
    assert [(error["field"], error["detail"]) for error in result.json["errors"]] == [
        ("limit", detail)
    ]


def test_database_down_answers_503_with_retry_after() -> None:
    result = build_client().simulate_get("/api/exports", headers=auth(USER))
    assert result.status_code == 503
    assert result.headers["retry-after"]
    assert "database" not in result.text.lower()


def test_healthz_needs_no_token() -> None:
    result = build_client().simulate_get("/healthz")
    assert (result.status_code, result.json) == (200, {"status": "ok"})


def test_readyz_reports_each_check() -> None:
    def fine() -> None:
        return None

    def down() -> None:
        raise RetryableError("broker unavailable")

    ready = build_client(checks={"database": fine, "broker": fine}).simulate_get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "broker": "ok"}
    not_ready = build_client(checks={"database": fine, "broker": down}).simulate_get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json["checks"] == {"database": "ok", "broker": "unavailable"}


def test_metrics_count_requests_by_route_template() -> None:
    metrics = ApiMetrics(read_health=lambda: {"queued_count": 3})
    client = build_client(metrics=metrics)
    client.simulate_get("/healthz")
    client.simulate_get(f"/api/exports/{uuid.uuid4()}/status")
    text = client.simulate_get("/metrics").text
    assert 'data_export_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/api/exports/{export_id}/status",status="401"' in text
    assert "data_export_queued_count 3.0" in text
    assert "data_export_database_up 1.0" in text


# gunicorn hands any method of capitals to the app; wsgiref's validator only warns about them.
@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
def test_metrics_count_invented_methods_under_one_label() -> None:
    metrics = ApiMetrics(read_health=lambda: {})
    client = build_client(metrics=metrics)
    for method in ("XQWERTY", "XASDFGH", "BREW"):
        assert client.simulate_request(method, "/healthz").status_code == 400
    text = client.simulate_get("/metrics").text
    assert 'method="OTHER",route="/healthz",status="400"} 3.0' in text
    assert "XQWERTY" not in text
    assert "BREW" not in text


def test_metrics_say_when_the_database_is_down() -> None:
    def down() -> dict[str, Any]:
        raise RetryableError("database unavailable")

    text = build_client(metrics=ApiMetrics(read_health=down)).simulate_get("/metrics").text
    assert "data_export_database_up 0.0" in text


def test_openapi_document_lists_every_route_and_method() -> None:
    spec = build_client().simulate_get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    routes = {
        "/api/exports/user": {"post"},
        "/api/exports/bulk": {"post"},
        "/api/exports/cleanup": {"post"},
        "/api/exports/stats": {"get"},
        "/api/exports": {"get"},
        "/api/exports/{exportId}/status": {"get"},
        "/api/exports/{exportId}/download": {"get"},
        "/api/exports/{exportId}/verify": {"post"},
        "/api/exports/schedule": {"get", "post"},
        "/api/exports/schedule/{requestId}": {"get", "delete"},
        "/api/exports/schedules": {"get", "post"},
        "/api/exports/schedules/{scheduleId}": {"get", "delete"},
        "/api/exports/schedules/{scheduleId}/pause": {"post"},
        "/api/exports/schedules/{scheduleId}/resume": {"post"},
        "/api/exports/process-scheduled": {"post"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/openapi.json": {"get"},
    }
    assert {path: set(item) for path, item in spec["paths"].items()} == routes


def test_openapi_document_is_valid_openapi_3_1() -> None:
    import jsonschema_rs  # schemathesis's validator

    spec = build_spec()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "414":  # 414 comes from gunicorn
                    content = response["content"]
                    assert list(content) == [PROBLEM_CONTENT_TYPE], (path, method, status)
    for schema in spec["components"]["schemas"].values():
        assert jsonschema_rs.meta.is_valid(schema)


def test_every_error_the_app_answers_is_a_documented_problem_type() -> None:
    result = build_client().simulate_get("/nowhere")
    assert result.status_code == 404
    assert _problem_type(result) == "not-found"


def test_json_null_body_is_not_an_empty_body() -> None:
    result = build_client().simulate_post(
        "/api/exports/cleanup",
        body=b"null",
        headers={**auth(ADMIN, roles=("admin",)), "Content-Type": "application/json"},
    )
    assert result.status_code == 400


def test_absurd_list_offset_is_a_400_not_a_database_error() -> None:
    result = build_client().simulate_get(
        "/api/exports", params={"offset": "14797780912898888098019016704"}, headers=auth(USER)
    )
    assert result.status_code == 400
    assert result.json["errors"][0]["field"] == "offset"
