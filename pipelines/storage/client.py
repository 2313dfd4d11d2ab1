"""The one place a boto3 S3 client is built, with the settings Cloudflare R2 needs.

boto3 1.36+ sends CRC checksums on every upload by default, which R2 has rejected; both checksum
settings are `when_required`. Timeouts are explicit so no call blocks a worker forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from pipelines.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONNECT_TIMEOUT_SECONDS = 10
# A 64 MiB part on a slow link still finishes well inside this; a dead peer does not hold a thread.
READ_TIMEOUT_SECONDS = 120
# Standard retry mode backs off with jitter on 5xx and SlowDown answers.
MAX_ATTEMPTS = 5
# Enough for a few parts in flight plus concurrent HEADs during verification.
MAX_POOL_CONNECTIONS = 16


def create_s3_client(
    *,
    endpoint_url: str | None,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    max_pool_connections: int = MAX_POOL_CONNECTIONS,
) -> S3Client:
    """Build an S3 client that R2 and local S3 servers accept."""
    config = Config(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
        max_pool_connections=max_pool_connections,
    )
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
    return client


def s3_client_from_settings(settings: Settings) -> S3Client:
    """Build the S3 client described by the process settings."""
    return create_s3_client(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )
