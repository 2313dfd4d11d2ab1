"""Keys from a JWKS endpoint: cached, refreshed once on an unknown key id, never hammered.

A real `http.server` on 127.0.0.1 serves the key set and counts requests; the clock is injected so
refresh intervals are tested without sleeping.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import falcon
import falcon.testing
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import (
    AuthMiddleware,
    InternalCredential,
    JwksKeySource,
    KeySetUnavailableError,
    TokenVerifier,
    UnknownKeyError,
    fetch_jwks,
)
from api.problems import install_problem_handlers

USER_ID = uuid.UUID("0c7b1b0e-8a77-4d0b-b0a5-6f8f7b2b9d11")
MIN_INTERVAL_SECONDS = 30.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """An HTTP server on 127.0.0.1 that serves a replaceable JWKS document and counts fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/.well-known/jwks.json"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return dict(jwk)


def signed(key: rsa.RSAPrivateKey, kid: str) -> str:
    payload = {"sub": str(USER_ID), "exp": int(time.time()) + 300}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


class Me:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"user_id": str(req.context.principal.user_id)}


def make_client(source: JwksKeySource) -> falcon.testing.TestClient:
    verifier = TokenVerifier(source, algorithms=["RS256"])
    app = falcon.App(middleware=[AuthMiddleware(verifier, InternalCredential(None))])
    install_problem_handlers(app)
    app.add_route("/me", Me())
    return falcon.testing.TestClient(app)


@pytest.fixture(scope="module")
def first_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def second_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def server(first_key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    jwks = JwksServer()
    jwks.document = {"keys": [public_jwk(first_key, "k1")]}
    jwks.start()
    try:
        yield jwks
    finally:
        jwks.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(server: JwksServer, clock: FakeClock) -> JwksKeySource:
    return JwksKeySource(
        server.url,
        algorithms=["RS256"],
        clock=clock,
        min_refresh_interval_seconds=MIN_INTERVAL_SECONDS,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_known_key_is_fetched_once_and_then_served_from_cache(
    server: JwksServer, source: JwksKeySource, first_key: rsa.RSAPrivateKey
) -> None:
    client = make_client(source)
    for _ in range(5):
        result = client.simulate_get("/me", headers=auth(signed(first_key, "k1")))
        assert result.status_code == 200
        assert result.json == {"user_id": str(USER_ID)}
    assert server.fetches == 1


def test_unknown_kid_triggers_one_refresh_that_finds_a_rotated_key(
    server: JwksServer,
    source: JwksKeySource,
    clock: FakeClock,
    first_key: rsa.RSAPrivateKey,
    second_key: rsa.RSAPrivateKey,
) -> None:
    client = make_client(source)
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    server.document = {"keys": [public_jwk(first_key, "k1"), public_jwk(second_key, "k2")]}
    clock.now += MIN_INTERVAL_SECONDS + 1

    result = client.simulate_get("/me", headers=auth(signed(second_key, "k2")))

    assert result.status_code == 200
    assert server.fetches == 2
    assert client.simulate_get("/me", headers=auth(signed(second_key, "k2"))).status_code == 200
    assert server.fetches == 2


def test_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    server: JwksServer, source: JwksKeySource, clock: FakeClock, first_key: rsa.RSAPrivateKey
) -> None:
    client = make_client(source)
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    clock.now += MIN_INTERVAL_SECONDS + 1

    for number in range(50):
        result = client.simulate_get("/me", headers=auth(signed(first_key, f"made-up-{number}")))
        assert result.status_code == 401
        assert result.json["detail"] == "The token is signed with an unknown key."
    assert server.fetches == 2

    clock.now += MIN_INTERVAL_SECONDS / 2
    client.simulate_get("/me", headers=auth(signed(first_key, "made-up-again")))
    assert server.fetches == 2


def test_concurrent_unknown_kids_share_one_refresh(
    server: JwksServer, source: JwksKeySource, first_key: rsa.RSAPrivateKey
) -> None:
    tokens = [jwt.get_unverified_header(signed(first_key, f"x{n}")) for n in range(20)]

    def look_up(header: Mapping[str, Any]) -> bool:
        try:
            source.key_for(header)
        except UnknownKeyError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=20) as pool:
        found = list(pool.map(look_up, tokens))
    assert found == [False] * 20
    assert server.fetches == 1


def test_expired_key_set_is_fetched_again(
    server: JwksServer, source: JwksKeySource, clock: FakeClock, first_key: rsa.RSAPrivateKey
) -> None:
    client = make_client(source)
    client.simulate_get("/me", headers=auth(signed(first_key, "k1")))
    clock.now += 301
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    assert server.fetches == 2


def test_unreachable_jwks_host_answers_503_without_internals(
    first_key: rsa.RSAPrivateKey,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on that port any more.
    client = make_client(JwksKeySource(f"http://127.0.0.1:{port}/jwks", algorithms=["RS256"]))

    result = client.simulate_get("/me", headers=auth(signed(first_key, "k1")))

    assert result.status_code == 503
    assert result.headers["Retry-After"]
    assert result.json["type"] == "https://data-export.dev/problems/service-unavailable"
    assert "127.0.0.1" not in result.text
    assert "JWKS" not in result.text


def test_failed_refresh_keeps_the_keys_already_known(
    first_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    calls: list[str] = []

    def flaky_fetch(url: str) -> Mapping[str, Any]:
        calls.append(url)
        if len(calls) > 1:
            raise KeySetUnavailableError("host down")
        return {"keys": [public_jwk(first_key, "k1")]}

    source = JwksKeySource(
        "http://127.0.0.1:9/jwks", algorithms=["RS256"], fetch=flaky_fetch, clock=clock
    )
    client = make_client(source)
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    clock.now += 301
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    assert client.simulate_get("/me", headers=auth(signed(first_key, "k1"))).status_code == 200
    assert len(calls) == 2


def test_keys_for_other_algorithms_and_encryption_keys_are_ignored(
    first_key: rsa.RSAPrivateKey,
) -> None:
    encryption = public_jwk(first_key, "enc") | {"use": "enc"}
    other_alg = public_jwk(first_key, "ps") | {"alg": "PS256"}
    source = JwksKeySource(
        "http://127.0.0.1:9/jwks",
        algorithms=["RS256"],
        fetch=lambda url: {"keys": [encryption, other_alg, {"kty": "junk", "kid": "bad"}]},
    )
    for kid in ("enc", "ps", "bad"):
        with pytest.raises(UnknownKeyError):
            source.key_for({"alg": "RS256", "kid": kid})


def test_fetch_refuses_non_http_urls() -> None:
    with pytest.raises(KeySetUnavailableError):
        fetch_jwks("file:///etc/passwd")


def test_stale_keys_keep_verifying_while_a_slow_refresh_runs(
    first_key: rsa.RSAPrivateKey, clock: FakeClock
) -> None:
    refresh_started = threading.Event()
    host_answers = threading.Event()
    calls: list[str] = []

    def slow_fetch(url: str) -> Mapping[str, Any]:
        calls.append(url)
        if len(calls) > 1:
            refresh_started.set()
            host_answers.wait(timeout=10)
        return {"keys": [public_jwk(first_key, "k1")]}

    source = JwksKeySource(
        "http://127.0.0.1:9/jwks", algorithms=["RS256"], fetch=slow_fetch, clock=clock
    )
    header = {"alg": "RS256", "kid": "k1"}
    source.key_for(header)
    clock.now += 301
    refresher = threading.Thread(target=source.key_for, args=(header,))
    refresher.start()
    try:
        assert refresh_started.wait(timeout=10)
        assert source.key_for(header).key_id == "k1"
    finally:
        host_answers.set()
        refresher.join()
    assert len(calls) == 2
