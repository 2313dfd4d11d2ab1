"""A real gunicorn serving the API for the end-to-end tests, on a free loopback port.

Each server gets a database cloned from the schema template; every wait is bounded and the
process is stopped (SIGTERM, then SIGKILL) when the block ends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
AUDIENCE = "data-export-e2e"
# Seconds: gunicorn with two workers is up in about a second; this bounds a broken start.
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
REQUEST_TIMEOUT_SECONDS = 15
# A Redis database of its own for broker messages, so no worker of another test consumes them.
BROKER_DB = 14


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def database_url_of(conninfo: str) -> str:
    """Return a postgresql:// URL for a libpq connection string (Settings wants a URL)."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(info.get("user", "postgres")))
    password = f":{quote(str(info['password']))}" if info.get("password") else ""
    return f"postgresql://{user}{password}@{info['host']}:{info['port']}/{info['dbname']}"


@dataclass
class Server:
    """A running gunicorn and how to talk to it."""

    port: int
    secret: str
    database_url: str
    broker_url: str
    log: Path

    def request(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and return status, lower-cased headers and body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            payload = None if body is None else json.dumps(body).encode()
            sent = dict(headers or {})
            if payload is not None:
                sent["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=sent)
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def token(self, user_id: uuid.UUID, **claims: Any) -> str:
        """Return a valid token for this server."""
        now = int(time.time())
        payload = {"sub": str(user_id), "exp": now + 300, "iat": now, "aud": AUDIENCE, **claims}
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def auth(self, user_id: uuid.UUID, **claims: Any) -> dict[str, str]:
        """Return the Authorization header for a valid token."""
        return {"Authorization": f"Bearer {self.token(user_id, **claims)}"}


def _wait_until_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    pytest.fail(
        f"gunicorn did not answer within {START_TIMEOUT_SECONDS} s:\n{log.read_text()[-4000:]}"
    )


@contextmanager
def run_gunicorn(
    stack: Any, template_database: str, workdir: Path, *, env: dict[str, str]
) -> Iterator[Server]:
    """Run a gunicorn serving the API against a database of its own, until the block ends."""
    name = f"api_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(
            psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                psycopg.sql.Identifier(name), psycopg.sql.Identifier(template_database)
            )
        )
    info = psycopg.conninfo.conninfo_to_dict(stack.database_url)
    info["dbname"] = name
    conninfo = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v})
    port = free_port()
    broker_url = f"{stack.redis_url.rsplit('/', 1)[0]}/{BROKER_DB}"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE", "REDIS", "S3_", "JWT_", "BROKER"))
        },
        **stack.as_env(),
        "DATABASE_URL": database_url_of(conninfo),
        "BROKER_URL": broker_url,
        "JWT_AUDIENCE": AUDIENCE,
        "API_BIND": f"127.0.0.1:{port}",
        "API_WORKERS": "2",
        "LOG_FORMAT": "json",
        **env,
    }
    log = workdir / "gunicorn.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "api.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_healthy(process, port, log)
        yield Server(port, stack.jwt_secret, conninfo, broker_url, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            admin.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )
