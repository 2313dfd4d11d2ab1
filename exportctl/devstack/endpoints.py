"""What the local stack hands to the rest of the project: endpoints and per-service status.

`StackEndpoints.as_env()` yields exactly the variables `Settings.from_env` reads, so a test or an
operator can run any process of the project against the stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StackEndpoints:
    """Where the stack's services answer, and the secrets to use them."""

    database_url: str
    redis_url: str
    s3_endpoint_url: str
    s3_bucket: str
    s3_access_key_id: str
    s3_secret_access_key: str
    s3_region: str
    jwt_secret: str

    def as_env(self) -> dict[str, str]:
        """Return the endpoints as the environment variables the project's settings read."""
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
            "S3_BUCKET": self.s3_bucket,
            "S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
            "S3_REGION": self.s3_region,
            "JWT_SECRET": self.jwt_secret,
        }


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `status` sees it; an external service has no pid and is not managed."""

    name: str
    url: str
    managed: bool
    running: bool
    answering: bool
    pid: int | None
