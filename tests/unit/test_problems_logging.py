"""Structured logs: JSON lines with context ids, and one access-log line per request.

Failures are only debuggable from the logs (clients see generic problems), so these tests check
that every line carries the request id and that the access log says who asked what and how it went.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import falcon
import falcon.testing
import jwt
import pytest

from api.auth import AuthMiddleware, InternalCredential, StaticKey, TokenVerifier
from api.middleware import RequestContextMiddleware
from api.problems import install_problem_handlers
from pipelines.logs import JsonFormatter, TextFormatter, configure_logging, log_context

SECRET = "l" * 48
USER_ID = uuid.UUID("3f2b0c9e-1d4a-4b7c-8e6f-5a4b3c2d1e0f")


def formatted(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return formatter.format(record)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("pipelines.test", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_json_line_carries_timestamp_level_logger_and_message() -> None:
    line = json.loads(formatted(JsonFormatter(), record("exported %d rows", 42)))
    assert line["level"] == "INFO"
    assert line["logger"] == "pipelines.test"
    assert line["message"] == "exported 42 rows"
    assert line["timestamp"].endswith("+00:00")
    assert "request_id" not in line
    assert "export_id" not in line


def test_json_line_carries_bound_request_and_export_ids() -> None:
    with log_context(request_id="req-1"), log_context(export_id="exp-9"):
        line = json.loads(formatted(JsonFormatter(), record("working")))
    assert line["request_id"] == "req-1"
    assert line["export_id"] == "exp-9"
    after = json.loads(formatted(JsonFormatter(), record("done")))
    assert "request_id" not in after


def test_json_line_includes_extra_fields_and_exception() -> None:
    try:
        raise ValueError("bad row")
    except ValueError:
        failing = record("failed", rows=3, user=USER_ID)
        failing.exc_info = sys.exc_info()
    line = json.loads(formatted(JsonFormatter(), failing))
    assert line["rows"] == 3
    assert line["user"] == str(USER_ID)
    assert "ValueError: bad row" in line["exc_info"]


def test_text_format_appends_context_ids() -> None:
    with log_context(export_id="exp-3"):
        line = formatted(TextFormatter(), record("hello"))
    assert line.endswith("hello [export_id=exp-3]")


def test_configure_logging_writes_json_lines_to_the_stream() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging(level="INFO", log_format="json", stream=stream)
        logging.getLogger("pipelines.demo").info("one %s", "line")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    assert json.loads(stream.getvalue())["message"] == "one line"


class Item:
    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: str) -> None:
        logging.getLogger("api.resources").info("looking up %s", item_id)
        resp.media = {"id": item_id}


@pytest.fixture
def client() -> falcon.testing.TestClient:
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    middleware: list[Any] = [
        RequestContextMiddleware(),
        AuthMiddleware(verifier, InternalCredential(None)),
    ]
    app = falcon.App(middleware=middleware)
    install_problem_handlers(app)
    app.add_route("/items/{item_id}", Item())
    return falcon.testing.TestClient(app)


def bearer() -> dict[str, str]:
    token = jwt.encode({"sub": str(USER_ID), "exp": 4_000_000_000}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Capture what the root logger emits, formatted as JSON at emit time like production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)


def test_access_log_line_names_route_status_duration_user_and_request_id(
    client: falcon.testing.TestClient, json_lines: io.StringIO
) -> None:
    result = client.simulate_get("/items/42", headers=bearer())
    request_id = result.headers["X-Request-ID"]
    lines = [json.loads(text) for text in json_lines.getvalue().splitlines()]
    inside, access = lines
    assert inside["logger"] == "api.resources"
    assert inside["request_id"] == request_id
    assert access["logger"] == "api.access"
    assert access["method"] == "GET"
    assert access["route"] == "/items/{item_id}"
    assert access["status"] == 200
    assert access["duration_ms"] >= 0
    assert access["user_id"] == str(USER_ID)
    assert access["request_id"] == request_id


def test_access_log_records_failed_requests_without_a_user(
    client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="api.access"):
        client.simulate_get("/items/42")
        client.simulate_get("/missing")
    lines = [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "api.access"
    ]
    assert [(line["status"], line["route"], line["user_id"]) for line in lines] == [
        (401, "/items/{item_id}", None),
        (404, None, None),
    ]


def test_request_id_is_cleared_after_the_request(client: falcon.testing.TestClient) -> None:
    client.simulate_get("/items/1", headers=bearer())
    line = json.loads(JsonFormatter().format(record("between requests")))
    assert "request_id" not in line


def test_sane_client_request_id_is_kept_and_a_hostile_one_replaced(
    client: falcon.testing.TestClient,
) -> None:
    kept = client.simulate_get("/items/1", headers={**bearer(), "X-Request-ID": "abc-123.x"})
    assert kept.headers["X-Request-ID"] == "abc-123.x"
    hostile = client.simulate_get(
        "/items/1", headers={**bearer(), "X-Request-ID": 'x" level="ERROR'}
    )
    assert hostile.headers["X-Request-ID"] != 'x" level="ERROR'
    assert len(hostile.headers["X-Request-ID"]) == 32
