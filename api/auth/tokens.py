"""Bearer-token verification: a JWT in, a `Principal` out, or an error a client may read.

Only the configured algorithms are accepted (never `none`, never HS* beside RS*/ES*); `exp` and a
UUID `sub` are required, `nbf`/`iat` checked, `iss`/`aud` checked when configured. Every failure
becomes `AuthenticationError` whose description is safe to send back: it names what is wrong with
the token and nothing about the server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from api.auth.verified import DEFAULT_MAX_ENTRIES, VerifiedToken, VerifiedTokens
from pipelines.settings import ASYMMETRIC_ALGORITHMS, SYMMETRIC_ALGORITHMS

# The role (in `roles`) or scope (in `scope`) that makes a principal an administrator.
ADMIN_ROLE = "admin"
# Claims a token must carry: an expiry so a stolen token dies, a subject so we know whose it is.
REQUIRED_CLAIMS = ("exp", "sub")


class AuthenticationError(Exception):
    """A request's credentials are missing or invalid; `description` is safe to show a client."""

    def __init__(self, description: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        # RFC 6750 error code; None when the request carried no credentials at all.
        self.error = error


class UnknownKeyError(AuthenticationError):
    """The token names a signing key the service does not know."""

    def __init__(self) -> None:
        super().__init__("The token is signed with an unknown key.")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user id from `sub`, admin flag, roles/scopes and the token id."""

    user_id: uuid.UUID
    is_admin: bool
    scopes: frozenset[str]
    token_id: str | None = None


class KeySource(Protocol):
    """Where verification keys come from: a secret, a PEM key or a JWKS endpoint."""

    def key_for(self, header: Mapping[str, Any]) -> Any:
        """Return the key that verifies a token with this (unverified) header."""


class StaticKey:
    """One key for every token: an HS* shared secret or a loaded RS*/ES* public key."""

    def __init__(self, key: Any) -> None:
        self._key = key

    @classmethod
    def from_secret(cls, secret: str) -> StaticKey:
        """Return the key source for a shared HMAC secret."""
        return cls(secret.encode())

    @classmethod
    def from_pem(cls, pem: str, *, algorithms: Iterable[str]) -> StaticKey:
        """Load a PEM public key once, checking it suits the configured algorithms."""
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError as exc:
            raise ValueError("JWT_PUBLIC_KEY is not a PEM public key") from exc
        for name in algorithms:
            wanted = EllipticCurvePublicKey if name.startswith("ES") else RSAPublicKey
            if not isinstance(key, wanted):
                raise ValueError(f"JWT_PUBLIC_KEY is not a key for {name}")
        return cls(key)

    def key_for(self, header: Mapping[str, Any]) -> Any:
        """Return the one key, whatever the header says."""
        return self._key


# pyjwt errors, most specific first, and what a client is told about each.
_DESCRIPTIONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "The token has expired."),
    (jwt.ImmatureSignatureError, "The token is not valid yet."),
    (jwt.InvalidAudienceError, "The token is not meant for this service."),
    (jwt.InvalidIssuerError, "The token was not issued by a trusted issuer."),
    (jwt.InvalidSignatureError, "The token signature is invalid."),
    (jwt.InvalidAlgorithmError, "The token signing algorithm is not accepted."),
    (jwt.DecodeError, "The token is malformed."),
)


def _describe(exc: jwt.PyJWTError) -> str:
    """Turn a pyjwt error into a description that is safe to send to a client."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token lacks the required '{exc.claim}' claim."
    for kind, description in _DESCRIPTIONS:
        if isinstance(exc, kind):
            return description
    return "The token is invalid."


class TokenVerifier:
    """Verify JWTs with one key source and the configured algorithms and claims.

    Verified tokens are remembered (`api.auth.verified`) until their expiry or until the key
    source stops returning the key that verified them; `cache_size=0` turns that off.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        algorithms: Iterable[str],
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: int = 0,
        cache_size: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._algorithms = tuple(algorithms)
        if not self._algorithms or "none" in {name.lower() for name in self._algorithms}:
            raise ValueError("at least one signing algorithm is required, and never 'none'")
        chosen = set(self._algorithms)
        if chosen & SYMMETRIC_ALGORITHMS and chosen & ASYMMETRIC_ALGORITHMS:
            raise ValueError("HS* and RS*/ES* algorithms cannot be accepted together")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway_seconds = leeway_seconds
        self._verified = VerifiedTokens(cache_size, clock=clock)

    def verify(self, token: str) -> Principal:
        """Check `token` and return its principal, raising AuthenticationError if it is bad."""
        known = self._verified.get(token)
        if known is not None:
            # Asked every time: a JWKS refresh that dropped or replaced the key ends the entry.
            if self._keys.key_for(known.header) is known.key:
                return known.principal
            self._verified.forget(token)
        verified = self._verify_signed(token)
        self._verified.put(token, verified)
        return verified.principal

    def _verify_signed(self, token: str) -> VerifiedToken:
        """Verify signature and claims in full and return what that proved."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError("The token is malformed.") from exc
        if header.get("alg") not in self._algorithms:
            raise AuthenticationError("The token signing algorithm is not accepted.")
        key = self._keys.key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_seconds,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_aud": self._audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(_describe(exc)) from exc
        return VerifiedToken(
            principal=principal_from_claims(claims),
            header=header,
            key=key,
            # pyjwt checked that `exp` is an integer (or a number it truncates to one).
            expires_at=int(claims["exp"]),
        )


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """Build the principal from verified claims: UUID `sub`, `roles` list, `scope` string."""
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise AuthenticationError("The token subject is not a user id.") from exc
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise AuthenticationError("The token roles claim must be a list of strings.")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise AuthenticationError("The token scope claim must be a space-separated string.")
    scopes = frozenset(roles) | frozenset(scope.split())
    token_id = claims.get("jti")
    return Principal(
        user_id=user_id,
        is_admin=ADMIN_ROLE in scopes,
        scopes=scopes,
        token_id=token_id if isinstance(token_id, str) else None,
    )
