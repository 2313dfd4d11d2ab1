"""Downloads against real PostgreSQL and a real S3 server: presigned redirect, streamed body,
409 before completion, 410 once expired or when the object is gone, and an audit entry for each.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import falcon.testing
import pytest
from api_support import UnlimitedLimiter, add_user, auth, build_client, complete, make_settings

from api.database import ThreadLocalDatabase
from api.objects import S3ObjectStore
from pipelines.database import connect

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DATA = b'{"records": [1, 2, 3]}\n' * 1000


@pytest.fixture
def database(database_url: str) -> Iterator[ThreadLocalDatabase]:
    database = ThreadLocalDatabase(database_url)
    yield database
    database.close()


def _client(
    database: ThreadLocalDatabase, s3_client: S3Client, bucket: str, *, presign: bool
) -> falcon.testing.TestClient:
    return build_client(
        settings=make_settings(S3_PRESIGN_ENABLED=str(presign).lower(), S3_PRESIGN_SECONDS="60"),
        database=database,
        limiter=UnlimitedLimiter(),
        objects=S3ObjectStore(s3_client, bucket=bucket, chunk_bytes=4096),
    )


def _completed_export(
    client: falcon.testing.TestClient, database_url: str, s3_client: S3Client, bucket: str
) -> tuple[uuid.UUID, str]:
    user = add_user(database_url)
    created = client.simulate_post(
        "/api/exports/user",
        json={"format": "json", "options": {"compression": "none"}},
        headers=auth(user),
    )
    export_id = created.json["export"]["id"]
    key = f"exports/{export_id}/export.json"
    s3_client.put_object(Bucket=bucket, Key=key, Body=DATA, ContentType="application/json")
    complete(database_url, export_id, object_key=key)
    return user, export_id


def _download_logs(database_url: str, export_id: str) -> list[tuple[Any, ...]]:
    with connect(database_url) as conn:
        return conn.execute(
            "SELECT actor_type, actor_id, host(client_ip), user_agent, request_id, details"
            " FROM export_logs WHERE export_id = %s AND event = 'export.downloaded'",
            (export_id,),
        ).fetchall()


def test_presigned_download_redirects_to_a_working_url_and_is_audited(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=True)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    result = client.simulate_get(
        f"/api/exports/{export_id}/download",
        headers={**auth(user), "User-Agent": "restore-script/1.0"},
    )
    assert result.status_code == 302
    location = result.headers["location"]
    assert location.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(location, timeout=10) as answer:  # noqa: S310 - loopback S3
        assert answer.read() == DATA
        assert f"data-export-{export_id}-export.json" in answer.headers["Content-Disposition"]
    [entry] = _download_logs(database_url, export_id)
    assert entry[:5] == (
        "user",
        user,
        "127.0.0.1",
        "restore-script/1.0",
        result.headers["x-request-id"],
    )
    assert entry[5]["method"] == "presigned"


def test_streamed_download_sends_the_object_and_is_audited(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=False)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    assert result.status_code == 200
    assert result.content == DATA
    assert result.headers["content-type"] == "application/json"
    documented = client.simulate_get("/openapi.json").json["paths"][
        "/api/exports/{exportId}/download"
    ]["get"]["responses"]["200"]["content"]
    assert result.headers["content-type"] in documented
    assert result.headers["content-length"] == str(len(DATA))
    assert "attachment" in result.headers["content-disposition"]
    [entry] = _download_logs(database_url, export_id)
    assert entry[5]["method"] == "stream"


def test_download_before_completion_answers_409(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=True)
    user = add_user(database_url)
    export_id = client.simulate_post(
        "/api/exports/user", json={"format": "csv"}, headers=auth(user)
    ).json["export"]["id"]
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    assert result.status_code == 409
    assert _download_logs(database_url, export_id) == []


def test_expired_export_answers_410(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=True)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    complete(database_url, export_id, object_key="exports/x/export.json", status="expired")
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    assert result.status_code == 410
    assert result.json["type"].endswith("/gone")


@pytest.mark.parametrize("presign", [True, False])
def test_export_past_its_retention_answers_410_before_cleanup_runs(
    database: ThreadLocalDatabase,
    database_url: str,
    s3_client: S3Client,
    s3_bucket: str,
    presign: bool,
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=presign)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    with connect(database_url) as conn:
        conn.execute(
            "UPDATE data_exports SET expires_at = now() - interval '1 second' WHERE id = %s",
            (export_id,),
        )
        conn.commit()
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    assert result.status_code == 410
    assert result.json["type"].endswith("/gone")
    assert _download_logs(database_url, export_id) == []


def test_streamed_download_of_a_vanished_object_answers_410(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=False)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    s3_client.delete_object(Bucket=s3_bucket, Key=f"exports/{export_id}/export.json")
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    assert result.status_code == 410
    assert _download_logs(database_url, export_id) == []


@pytest.fixture
def streamed(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> tuple[falcon.testing.TestClient, dict[str, str], str]:
    """A client with presigning off, the owner's headers and a completed export's id."""
    client = _client(database, s3_client, s3_bucket, presign=False)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    return client, auth(user), export_id


def test_a_broken_streamed_download_resumes_from_where_it_stopped(
    streamed: tuple[falcon.testing.TestClient, dict[str, str], str], database_url: str
) -> None:
    client, headers, export_id = streamed
    url = f"/api/exports/{export_id}/download"
    first = client.simulate_get(url, headers=headers)
    assert first.status_code == 200
    assert first.headers["accept-ranges"] == "bytes"
    received = first.content[:7_000]  # the connection broke here
    rest = client.simulate_get(
        url,
        headers={**headers, "Range": f"bytes={len(received)}-", "If-Range": first.headers["etag"]},
    )
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes 7000-{len(DATA) - 1}/{len(DATA)}"
    assert rest.headers["content-length"] == str(len(DATA) - 7_000)
    assert rest.headers["etag"] == first.headers["etag"]
    assert received + rest.content == DATA
    ranges = [entry[5]["contentRange"] for entry in _download_logs(database_url, export_id)]
    assert ranges == [None, f"bytes 7000-{len(DATA) - 1}/{len(DATA)}"]  # both audited


@pytest.mark.parametrize(
    ("asked", "expected"),
    [("bytes=0-99", DATA[:100]), ("bytes=-50", DATA[-50:]), ("bytes=100-199", DATA[100:200])],
)
def test_a_bounded_or_suffix_range_sends_just_those_bytes(
    streamed: tuple[falcon.testing.TestClient, dict[str, str], str], asked: str, expected: bytes
) -> None:
    client, headers, export_id = streamed
    result = client.simulate_get(
        f"/api/exports/{export_id}/download", headers={**headers, "Range": asked}
    )
    assert result.status_code == 206
    assert result.content == expected


def test_a_range_outside_the_object_answers_416_with_its_size(
    streamed: tuple[falcon.testing.TestClient, dict[str, str], str], database_url: str
) -> None:
    client, headers, export_id = streamed
    result = client.simulate_get(
        f"/api/exports/{export_id}/download", headers={**headers, "Range": f"bytes={len(DATA)}-"}
    )
    assert result.status_code == 416
    assert result.headers["content-range"] == f"bytes */{len(DATA)}"
    assert result.json["type"].endswith("/range-not-satisfiable")
    assert _download_logs(database_url, export_id) == []  # nothing was downloaded


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-9", "If-Range": '"an-older-object"'},  # the object changed
        {"Range": "bytes=0-9", "If-Range": "Wed, 21 Oct 2026 07:28:00 GMT"},  # a date: unchecked
        {"Range": "bytes=0-1,5-6"},  # several ranges
        {"Range": "bytes=9-2"},  # backwards
        {"Range": "items=0-9"},  # another unit
    ],
)
def test_a_range_that_cannot_be_honoured_sends_the_whole_object(
    streamed: tuple[falcon.testing.TestClient, dict[str, str], str], headers: dict[str, str]
) -> None:
    client, owner, export_id = streamed
    result = client.simulate_get(f"/api/exports/{export_id}/download", headers={**owner, **headers})
    assert result.status_code == 200
    assert result.content == DATA
    assert "content-range" not in result.headers


def test_a_presigned_url_serves_ranges_itself(
    database: ThreadLocalDatabase, database_url: str, s3_client: S3Client, s3_bucket: str
) -> None:
    client = _client(database, s3_client, s3_bucket, presign=True)
    user, export_id = _completed_export(client, database_url, s3_client, s3_bucket)
    location = client.simulate_get(f"/api/exports/{export_id}/download", headers=auth(user))
    presigned = location.headers["location"]
    assert presigned.startswith("http://127.0.0.1:")
    request = urllib.request.Request(presigned, headers={"Range": "bytes=10-19"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback S3
        assert answer.status == 206
        assert answer.read() == DATA[10:20]
