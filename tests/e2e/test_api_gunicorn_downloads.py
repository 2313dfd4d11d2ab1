"""A streamed download through a real gunicorn, cut off twice on its way: `exportctl`'s client
resumes from the bytes it has and ends with the whole object, its SHA-256 checked.

The cut is the one thing here that is not real: a loopback TCP relay in front of the API closes
the first two answers' connections part way through, as a dropped network would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from api_gunicorn import Server, run_gunicorn
from api_support import add_user, complete

from exportctl.api_client import ApiClient
from pipelines.database import connect

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DATA = os.urandom(3 * 1024 * 1024)
# Bytes of each cut answer (headers included) that get through before its connection drops.
CUTS = (1_000_000, 600_000)


class CuttingRelay:
    """Relay loopback TCP to `upstream_port`; the first answers stop after `CUTS` bytes."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cuts = list(CUTS)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                limit = self._cuts.pop(0) if self._cuts else None
            threading.Thread(target=self._relay, args=(client, limit), daemon=True).start()

    def _relay(self, client: socket.socket, limit: int | None) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._upstream))
        threading.Thread(target=_pipe, args=(client, upstream, None), daemon=True).start()
        _pipe(upstream, client, limit)


def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
    sent = 0
    try:
        while chunk := source.recv(65536):
            if limit is not None and sent + len(chunk) >= limit:
                sink.sendall(chunk[: limit - sent])
                break
            sink.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@pytest.fixture
def server(stack: Any, template_database: str, s3_bucket: str, tmp_path: Path) -> Iterator[Server]:
    """A gunicorn that streams downloads through itself (no presigned URLs)."""
    env = {"S3_PRESIGN_ENABLED": "false", "S3_BUCKET": s3_bucket}
    with run_gunicorn(stack, template_database, tmp_path, env=env) as running:
        yield running


def test_a_download_cut_off_twice_resumes_to_the_whole_verified_object(
    server: Server, s3_client: S3Client, s3_bucket: str, tmp_path: Path
) -> None:
    user = add_user(server.database_url)
    status, _, body = server.request(
        "POST", "/api/exports/user", body={"format": "csv"}, headers=server.auth(user)
    )
    assert status == 202, body
    export_id = json.loads(body)["export"]["id"]
    key = f"exports/{export_id}/export.csv"
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=DATA)
    complete(server.database_url, export_id, object_key=key)
    digest = hashlib.sha256(DATA).hexdigest()

    relay = CuttingRelay(server.port)
    try:
        client = ApiClient(f"http://127.0.0.1:{relay.port}", server.token(user))
        saved = client.download(export_id, tmp_path / "out", expected_sha256=digest)
    finally:
        relay.close()

    assert saved.size_bytes == len(DATA)
    assert saved.sha256 == digest
    assert saved.path.read_bytes() == DATA
    assert list((tmp_path / "out").iterdir()) == [saved.path]  # no partial file left
    with connect(server.database_url) as conn:
        ranges = [
            details.get("contentRange")
            for (details,) in conn.execute(
                "SELECT details FROM export_logs WHERE export_id = %s"
                " AND event = 'export.downloaded' ORDER BY id",
                (uuid.UUID(export_id),),
            )
        ]
    assert len(ranges) == 3
    assert ranges[0] is None
    assert all(r and r.startswith("bytes ") and r.endswith(f"/{len(DATA)}") for r in ranges[1:])
