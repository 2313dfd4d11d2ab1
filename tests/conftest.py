"""Shared fixtures: the real services, started once per test session, and per-test databases.

The suite starts its own PostgreSQL, Redis and S3 server on free loopback ports under a temporary
folder, so it never collides with a running `./run demo`. `TEST_DATABASE_URL`, `TEST_REDIS_URL` and
`TEST_S3_ENDPOINT_URL` (with `TEST_S3_BUCKET`, `TEST_S3_ACCESS_KEY_ID`, `TEST_S3_SECRET_ACCESS_KEY`)
point it at existing servers instead. Each test that asks for `database_url` gets a fresh database
cloned from a template that has `schema.sql` applied.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from pipelines.storage.client import create_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from exportctl.devstack import StackEndpoints

# The variables that point the suite at existing servers, mapped to the stack's own names.
EXTERNAL_SERVICE_VARIABLES = {
    "TEST_DATABASE_URL": "DATABASE_URL",
    "TEST_REDIS_URL": "REDIS_URL",
    "TEST_S3_ENDPOINT_URL": "S3_ENDPOINT_URL",
    "TEST_S3_BUCKET": "S3_BUCKET",
    "TEST_S3_ACCESS_KEY_ID": "S3_ACCESS_KEY_ID",
    "TEST_S3_SECRET_ACCESS_KEY": "S3_SECRET_ACCESS_KEY",
}


DATABASE_FIXTURES = frozenset({"database_url", "empty_database_url", "template_database"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a database, so CI can run them again on another server."""
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)


def _external_services() -> dict[str, str]:
    environ = os.environ
    return {
        target: environ[source]
        for source, target in EXTERNAL_SERVICE_VARIABLES.items()
        if environ.get(source)
    }


def _with_database(url: str, name: str) -> str:
    """Return `url` pointing at database `name` (same server, user and options), in its form."""
    if "://" in url:
        return urlsplit(url)._replace(path=f"/{name}").geturl()
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    """The services every integration test talks to, up for the whole session."""
    from exportctl.devstack import LocalStack

    root = Path(tmp_path_factory.mktemp("stack"))
    local = LocalStack(root)
    endpoints = local.up(_external_services())
    try:
        yield endpoints
    finally:
        local.down()


@pytest.fixture(scope="session")
def template_database(stack: StackEndpoints) -> Iterator[str]:
    """The name of a database holding `schema.sql`, used as the template for each test."""
    from pipelines.schema import apply_schema

    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(_with_database(stack.database_url, name)) as conn:
            apply_schema(conn)
            conn.commit()
        yield name
    finally:
        _drop_database(stack.database_url, name)


def _create_database(server_url: str, *, template: str | None) -> str:
    name = f"test_{uuid.uuid4().hex[:16]}"
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template or "template0")
    )
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(statement)
    return name


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database_url(stack: StackEndpoints, template_database: str) -> Iterator[str]:
    """A fresh database with the schema applied, dropped after the test."""
    name = _create_database(stack.database_url, template=template_database)
    try:
        yield _with_database(stack.database_url, name)
    finally:
        _drop_database(stack.database_url, name)


@pytest.fixture
def empty_database_url(stack: StackEndpoints) -> Iterator[str]:
    """A fresh database with nothing in it, dropped after the test."""
    name = _create_database(stack.database_url, template=None)
    try:
        yield _with_database(stack.database_url, name)
    finally:
        _drop_database(stack.database_url, name)


@pytest.fixture(scope="session")
def s3_client(stack: StackEndpoints) -> S3Client:
    """An S3 client for the session's S3 server, configured as production configures R2."""
    return create_s3_client(
        endpoint_url=stack.s3_endpoint_url,
        region=stack.s3_region,
        access_key_id=stack.s3_access_key_id,
        secret_access_key=stack.s3_secret_access_key,
    )


@pytest.fixture
def s3_bucket(s3_client: S3Client) -> Iterator[str]:
    """A fresh, empty bucket for one test; emptied and removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _empty_and_delete_bucket(s3_client, name)


def _empty_and_delete_bucket(client: S3Client, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]
    client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def redis_url(stack: StackEndpoints) -> str:
    """The session's Redis URL."""
    return stack.redis_url


@pytest.fixture
def settings_env(stack: StackEndpoints, database_url: str) -> dict[str, str]:
    """A complete environment for `Settings.from_env`, pointing at a fresh database."""
    env = stack.as_env()
    env["DATABASE_URL"] = database_url
    return env
