"""Remembered token verifications: reused until `exp`, dropped when the key goes, bounded.

`jwt.decode` is wrapped to count full verifications; the cache's clock is injected where a test
needs time to pass, and the JWKS source gets its key set from a dict the test edits.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from api.auth import AuthenticationError, JwksKeySource, StaticKey, TokenVerifier, UnknownKeyError
from api.auth.tokens import Principal
from api.auth.verified import VerifiedToken, VerifiedTokens

SECRET = "v" * 48
USER_ID = uuid.UUID("5b0c1d8e-3f2a-4e6b-9c7d-1a2b3c4d5e6f")
JWKS_MAX_AGE_SECONDS = 300.0
JWKS_URL = "https://id.example.test/jwks.json"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every full verification (`jwt.decode` call) by token."""
    calls: list[str] = []
    real_decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


def hs_token(*, lifetime_seconds: int = 300, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": str(USER_ID), "iat": now, "exp": now + lifetime_seconds, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def expiry_of(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


def hs_verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier(StaticKey.from_secret(SECRET), algorithms=["HS256"], **options)


def test_a_verified_token_is_answered_again_without_verifying_it_again(
    decodes: list[str],
) -> None:
    verifier = hs_verifier()
    token = hs_token(roles=["admin"])
    first, second = verifier.verify(token), verifier.verify(token)
    assert first == second
    assert (second.user_id, second.is_admin) == (USER_ID, True)
    assert decodes == [token]


def test_a_token_is_verified_in_full_again_once_its_expiry_has_passed(
    decodes: list[str],
) -> None:
    expiry = int(time.time()) + 60
    token = hs_token(exp=expiry)
    clock = Clock(expiry - 60)
    verifier = hs_verifier(clock=clock)
    verifier.verify(token)
    clock.now += 59
    verifier.verify(token)
    clock.now += 1  # now equal to `exp`: the cached answer is over
    verifier.verify(token)
    assert decodes == [token, token]


def test_an_expired_token_is_refused_although_it_was_verified_before() -> None:
    token = hs_token(lifetime_seconds=1)
    verifier = hs_verifier()
    assert verifier.verify(token).user_id == USER_ID
    time.sleep(max(0.0, expiry_of(token) - time.time()) + 0.05)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token)


def test_a_token_accepted_only_within_the_leeway_is_never_remembered(
    decodes: list[str],
) -> None:
    token = hs_token(lifetime_seconds=-5)
    verifier = hs_verifier(leeway_seconds=30)
    verifier.verify(token)
    verifier.verify(token)
    assert decodes == [token, token]


def test_a_refused_token_is_refused_each_time_and_never_remembered(decodes: list[str]) -> None:
    forged = hs_token(secret="w" * 48)
    verifier = hs_verifier()
    for _ in range(2):
        with pytest.raises(AuthenticationError, match="signature"):
            verifier.verify(forged)
    assert decodes == [forged, forged]


def test_a_cache_size_of_zero_verifies_every_time(decodes: list[str]) -> None:
    token = hs_token()
    verifier = hs_verifier(cache_size=0)
    verifier.verify(token)
    verifier.verify(token)
    assert decodes == [token, token]


def test_a_full_cache_drops_its_oldest_entry() -> None:
    cache = VerifiedTokens(2, clock=Clock(0.0))
    principal = Principal(user_id=USER_ID, is_admin=False, scopes=frozenset())
    entry = VerifiedToken(principal=principal, header={}, key=b"k", expires_at=100.0)
    for token in ("a", "b", "c"):
        cache.put(token, entry)
    assert len(cache) == 2
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, entry, entry)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return dict(jwk)


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_verifier(
    document: dict[str, Any], clock: Clock
) -> tuple[TokenVerifier, Callable[[], int]]:
    """Return a verifier on a JWKS source serving `document`, and a count of its fetches."""
    fetches: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        fetches.append(url)
        copy: dict[str, Any] = json.loads(json.dumps(document))
        return copy

    source = JwksKeySource(
        JWKS_URL, algorithms=["RS256"], fetch=fetch, clock=clock, max_age_seconds=300.0
    )
    return TokenVerifier(source, algorithms=["RS256"]), lambda: len(fetches)


def rs_token(key: rsa.RSAPrivateKey, kid: str) -> str:
    payload = {"sub": str(USER_ID), "exp": int(time.time()) + 3600}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def test_a_key_removed_from_the_jwks_ends_its_tokens_when_the_key_set_is_refreshed(
    signing_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey, decodes: list[str]
) -> None:
    document = {"keys": [public_jwk(signing_key, "k1")]}
    clock = Clock(1000.0)
    verifier, fetches = jwks_verifier(document, clock)
    token = rs_token(signing_key, "k1")
    verifier.verify(token)
    document["keys"] = [public_jwk(other_key, "k2")]  # rotated away at the identity provider
    clock.now += JWKS_MAX_AGE_SECONDS - 1
    verifier.verify(token)  # the fetched key set is still current, as without a cache
    assert (len(decodes), fetches()) == (1, 1)
    clock.now += 1  # the key set is due for a refresh, which no longer has k1
    with pytest.raises(UnknownKeyError):
        verifier.verify(token)
    assert fetches() == 2


def test_a_refreshed_key_set_that_keeps_the_key_verifies_its_tokens_once_more(
    signing_key: rsa.RSAPrivateKey, decodes: list[str]
) -> None:
    document = {"keys": [public_jwk(signing_key, "k1")]}
    clock = Clock(1000.0)
    verifier, fetches = jwks_verifier(document, clock)
    token = rs_token(signing_key, "k1")
    verifier.verify(token)
    clock.now += JWKS_MAX_AGE_SECONDS
    verifier.verify(token)
    verifier.verify(token)
    assert (decodes, fetches()) == ([token, token], 2)
