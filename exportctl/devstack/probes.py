"""Real readiness checks: `SELECT 1`, `PING`, and S3 requests signed with the stack's keys.

A listening port proves little (SeaweedFS accepts connections seconds before it can store an
object), so every check speaks the service's own protocol. Each answers True or False; none raises.
"""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

import psycopg
import redis
from botocore.exceptions import BotoCoreError, ClientError
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipelines.storage.client import create_s3_client

# A service on loopback answers in milliseconds; a few seconds covers a busy 2-core machine.
PROBE_TIMEOUT_SECONDS = 3
# Key of the object written and removed by the S3 readiness check.
PROBE_KEY = ".exportctl-dev-probe"


def postgres_answers(url: str) -> bool:
    """Tell whether the database at `url` answers `SELECT 1`."""
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def redis_answers(url: str) -> bool:
    """Tell whether the Redis server at `url` answers PING."""
    client = redis.Redis.from_url(
        url,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        # redis-py retries with growing backoff by default; a probe wants one quick answer.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def tcp_answers(url: str) -> bool:
    """Tell whether anything accepts TCP connections at the host and port of `url`."""
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port),
            timeout=PROBE_TIMEOUT_SECONDS,
        ):
            return True
    except OSError:
        return False


def s3_bucket_answers(
    *, endpoint_url: str, region: str, access_key_id: str, secret_access_key: str, bucket: str
) -> bool:
    """Tell whether the S3 server at `endpoint_url` accepts a signed HEAD of `bucket`."""
    if not tcp_answers(endpoint_url):
        return False
    client = create_s3_client(
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
    try:
        client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return True


def s3_round_trip(
    *, endpoint_url: str, region: str, access_key_id: str, secret_access_key: str, bucket: str
) -> bool:
    """Create `bucket` if needed, then PUT, GET and DELETE a probe object; tell if all worked."""
    if not tcp_answers(endpoint_url):
        return False
    client = create_s3_client(
        endpoint_url=endpoint_url,
        region=region,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
    )
    payload = b"exportctl dev probe"
    try:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=payload)
        read_back = client.get_object(Bucket=bucket, Key=PROBE_KEY)["Body"].read()
        client.delete_object(Bucket=bucket, Key=PROBE_KEY)
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return read_back == payload
