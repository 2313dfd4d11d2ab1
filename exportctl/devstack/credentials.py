"""Development secrets of the local stack, generated once and kept under its root.

The S3 keys live in the identity file SeaweedFS reads with `-s3.config`; the JWT secret in a file
of its own. Both are readable by the owner only. They protect a loopback-only development stack:
never reuse them anywhere else.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from exportctl.devstack.errors import StackError

# 20 upper-case characters, the shape of an AWS access key id.
ACCESS_KEY_BYTES = 10
# 30 random bytes give a 40-character secret, as long as an AWS secret key.
SECRET_KEY_BYTES = 30
# 48 random bytes give 64 URL-safe characters: well above the 32 that RFC 7518 asks for HS256.
JWT_SECRET_BYTES = 48
S3_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


@dataclass(frozen=True)
class S3Keys:
    """An access key id and its secret."""

    access_key_id: str
    secret_access_key: str


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with owner-only permissions, replacing it atomically."""
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)


def load_or_create_s3_keys(path: Path) -> S3Keys:
    """Return the keys of the SeaweedFS identity file `path`, writing a new one on first use."""
    if path.exists():
        try:
            identity = json.loads(path.read_text())["identities"][0]["credentials"][0]
            return S3Keys(identity["accessKey"], identity["secretKey"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise StackError(f"cannot read S3 keys from {path}: {exc}") from exc
    keys = S3Keys(
        access_key_id="DEV" + secrets.token_hex(ACCESS_KEY_BYTES).upper()[:17],
        secret_access_key=secrets.token_urlsafe(SECRET_KEY_BYTES),
    )
    identity = {
        "name": "admin",
        "credentials": [{"accessKey": keys.access_key_id, "secretKey": keys.secret_access_key}],
        "actions": list(S3_ACTIONS),
    }
    _write_private(path, json.dumps({"identities": [identity]}, indent=2) + "\n")
    return keys


def load_or_create_jwt_secret(path: Path) -> str:
    """Return the development JWT secret kept in `path`, generating it on first use."""
    if path.exists():
        secret = path.read_text().strip()
        if len(secret) < JWT_SECRET_BYTES:
            raise StackError(f"{path} holds a JWT secret that is too short; delete it")
        return secret
    secret = secrets.token_urlsafe(JWT_SECRET_BYTES)
    _write_private(path, secret + "\n")
    return secret
