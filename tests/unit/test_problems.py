"""Every error answers RFC 9457 problem details, and none reveals what went wrong inside.

A tiny Falcon app with the project's middleware stack raises each kind of error; the tests check
status, media type, stable `type` URIs, the `errors` extension, headers, and the absence of
internals in bodies, while the full story is in the logs with the request id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import falcon
import falcon.testing
import jwt
import pytest

from api.auth import AuthMiddleware, InternalCredential, StaticKey, TokenVerifier
from api.middleware import BodyLimitMiddleware, ContentTypeMiddleware, RequestContextMiddleware
from api.problems import (
    PROBLEM_BASE_URI,
    PROBLEM_CONTENT_TYPE,
    PROBLEM_TYPES,
    ProblemError,
    install_problem_handlers,
    invalid_request,
)
from pipelines.errors import RetryableError
from pipelines.options import InvalidOptionsError, parse_options

SECRET = "p" * 48
BODY_LIMIT_BYTES = 1024
SECRET_DETAIL = "password=hunter2 at db.internal:5432"


class Exports:
    """POST validates options like the real endpoint will; GET only exists to make 405s."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.get_media()
        try:
            parse_options(body.get("format"), body.get("options"), default_compression="zstd")
        except InvalidOptionsError as exc:
            raise invalid_request(exc.problems) from exc
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": True}


class Broken:
    """Fails the way bugs and outages fail."""

    auth_required = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RuntimeError(SECRET_DETAIL)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RetryableError(f"broker down: {SECRET_DETAIL}")


class Export:
    """Answers a domain problem with its own type."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, export_id: str) -> None:
        raise ProblemError("gone", "The export has expired and was deleted.")


@pytest.fixture
def client() -> falcon.testing.TestClient:
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    middleware: list[Any] = [
        RequestContextMiddleware(),
        BodyLimitMiddleware(BODY_LIMIT_BYTES),
        ContentTypeMiddleware(),
        AuthMiddleware(verifier, InternalCredential(None)),
    ]
    app = falcon.App(middleware=middleware)
    install_problem_handlers(app)
    app.add_route("/api/exports/user", Exports())
    app.add_route("/api/exports/{export_id}/status", Export())
    app.add_route("/broken", Broken())
    return falcon.testing.TestClient(app)


@pytest.fixture
def token() -> dict[str, str]:
    claims = {"sub": str(uuid.uuid4()), "exp": 4_000_000_000}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def assert_problem(result: falcon.testing.Result, status: int, slug: str) -> None:
    assert result.status_code == status
    assert result.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = result.json
    assert body["type"] == PROBLEM_BASE_URI + slug
    assert body["status"] == status
    assert body["title"] == PROBLEM_TYPES[slug].title
    assert body["detail"]
    assert body["requestId"] == result.headers["X-Request-ID"]


def test_bad_export_options_answer_400_naming_each_field(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        json={"format": "pdf", "options": {"compression": "rar", "colour": "red"}},
        headers=token,
    )
    assert_problem(result, 400, "invalid-request")
    errors = {item["field"]: item["detail"] for item in result.json["errors"]}
    assert set(errors) == {"format", "options.compression", "options.colour"}
    assert errors["options.colour"] == "unknown option"
    assert result.json["instance"] == "/api/exports/user"


def test_malformed_json_answers_400_problem(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        body=b"{not json",
        headers={**token, "Content-Type": "application/json"},
    )
    assert_problem(result, 400, "invalid-request")


def test_missing_token_answers_401_problem(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/api/exports/user", json={"format": "json"})
    assert_problem(result, 401, "unauthorized")
    assert result.headers["WWW-Authenticate"] == 'Bearer realm="data-export"'


def test_unknown_route_answers_404_problem(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/api/nothing/here")
    assert_problem(result, 404, "not-found")
    assert result.json["instance"] == "/api/nothing/here"


def test_wrong_method_answers_405_problem_with_allow(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_delete("/api/exports/user", headers=token)
    assert_problem(result, 405, "method-not-allowed")
    assert "POST" in result.headers["Allow"]


def test_domain_problem_keeps_its_own_type(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_get("/api/exports/abc/status", headers=token)
    assert_problem(result, 410, "gone")
    assert result.json["detail"] == "The export has expired and was deleted."


def test_body_over_the_limit_answers_413_before_authentication(
    client: falcon.testing.TestClient,
) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        body=b"{" + b" " * BODY_LIMIT_BYTES + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert_problem(result, 413, "payload-too-large")
    assert str(BODY_LIMIT_BYTES) in result.json["detail"]


def test_chunked_body_without_length_answers_411(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert_problem(result, 411, "length-required")


def test_non_json_body_answers_415_problem(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        body=b"format=json",
        headers={**token, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(result, 415, "unsupported-media-type")


def test_json_with_charset_is_accepted(
    client: falcon.testing.TestClient, token: dict[str, str]
) -> None:
    result = client.simulate_post(
        "/api/exports/user",
        body=b'{"format": "csv"}',
        headers={**token, "Content-Type": "application/json; charset=utf-8"},
    )
    assert result.status_code == 202


def test_unexpected_exception_answers_generic_500_and_logs_everything(
    client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="api.problems"):
        result = client.simulate_get("/broken", headers={"X-Request-ID": "req-500-test"})
    assert_problem(result, 500, "internal-error")
    assert result.json["detail"] == PROBLEM_TYPES["internal-error"].default_detail
    for leak in ("hunter2", "RuntimeError", "Traceback", "db.internal"):
        assert leak not in result.text
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1
    assert "hunter2" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert logged[0].getMessage() == "unhandled error on GET /broken"


def test_backend_outage_answers_503_with_retry_after_and_no_internals(
    client: falcon.testing.TestClient,
) -> None:
    result = client.simulate_post("/broken")
    assert_problem(result, 503, "service-unavailable")
    assert int(result.headers["Retry-After"]) > 0
    assert "hunter2" not in result.text
    assert "broker" not in result.text


def test_plain_falcon_errors_render_as_problems(client: falcon.testing.TestClient) -> None:
    app = falcon.App()
    install_problem_handlers(app)

    class Teapot:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise falcon.HTTPError(falcon.HTTP_418)

    app.add_route("/tea", Teapot())
    result = falcon.testing.TestClient(app).simulate_get("/tea")
    assert result.status_code == 418
    assert result.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert result.json["type"] == "about:blank"
    assert result.json["title"] == "I'm a teapot"


def test_every_problem_type_has_a_unique_stable_uri() -> None:
    uris = [problem.uri for problem in PROBLEM_TYPES.values()]
    assert len(set(uris)) == len(uris)
    assert all(uri.startswith("https://data-export.dev/problems/") for uri in uris)
