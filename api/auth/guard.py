"""The Falcon side of authentication: a middleware that puts a `Principal` on each request.

Resources opt out with `auth_required = False` (health, readiness, metrics, the OpenAPI document)
or ask for the internal credential with `internal_auth = True` (endpoints other processes call).
Failures answer 401 problem details with an RFC 6750 `WWW-Authenticate: Bearer` challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from typing import Any

import falcon

from api.auth.tokens import AuthenticationError, TokenVerifier
from api.problems import ProblemError

logger = logging.getLogger(__name__)

REALM = "data-export"
# RFC 6750 §2.1 b64token: the characters a bearer token may contain.
_BEARER = re.compile(r"Bearer +([A-Za-z0-9\-._~+/]+=*) *", re.IGNORECASE)


def challenge(error: AuthenticationError) -> str:
    """Return the `WWW-Authenticate` value for a failed authentication (RFC 6750 §3)."""
    if error.error is None:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="{error.error}", error_description="{error.description}"'


def unauthorized(error: AuthenticationError) -> ProblemError:
    """Build the 401 problem for a failed authentication, challenge included."""
    return ProblemError(
        "unauthorized", error.description, headers={"WWW-Authenticate": challenge(error)}
    )


def bearer_token(authorization: str | None) -> str:
    """Return the token of an `Authorization: Bearer ...` header, or raise AuthenticationError."""
    if not authorization or not authorization.strip():
        raise AuthenticationError("A bearer token is required.", error=None)
    if not authorization.strip().lower().startswith("bearer"):
        raise AuthenticationError("Use the Bearer authorization scheme.", error=None)
    match = _BEARER.fullmatch(authorization.strip())
    if match is None:
        raise AuthenticationError("The Authorization header is not a valid bearer token.")
    return match.group(1)


class InternalCredential:
    """The shared token other processes present to internal endpoints, compared in constant time."""

    def __init__(self, token: str | None) -> None:
        # Digests have one length, so the comparison time says nothing about the token's length.
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    def check(self, authorization: str | None) -> None:
        """Raise AuthenticationError unless the header carries the internal token."""
        presented = hashlib.sha256(bearer_token(authorization).encode()).digest()
        if self._digest is None or not hmac.compare_digest(presented, self._digest):
            raise AuthenticationError("The internal credential is not valid.")


class AuthMiddleware:
    """Authenticate each routed request and store its principal in `req.context.principal`."""

    def __init__(self, verifier: TokenVerifier, internal: InternalCredential) -> None:
        self._verifier = verifier
        self._internal = internal

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        """Check the credentials the routed resource asks for; unrouted requests fall to 404."""
        req.context.principal = None
        if resource is None or req.method == "OPTIONS":
            return
        try:
            if getattr(resource, "internal_auth", False):
                self._internal.check(req.get_header("Authorization"))
            elif getattr(resource, "auth_required", True):
                token = bearer_token(req.get_header("Authorization"))
                req.context.principal = self._verifier.verify(token)
        except AuthenticationError as exc:
            logger.info("authentication failed on %s %s: %s", req.method, req.path, exc.description)
            raise unauthorized(exc) from exc
