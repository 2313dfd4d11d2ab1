"""`exportctl token --user ID [--admin]`: a development bearer token for the local stack's API.

Signs an HS256 token with the local stack's development secret (`.dev/jwt_secret`, or under
EXPORTCTL_DEV_ROOT). It refuses when JWT_SECRET names any other secret: tokens for a real
deployment come from its identity provider, never from this command.
"""

from __future__ import annotations

import argparse
import hmac
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from exportctl.environment import dev_root, process_environ
from pipelines.errors import PermanentError

# Seconds a development token lives: a working day of trying the API, then it dies on its own.
TOKEN_LIFETIME_SECONDS = 8 * 3600
ADMIN_ROLE = "admin"  # the role the API reads from `roles` (api.auth.tokens.ADMIN_ROLE)


class NotDevelopmentSecretError(PermanentError):
    """The configured JWT secret is not the local stack's development secret."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `exportctl token`."""
    parser = subparsers.add_parser(
        "token",
        help="print a development bearer token for the local stack's API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--user", required=True, type=_user_id, help="the user id (`sub`)")
    parser.add_argument("--admin", action="store_true", help="give the token the admin role")
    parser.add_argument(
        "--lifetime",
        type=int,
        default=TOKEN_LIFETIME_SECONDS,
        metavar="S",
        help="seconds until the token expires (default %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print a token signed with the development secret."""
    secret = development_secret(process_environ())
    print(mint_token(secret, args.user, admin=args.admin, lifetime_seconds=args.lifetime))
    return 0


def development_secret(environ: Mapping[str, str]) -> str:
    """Return the local stack's JWT secret, refusing if JWT_SECRET names a different one."""
    path = dev_root(environ).resolve() / "jwt_secret"
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise NotDevelopmentSecretError(
            f"no development secret at {path}: bring the local stack up first "
            "(`exportctl dev up` or `./run demo`)"
        ) from exc
    configured = environ.get("JWT_SECRET", "")
    if configured and not hmac.compare_digest(configured.encode(), secret.encode()):
        raise NotDevelopmentSecretError(
            "JWT_SECRET is not the local stack's development secret; this command only signs "
            "development tokens (get real ones from your identity provider)"
        )
    return secret


def mint_token(
    secret: str,
    user_id: uuid.UUID | str,
    *,
    admin: bool = False,
    lifetime_seconds: int = TOKEN_LIFETIME_SECONDS,
    now: float | None = None,
) -> str:
    """Return an HS256 token for `user_id`, with the admin role when asked."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iat": issued,
        "exp": issued + lifetime_seconds,
        "jti": uuid.uuid4().hex,
    }
    if admin:
        claims["roles"] = [ADMIN_ROLE]
    return jwt.encode(claims, secret, algorithm="HS256")


def _user_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a user id (UUID), got {text!r}") from exc
