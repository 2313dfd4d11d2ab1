"""Authentication for the API: JWT verification, JWKS keys, the Falcon middleware.

Import from here; the submodules are split by job (tokens, JWKS keys, HTTP guard, settings).
"""

from __future__ import annotations

from api.auth.config import (
    internal_credential_from_settings,
    key_source_from_settings,
    verifier_from_settings,
)
from api.auth.guard import AuthMiddleware, InternalCredential, bearer_token, challenge
from api.auth.jwks import JwksKeySource, KeySetUnavailableError, fetch_jwks
from api.auth.tokens import (
    ADMIN_ROLE,
    AuthenticationError,
    KeySource,
    Principal,
    StaticKey,
    TokenVerifier,
    UnknownKeyError,
)

__all__ = [
    "ADMIN_ROLE",
    "AuthMiddleware",
    "AuthenticationError",
    "InternalCredential",
    "JwksKeySource",
    "KeySetUnavailableError",
    "KeySource",
    "Principal",
    "StaticKey",
    "TokenVerifier",
    "UnknownKeyError",
    "bearer_token",
    "challenge",
    "fetch_jwks",
    "internal_credential_from_settings",
    "key_source_from_settings",
    "verifier_from_settings",
]
