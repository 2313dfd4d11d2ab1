"""Build the authentication collaborators from `Settings`: the one place auth reads config.

HS* algorithms verify with JWT_SECRET; RS*/ES* with JWT_PUBLIC_KEY, or with the keys served at
JWT_JWKS_URL when no PEM key is given.
"""

from __future__ import annotations

from api.auth.guard import InternalCredential
from api.auth.jwks import JwksFetcher, JwksKeySource, fetch_jwks
from api.auth.tokens import KeySource, StaticKey, TokenVerifier
from pipelines.settings import SYMMETRIC_ALGORITHMS, Settings


def key_source_from_settings(settings: Settings, *, fetch: JwksFetcher = fetch_jwks) -> KeySource:
    """Return the key source the configured algorithms call for."""
    algorithms = settings.jwt_algorithms
    if set(algorithms) <= SYMMETRIC_ALGORITHMS:
        if not settings.jwt_secret:
            raise ValueError("JWT_SECRET is required for HS* algorithms")
        return StaticKey.from_secret(settings.jwt_secret)
    if settings.jwt_public_key:
        return StaticKey.from_pem(settings.jwt_public_key, algorithms=algorithms)
    if settings.jwt_jwks_url:
        return JwksKeySource(settings.jwt_jwks_url, algorithms=algorithms, fetch=fetch)
    raise ValueError("JWT_PUBLIC_KEY or JWT_JWKS_URL is required for RS*/ES* algorithms")


def verifier_from_settings(settings: Settings, *, fetch: JwksFetcher = fetch_jwks) -> TokenVerifier:
    """Return the token verifier the settings describe."""
    return TokenVerifier(
        key_source_from_settings(settings, fetch=fetch),
        algorithms=settings.jwt_algorithms,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_seconds=settings.jwt_leeway_seconds,
    )


def internal_credential_from_settings(settings: Settings) -> InternalCredential:
    """Return the internal-endpoint credential (always refused when INTERNAL_API_TOKEN is empty)."""
    return InternalCredential(settings.internal_api_token)
