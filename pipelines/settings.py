"""Process configuration: one frozen `Settings` built once per entry point from the environment.

`Settings.from_env(environ)` is the only place that reads configuration. It checks every variable
before failing, so a misconfigured process reports all of its problems in one message. `SPECS` is
the single list of settings; `deploy/env.example` mirrors it and a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipelines.errors import SettingsError

MIB = 1024 * 1024
# S3 and R2 refuse non-final multipart parts under 5 MiB and over 5 GiB.
MIN_PART_SIZE_BYTES = 5 * MIB
MAX_PART_SIZE_BYTES = 5 * 1024 * MIB
# R2 presigned URLs live from 1 second to 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

COMPRESSIONS = ("none", "gzip", "zstd")
SYMMETRIC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"})


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw or None


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {raw}")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"must be zero or more, got {raw}")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {raw!r}")
        return raw

    return parse


def _optional_url(*schemes: str) -> Callable[[str], str | None]:
    parse = _url(*schemes)

    def parse_optional(raw: str) -> str | None:
        return parse(raw) if raw else None

    return parse_optional


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _algorithms(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    known = SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise ValueError(f"expected a comma-separated list of {', '.join(sorted(known))}")
    return names


@dataclass(frozen=True)
class Spec:
    """One environment variable: its name, default (None means required) and meaning."""

    env: str
    field: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    secret: bool = False


SPECS: tuple[Spec, ...] = (
    # --- database and broker
    Spec(
        "DATABASE_URL",
        "database_url",
        _url("postgresql", "postgres"),
        None,
        "PostgreSQL connection URL (libpq form).",
    ),
    Spec(
        "DATABASE_STATEMENT_TIMEOUT_MS",
        "statement_timeout_ms",
        _non_negative_int,
        "600000",
        "statement_timeout for every session, so no query blocks a worker forever (0 = none).",
    ),
    Spec(
        "REDIS_URL",
        "redis_url",
        _url("redis", "rediss", "unix"),
        None,
        "Redis URL for rate limits and, unless BROKER_URL says otherwise, the Dramatiq broker.",
    ),
    Spec(
        "BROKER_URL",
        "broker_url",
        _optional_url("redis", "rediss", "amqp", "amqps"),
        "",
        "Dramatiq broker URL: redis://... or amqp://... (empty = REDIS_URL).",
    ),
    # --- object storage (S3 API: Cloudflare R2 in production)
    Spec(
        "S3_ENDPOINT_URL",
        "s3_endpoint_url",
        _optional_url("http", "https"),
        "",
        "S3 endpoint, e.g. https://ACCOUNT.r2.cloudflarestorage.com (empty = AWS).",
    ),
    Spec("S3_BUCKET", "s3_bucket", _text, None, "Bucket that holds exports and users' files."),
    Spec("S3_ACCESS_KEY_ID", "s3_access_key_id", _text, None, "Access key id.", secret=True),
    Spec(
        "S3_SECRET_ACCESS_KEY",
        "s3_secret_access_key",
        _text,
        None,
        "Secret access key.",
        secret=True,
    ),
    Spec("S3_REGION", "s3_region", _text, "auto", "Region name; R2 wants 'auto'."),
    Spec(
        "S3_PART_SIZE_BYTES",
        "s3_part_size_bytes",
        _positive_int,
        str(8 * MIB),
        "Smallest multipart part size; grown per export so an object fits in 10,000 parts.",
    ),
    Spec(
        "S3_PRESIGN_SECONDS",
        "s3_presign_seconds",
        _positive_int,
        "300",
        "Lifetime of a presigned download URL (1 s to 7 days).",
    ),
    Spec(
        "S3_PRESIGN_ENABLED",
        "s3_presign_enabled",
        _bool,
        "true",
        "Redirect downloads to a presigned URL; false streams them through the API.",
    ),
    Spec(
        "S3_EXPORT_PREFIX",
        "s3_export_prefix",
        _text,
        "exports/",
        "Key prefix under which export objects are written.",
    ),
    # --- export policy (the seed's names and defaults)
    Spec(
        "EXPORT_RETENTION_DAYS",
        "export_retention_days",
        _positive_int,
        "7",
        "Days a finished export is kept before cleanup deletes it.",
    ),
    Spec(
        "EXPORT_REVERIFY_DAYS",
        "export_reverify_days",
        _non_negative_int,
        "7",
        "Days after which a stored, verified export is verified again where it is stored, so a "
        "lost or changed object is found before it is needed (0 = never).",
    ),
    Spec(
        "EXPORT_MAX_SIZE",
        "export_max_size",
        _positive_int,
        "104857600",
        "Largest stored size of a user export in bytes; larger exports fail with a clear error.",
    ),
    Spec(
        "EXPORT_BULK_MAX_SIZE",
        "export_bulk_max_size",
        _positive_int,
        str(64 * 1024 * MIB),
        "Largest stored size of one bulk-export shard object in bytes (64 GiB fits 10,000 "
        "parts of 8 MiB; a larger cap grows the part size and the memory a worker holds).",
    ),
    Spec(
        "EXPORT_COMPRESSION_ENABLED",
        "export_compression_enabled",
        _bool,
        "true",
        "Whether exports may be compressed at all.",
    ),
    Spec(
        "EXPORT_DEFAULT_COMPRESSION",
        "export_default_compression",
        _choice(*COMPRESSIONS),
        "zstd",
        "Compression used when a request says compression: true.",
    ),
    Spec(
        "EXPORT_ZSTD_LEVEL",
        "export_zstd_level",
        _positive_int,
        "1",
        "zstd level; 1 measured twice as fast as 3 at the same ratio on export data.",
    ),
    Spec(
        "EXPORT_GZIP_LEVEL",
        "export_gzip_level",
        _positive_int,
        "6",
        "gzip level, 1-9 as for gzip; 6 (zlib-ng) wrote less than gzip -6 in half its time.",
    ),
    Spec(
        "EXPORT_RATE_LIMIT",
        "export_rate_limit",
        _positive_int,
        "10",
        "Accepted exports per user per hour.",
    ),
    Spec(
        "EXPORT_ADMIN_RATE_LIMIT",
        "export_admin_rate_limit",
        _positive_int,
        "100",
        "Accepted exports per administrator per hour.",
    ),
    # --- workers
    Spec(
        "WORKER_LEASE_SECONDS",
        "worker_lease_seconds",
        _positive_int,
        "60",
        "Lease a running export holds, renewed every third of it; a dead worker's job is taken "
        "over once it lapses.",
    ),
    Spec(
        "WORKER_MAX_ATTEMPTS",
        "worker_max_attempts",
        _positive_int,
        "3",
        "Attempts of one export or shard before it fails (kill -9 bypasses Dramatiq's retries).",
    ),
    Spec(
        "BULK_TARGET_SHARD_ROWS",
        "bulk_target_shard_rows",
        _positive_int,
        "1000000",
        "Rows (users plus files) per bulk-export shard.",
    ),
    Spec(
        "BULK_SNAPSHOT_HOLD_SECONDS",
        "bulk_snapshot_hold_seconds",
        _positive_int,
        "21600",
        "Longest a bulk export holds its snapshot open before it fails (keeps xmin from "
        "lagging forever).",
    ),
    # --- authentication
    Spec(
        "JWT_ALGORITHMS",
        "jwt_algorithms",
        _algorithms,
        "HS256",
        "Accepted JWT algorithms; symmetric and asymmetric ones cannot be mixed.",
    ),
    Spec(
        "JWT_SECRET", "jwt_secret", _optional_text, "", "Shared secret for HS* tokens.", secret=True
    ),
    Spec(
        "JWT_PUBLIC_KEY", "jwt_public_key", _optional_text, "", "PEM public key for RS*/ES* tokens."
    ),
    Spec(
        "JWT_JWKS_URL",
        "jwt_jwks_url",
        _optional_url("http", "https"),
        "",
        "JWKS URL for RS*/ES* tokens (cached, refreshed on an unknown kid).",
    ),
    Spec(
        "JWT_ISSUER",
        "jwt_issuer",
        _optional_text,
        "",
        "Required `iss` claim (empty = not checked).",
    ),
    Spec(
        "JWT_AUDIENCE",
        "jwt_audience",
        _optional_text,
        "",
        "Required `aud` claim (empty = not checked).",
    ),
    Spec(
        "JWT_LEEWAY_SECONDS",
        "jwt_leeway_seconds",
        _non_negative_int,
        "30",
        "Clock skew allowed on exp and nbf.",
    ),
    Spec(
        "INTERNAL_API_TOKEN",
        "internal_api_token",
        _optional_text,
        "",
        "Credential for internal endpoints such as process-scheduled (empty = disabled).",
        secret=True,
    ),
    # --- alerts
    Spec(
        "WEBHOOK_URL",
        "webhook_url",
        _optional_url("http", "https"),
        "",
        "URL POSTed a signed JSON event when an export or its verification fails (empty = none).",
    ),
    Spec(
        "WEBHOOK_SECRET",
        "webhook_secret",
        _optional_text,
        "",
        "Shared secret signing webhook calls (HMAC-SHA256 in X-Export-Signature); required "
        "with WEBHOOK_URL.",
        secret=True,
    ),
    # --- process
    Spec(
        "LOG_LEVEL", "log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "Log level."
    ),
    Spec(
        "LOG_FORMAT",
        "log_format",
        _choice("json", "text"),
        "json",
        "json for machines, text for a terminal.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Every setting a process needs, parsed and checked."""

    database_url: str
    statement_timeout_ms: int
    redis_url: str
    broker_url: str | None
    s3_endpoint_url: str | None
    s3_bucket: str
    s3_access_key_id: str
    s3_secret_access_key: str
    s3_region: str
    s3_part_size_bytes: int
    s3_presign_seconds: int
    s3_presign_enabled: bool
    s3_export_prefix: str
    export_retention_days: int
    export_reverify_days: int
    export_max_size: int
    export_bulk_max_size: int
    export_compression_enabled: bool
    export_default_compression: str
    export_zstd_level: int
    export_gzip_level: int
    export_rate_limit: int
    export_admin_rate_limit: int
    worker_lease_seconds: int
    worker_max_attempts: int
    bulk_target_shard_rows: int
    bulk_snapshot_hold_seconds: int
    jwt_algorithms: tuple[str, ...]
    jwt_secret: str | None
    jwt_public_key: str | None
    jwt_jwks_url: str | None
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_leeway_seconds: int
    internal_api_token: str | None
    webhook_url: str | None
    webhook_secret: str | None
    log_level: str
    log_format: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse and check every setting, raising SettingsError that lists all problems."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in SPECS:
            raw = environ.get(spec.env)
            if raw is None or (raw == "" and spec.default is None):
                if spec.default is None:
                    problems.append(f"{spec.env} is required: {spec.help}")
                    continue
                raw = spec.default
            try:
                values[spec.field] = spec.parse(raw.strip())
            except ValueError as exc:
                problems.append(f"{spec.env}: {exc}")
        if not problems:
            problems.extend(_cross_checks(values))
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    @property
    def effective_broker_url(self) -> str:
        """The Dramatiq broker URL: BROKER_URL, or REDIS_URL when that is empty."""
        return self.broker_url or self.redis_url

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs and `exportctl config`."""
        secret_fields = {spec.field for spec in SPECS if spec.secret}
        shown = dataclasses.asdict(self)
        for name in secret_fields:
            if shown[name]:
                shown[name] = "***"
        return shown


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    problems = []
    part_size = values["s3_part_size_bytes"]
    if not MIN_PART_SIZE_BYTES <= part_size <= MAX_PART_SIZE_BYTES:
        problems.append(
            f"S3_PART_SIZE_BYTES must be between {MIN_PART_SIZE_BYTES} and "
            f"{MAX_PART_SIZE_BYTES} (S3 multipart limits), got {part_size}"
        )
    if not 1 <= values["s3_presign_seconds"] <= MAX_PRESIGN_SECONDS:
        problems.append(f"S3_PRESIGN_SECONDS must be between 1 and {MAX_PRESIGN_SECONDS}")
    if not 1 <= values["export_zstd_level"] <= 22:
        problems.append("EXPORT_ZSTD_LEVEL must be between 1 and 22")
    if values["worker_lease_seconds"] < 2:
        problems.append("WORKER_LEASE_SECONDS must be at least 2")
    if not 1 <= values["export_gzip_level"] <= 9:
        problems.append(
            f"EXPORT_GZIP_LEVEL must be between 1 and 9, got {values['export_gzip_level']}"
        )
    if values["webhook_url"] and not values["webhook_secret"]:
        problems.append("WEBHOOK_SECRET is required with WEBHOOK_URL (calls are always signed)")
    if values["webhook_secret"] and len(values["webhook_secret"]) < 32:
        problems.append("WEBHOOK_SECRET must be at least 32 characters")
    algorithms = set(values["jwt_algorithms"])
    symmetric = algorithms & SYMMETRIC_ALGORITHMS
    asymmetric = algorithms & ASYMMETRIC_ALGORITHMS
    if symmetric and asymmetric:
        problems.append(
            "JWT_ALGORITHMS mixes HS* with RS*/ES* algorithms, which invites key confusion: "
            "choose one family"
        )
    if symmetric and not values["jwt_secret"]:
        problems.append("JWT_SECRET is required for HS* algorithms")
    if symmetric and values["jwt_secret"] and len(values["jwt_secret"]) < 32:
        problems.append("JWT_SECRET must be at least 32 characters (RFC 7518 §3.2)")
    if asymmetric and not (values["jwt_public_key"] or values["jwt_jwks_url"]):
        problems.append("JWT_PUBLIC_KEY or JWT_JWKS_URL is required for RS*/ES* algorithms")
    return problems
