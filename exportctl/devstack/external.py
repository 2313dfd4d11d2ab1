"""Services the operator already runs, named in the environment instead of started by the stack.

`DATABASE_URL`, `REDIS_URL` and `S3_ENDPOINT_URL` (with its bucket and keys) each replace one
managed service; their values pass through unchanged. This module only reads the mapping it is
given, never the process environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exportctl.devstack import probes
from exportctl.devstack.errors import StackError

DEFAULT_REGION = "auto"
S3_REQUIRED = ("S3_BUCKET", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class ExternalS3:
    """An S3-compatible endpoint given in the environment."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str


@dataclass(frozen=True)
class ExternalServices:
    """Which services the environment provides; None means the stack runs its own."""

    database_url: str | None
    redis_url: str | None
    s3: ExternalS3 | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ExternalServices:
        """Read the external services from `environ`, failing if S3 is only half described."""
        s3 = None
        endpoint = environ.get("S3_ENDPOINT_URL", "")
        if endpoint:
            missing = [name for name in S3_REQUIRED if not environ.get(name)]
            if missing:
                raise StackError(
                    f"S3_ENDPOINT_URL is set, so the stack will not run its own S3 server, "
                    f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set"
                )
            s3 = ExternalS3(
                endpoint_url=endpoint,
                bucket=environ["S3_BUCKET"],
                access_key_id=environ["S3_ACCESS_KEY_ID"],
                secret_access_key=environ["S3_SECRET_ACCESS_KEY"],
                region=environ.get("S3_REGION") or DEFAULT_REGION,
            )
        return cls(
            database_url=environ.get("DATABASE_URL") or None,
            redis_url=environ.get("REDIS_URL") or None,
            s3=s3,
        )

    def url_of(self, service: str) -> str | None:
        """Return the external URL replacing `service`, or None when the stack runs it."""
        urls = {
            "postgres": self.database_url,
            "redis": self.redis_url,
            "s3": self.s3.endpoint_url if self.s3 else None,
        }
        return urls[service]

    def answers(self, service: str) -> bool:
        """Tell whether the external `service` answers its protocol's real request."""
        if service == "postgres" and self.database_url:
            return probes.postgres_answers(self.database_url)
        if service == "redis" and self.redis_url:
            return probes.redis_answers(self.redis_url)
        if service == "s3" and self.s3:
            return probes.s3_bucket_answers(
                endpoint_url=self.s3.endpoint_url,
                region=self.s3.region,
                access_key_id=self.s3.access_key_id,
                secret_access_key=self.s3.secret_access_key,
                bucket=self.s3.bucket,
            )
        return False
