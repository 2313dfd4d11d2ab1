"""JWT authentication through a tiny Falcon app: good tokens pass, forged and stale ones get 401.

Covers HS256 with a secret and RS256/ES256 with PEM keys, the classic forgeries (`alg: none`, an
HS256 token signed with the RS256 public key, a tampered payload), time and audience/issuer checks,
malformed headers, public and internal routes, and that no failure reveals server internals.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.testing
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from api.auth import (
    AuthMiddleware,
    InternalCredential,
    StaticKey,
    TokenVerifier,
    verifier_from_settings,
)
from api.middleware import RequestContextMiddleware
from api.problems import PROBLEM_CONTENT_TYPE, install_problem_handlers
from pipelines.settings import Settings

SECRET = "s" * 48
INTERNAL_TOKEN = "internal-" + "x" * 40
USER_ID = uuid.UUID("7d6f3c1e-2b4a-4c8e-9f10-0a1b2c3d4e5f")
ISSUER = "https://id.example.test"
AUDIENCE = "data-export"


class WhoAmI:
    """Echo the authenticated principal."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = req.context.principal
        resp.media = {
            "user_id": str(principal.user_id),
            "is_admin": principal.is_admin,
            "scopes": sorted(principal.scopes),
            "token_id": principal.token_id,
        }


class Health:
    """A public route."""

    auth_required = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "principal": req.context.principal}


class Internal:
    """A route for other processes of the system."""

    internal_auth = True

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"done": True}


def make_client(
    verifier: TokenVerifier, internal: InternalCredential | None = None
) -> falcon.testing.TestClient:
    middleware: list[Any] = [
        RequestContextMiddleware(),
        AuthMiddleware(verifier, internal or InternalCredential(INTERNAL_TOKEN)),
    ]
    app = falcon.App(middleware=middleware)
    install_problem_handlers(app)
    app.add_route("/me", WhoAmI())
    app.add_route("/healthz", Health())
    app.add_route("/internal/tick", Internal())
    return falcon.testing.TestClient(app)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": str(USER_ID),
        "iat": now,
        "exp": now + 300,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: Mapping[str, Any], payload: Mapping[str, Any], key: bytes) -> str:
    """Sign a token with HMAC-SHA256 by hand, whatever the key is (pyjwt refuses PEM keys)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_public_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def hs_client() -> falcon.testing.TestClient:
    verifier = TokenVerifier(
        StaticKey.from_secret(SECRET),
        algorithms=["HS256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway_seconds=30,
    )
    return make_client(verifier)


@pytest.fixture
def rs_client(rsa_public_pem: str) -> falcon.testing.TestClient:
    verifier = TokenVerifier(
        StaticKey.from_pem(rsa_public_pem, algorithms=["RS256"]),
        algorithms=["RS256"],
        issuer=ISSUER,
        audience=AUDIENCE,
        leeway_seconds=30,
    )
    return make_client(verifier)


def assert_invalid_token(result: falcon.testing.Result, description: str) -> None:
    assert result.status_code == 401
    assert result.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert result.json["type"] == "https://data-export.dev/problems/unauthorized"
    assert result.json["detail"] == description
    challenge = result.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="data-export", error="invalid_token"')
    assert f'error_description="{description}"' in challenge


def test_valid_hs256_token_yields_principal_with_roles_and_scopes(
    hs_client: falcon.testing.TestClient,
) -> None:
    token = jwt.encode(
        claims(roles=["admin"], scope="exports:read exports:write", jti="t-1"),
        SECRET,
        algorithm="HS256",
    )
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert result.status_code == 200
    assert result.json == {
        "user_id": str(USER_ID),
        "is_admin": True,
        "scopes": ["admin", "exports:read", "exports:write"],
        "token_id": "t-1",
    }


def test_token_without_admin_role_is_not_admin(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(scope="exports:read"), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert result.json["is_admin"] is False
    assert result.json["token_id"] is None


def test_valid_rs256_token_verifies_with_pem_public_key(
    rs_client: falcon.testing.TestClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    result = rs_client.simulate_get("/me", headers=bearer(token))
    assert result.status_code == 200
    assert result.json["user_id"] == str(USER_ID)


def test_valid_es256_token_verifies_with_pem_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = TokenVerifier(StaticKey.from_pem(pem, algorithms=["ES256"]), algorithms=["ES256"])
    token = jwt.encode(claims(aud=None, iss=None), key, algorithm="ES256")
    result = make_client(verifier).simulate_get("/me", headers=bearer(token))
    assert result.status_code == 200


def test_pem_key_of_the_wrong_family_is_refused_at_startup(rsa_public_pem: str) -> None:
    with pytest.raises(ValueError, match="ES256"):
        StaticKey.from_pem(rsa_public_pem, algorithms=["ES256"])


def test_unsigned_alg_none_token_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims(roles=["admin"])).encode())
    result = hs_client.simulate_get("/me", headers=bearer(f"{header}.{payload}."))
    assert_invalid_token(result, "The token signing algorithm is not accepted.")


def test_hs256_token_signed_with_the_rs256_public_key_is_rejected(
    rs_client: falcon.testing.TestClient, rsa_public_pem: str
) -> None:
    forged = hand_made_token(
        {"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), rsa_public_pem.encode()
    )
    result = rs_client.simulate_get("/me", headers=bearer(forged))
    assert_invalid_token(result, "The token signing algorithm is not accepted.")


def test_verifier_refuses_to_mix_symmetric_and_asymmetric_algorithms() -> None:
    with pytest.raises(ValueError, match="cannot be accepted together"):
        TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256", "RS256"])
    with pytest.raises(ValueError, match="never 'none'"):
        TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["none"])


def test_expired_token_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now - 600, exp=now - 31), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token has expired.")


def test_token_expired_within_leeway_is_still_accepted(
    hs_client: falcon.testing.TestClient,
) -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now - 600, exp=now - 5), SECRET, algorithm="HS256")
    assert hs_client.simulate_get("/me", headers=bearer(token)).status_code == 200


def test_token_not_valid_yet_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 120), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token is not valid yet.")


def test_token_for_another_audience_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(aud="billing"), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token is not meant for this service.")


def test_token_without_audience_is_rejected_when_one_is_configured(
    hs_client: falcon.testing.TestClient,
) -> None:
    token = jwt.encode(claims(aud=None), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token lacks the required 'aud' claim.")


def test_token_from_another_issuer_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(iss="https://evil.example.test"), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token was not issued by a trusted issuer.")


def test_token_without_expiry_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(exp=None), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token lacks the required 'exp' claim.")


def test_token_whose_subject_is_not_a_uuid_is_rejected(
    hs_client: falcon.testing.TestClient,
) -> None:
    token = jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token subject is not a user id.")


def test_token_with_roles_not_a_list_is_rejected(hs_client: falcon.testing.TestClient) -> None:
    token = jwt.encode(claims(roles="admin"), SECRET, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token roles claim must be a list of strings.")


def test_tampered_payload_fails_signature_check(hs_client: falcon.testing.TestClient) -> None:
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged_payload = b64url(json.dumps(claims(roles=["admin"])).encode())
    result = hs_client.simulate_get("/me", headers=bearer(f"{header}.{forged_payload}.{signature}"))
    assert_invalid_token(result, "The token signature is invalid.")


def test_token_signed_with_another_secret_fails_signature_check(
    hs_client: falcon.testing.TestClient,
) -> None:
    token = jwt.encode(claims(), "o" * 48, algorithm="HS256")
    result = hs_client.simulate_get("/me", headers=bearer(token))
    assert_invalid_token(result, "The token signature is invalid.")


def test_missing_authorization_header_gets_a_bare_challenge(
    hs_client: falcon.testing.TestClient,
) -> None:
    result = hs_client.simulate_get("/me")
    assert result.status_code == 401
    # RFC 6750 §3.1: a request without credentials gets no error code.
    assert result.headers["WWW-Authenticate"] == 'Bearer realm="data-export"'
    assert result.json["detail"] == "A bearer token is required."


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two tokens", "Bearer <script>", "bearer-less"],
)
def test_garbled_authorization_header_is_rejected(
    hs_client: falcon.testing.TestClient, authorization: str
) -> None:
    result = hs_client.simulate_get("/me", headers={"Authorization": authorization})
    assert result.status_code == 401
    assert result.headers["WWW-Authenticate"].startswith('Bearer realm="data-export"')
    assert result.headers["Content-Type"] == PROBLEM_CONTENT_TYPE


def test_garbage_bearer_token_is_malformed(hs_client: falcon.testing.TestClient) -> None:
    result = hs_client.simulate_get("/me", headers=bearer("not.a.jwt"))
    assert_invalid_token(result, "The token is malformed.")


def test_failures_reveal_no_internals(
    hs_client: falcon.testing.TestClient, rsa_public_pem: str
) -> None:
    forged = hand_made_token({"alg": "HS256"}, claims(), rsa_public_pem.encode())
    tampered = forged[:-4] + "AAAA"
    for token in ("not.a.jwt", forged, tampered, "eyJhbGciOiJIUzI1NiJ9.e30.x"):
        result = hs_client.simulate_get("/me", headers=bearer(token))
        text = result.text + result.headers["WWW-Authenticate"]
        for leak in ("Traceback", "jwt.", "Error", "pyjwt", SECRET, "line "):
            assert leak not in text


def test_public_route_needs_no_token(hs_client: falcon.testing.TestClient) -> None:
    result = hs_client.simulate_get("/healthz")
    assert result.status_code == 200
    assert result.json == {"status": "ok", "principal": None}


def test_unknown_route_answers_404_before_asking_for_credentials(
    hs_client: falcon.testing.TestClient,
) -> None:
    assert hs_client.simulate_get("/nowhere").status_code == 404


def test_internal_route_accepts_only_the_internal_token(
    hs_client: falcon.testing.TestClient,
) -> None:
    user_token = jwt.encode(claims(roles=["admin"]), SECRET, algorithm="HS256")
    assert hs_client.simulate_post("/internal/tick", headers=bearer(user_token)).status_code == 401
    assert hs_client.simulate_post("/internal/tick", headers=bearer("x" * 49)).status_code == 401
    assert hs_client.simulate_post("/internal/tick").status_code == 401
    accepted = hs_client.simulate_post("/internal/tick", headers=bearer(INTERNAL_TOKEN))
    assert accepted.status_code == 200


def test_internal_route_is_closed_when_no_internal_token_is_configured() -> None:
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    client = make_client(verifier, InternalCredential(None))
    assert client.simulate_post("/internal/tick", headers=bearer("")).status_code == 401
    assert client.simulate_post("/internal/tick", headers=bearer("anything")).status_code == 401


def test_verifier_from_settings_checks_issuer_audience_and_leeway() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/dataexport",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "S3_BUCKET": "data-export",
            "S3_ACCESS_KEY_ID": "key",
            "S3_SECRET_ACCESS_KEY": "secret",
            "JWT_SECRET": SECRET,
            "JWT_ISSUER": ISSUER,
            "JWT_AUDIENCE": AUDIENCE,
            "JWT_LEEWAY_SECONDS": "0",
        }
    )
    verifier = verifier_from_settings(settings)
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).user_id == USER_ID
    now = int(time.time())
    client = make_client(verifier)
    stale = jwt.encode(claims(exp=now - 5), SECRET, algorithm="HS256")
    assert client.simulate_get("/me", headers=bearer(stale)).status_code == 401
    other = jwt.encode(claims(aud="other"), SECRET, algorithm="HS256")
    assert client.simulate_get("/me", headers=bearer(other)).status_code == 401


def test_audience_is_not_checked_when_none_is_configured() -> None:
    verifier = TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"])
    token = jwt.encode(claims(aud="anything"), SECRET, algorithm="HS256")
    assert verifier.verify(token).user_id == USER_ID
