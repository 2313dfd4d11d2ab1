"""Shared pieces of the API tests: tokens, settings, an app wired to chosen collaborators."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import falcon.testing
import jwt

from api.app import AppDeps, create_app
from api.auth import internal_credential_from_settings, verifier_from_settings
from api.dispatch import RecordingDispatcher
from api.metrics import ApiMetrics
from api.objects import Download, ObjectMissingError, OpenedObject
from api.ratelimit import RateLimitDecision, Reservation
from pipelines.database import connect
from pipelines.errors import RetryableError
from pipelines.settings import Settings

SECRET = "api-test-secret-" + "k" * 40
BASE_ENV = {
    "DATABASE_URL": "postgresql://127.0.0.1:1/unused",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "S3_BUCKET": "exports",
    "S3_ACCESS_KEY_ID": "key",
    "S3_SECRET_ACCESS_KEY": "secret",
    "JWT_SECRET": SECRET,
    "LOG_FORMAT": "text",
}


def make_settings(**overrides: str) -> Settings:
    """Return settings for tests: BASE_ENV plus overrides (environment variable names)."""
    return Settings.from_env({**BASE_ENV, **overrides})


def token(
    user_id: uuid.UUID | str,
    *,
    roles: tuple[str, ...] = (),
    scope: str | None = None,
    secret: str = SECRET,
    lifetime_seconds: int = 300,
    **claims: Any,
) -> str:
    """Return an HS256 bearer token for `user_id`."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + lifetime_seconds}
    if roles:
        payload["roles"] = list(roles)
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def auth(user_id: uuid.UUID | str, **options: Any) -> dict[str, str]:
    """Return the Authorization header for a token of `user_id`."""
    return {"Authorization": f"Bearer {token(user_id, **options)}"}


class DownDatabase:
    """A database that never answers."""

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        self.ping()
        yield None

    def ping(self) -> None:
        raise RetryableError("database unavailable")


class UnlimitedLimiter:
    """A limiter that admits everything and counts what it was asked."""

    def __init__(self) -> None:
        self.reserved = 0
        self.released = 0

    def reserve(
        self, user_id: uuid.UUID | str, *, is_admin: bool = False, limit: int | None = None
    ) -> RateLimitDecision:
        self.reserved += 1
        allowed = limit or 1000
        return RateLimitDecision(
            True, allowed, allowed - 1, 3600, None, Reservation("k", uuid.uuid4().hex)
        )

    def release(self, reservation: Reservation) -> bool:
        self.released += 1
        return True


class MemoryObjects:
    """A bucket of a few in-memory objects."""

    def __init__(self, objects: Mapping[str, bytes] | None = None) -> None:
        self.objects = dict(objects or {})

    def presign(self, download: Download) -> str:
        return f"https://bucket.test/{download.key}?X-Amz-Expires={download.expires_in_seconds}"

    def open(
        self, key: str, *, byte_range: str | None = None, if_match: str | None = None
    ) -> OpenedObject:
        """The whole object, always: a server may ignore a Range header."""
        if key not in self.objects:
            raise ObjectMissingError(key)
        data = self.objects[key]
        return OpenedObject(size_bytes=len(data), chunks=iter([data[:3], data[3:]]))


def build_client(
    *,
    settings: Settings | None = None,
    database: Any = None,
    limiter: Any = None,
    dispatcher: RecordingDispatcher | None = None,
    objects: Any = None,
    checks: Mapping[str, Callable[[], None]] | None = None,
    metrics: ApiMetrics | None = None,
) -> falcon.testing.TestClient:
    """Return a test client for an app wired to the given (or harmless default) collaborators."""
    settings = settings or make_settings()
    deps = AppDeps(
        settings=settings,
        verifier=verifier_from_settings(settings),
        internal=internal_credential_from_settings(settings),
        database=database or DownDatabase(),
        limiter=limiter or UnlimitedLimiter(),
        dispatcher=dispatcher or RecordingDispatcher(),
        objects=objects or MemoryObjects(),
        checks=checks or {},
        metrics=metrics or ApiMetrics(),
    )
    return falcon.testing.TestClient(create_app(deps))


def add_user(database_url: str, *, role: str = "user") -> uuid.UUID:
    """Insert an application user and return its id."""
    user_id = uuid.uuid4()
    with connect(database_url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, display_name, role) VALUES (%s, %s, 'Test', %s)",
            (user_id, f"{user_id}@example.test", role),
        )
        conn.commit()
    return user_id


def complete(
    database_url: str, export_id: str, *, object_key: str, status: str = "completed"
) -> None:
    """Mark an export as a worker would on success (or expired after cleanup)."""
    with connect(database_url) as conn:
        conn.execute(
            """
            UPDATE data_exports SET status = %s, object_key = %s, size_bytes = 11,
                content_size_bytes = 11, record_count = 2, sha256 = repeat('a', 64),
                content_sha256 = repeat('b', 64), started_at = now(), finished_at = now(),
                expires_at = now() + interval '7 days', progress = 100
            WHERE id = %s
            """,
            (status, object_key, export_id),
        )
        conn.commit()
