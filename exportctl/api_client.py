"""A small client of the export API for the CLI and the demo: JSON calls and verified downloads.

Speaks HTTP with the standard library. A download follows the API's redirect to the presigned
URL without the bearer token (it must never reach the object store), streams the body to a file
in fixed-size chunks while hashing it, and keeps the file only when its SHA-256 matches the digest
the API recorded. Errors become `ApiError` with the problem details' title and detail.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from pipelines.errors import ExportError

# Seconds to wait for the API or the object store to answer one request.
REQUEST_TIMEOUT_SECONDS = 30.0
# Bytes read per chunk of a download: large enough for few syscalls, small enough to bound memory.
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
# The API answers a download with one redirect to the presigned URL; more means a loop.
MAX_REDIRECTS = 3
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

Progress = Callable[[int, int | None], None]


class ApiError(ExportError):
    """The API (or the object store behind a download URL) refused or failed a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class DigestMismatchError(ExportError):
    """A downloaded file's SHA-256 differs from the digest the API recorded."""


@dataclass(frozen=True)
class Downloaded:
    """A file written by `download`, with its size and checked digest."""

    path: Path
    size_bytes: int
    sha256: str


class ApiClient:
    """Call the export API at `base_url` with a bearer token."""

    def __init__(
        self, base_url: str, token: str, *, timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(0, f"the API URL must be http(s)://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout_seconds

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET a JSON document from the API."""
        query = f"?{urlencode(params)}" if params else ""
        return self._json("GET", f"{path}{query}", None)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON body and return the JSON answer."""
        return self._json("POST", path, body)

    def download(
        self,
        export_id: str,
        out_dir: Path,
        *,
        expected_sha256: str,
        progress: Progress | None = None,
    ) -> Downloaded:
        """Download the export into `out_dir`, checking its SHA-256 as the bytes arrive."""
        url = f"{self.base_url}/api/exports/{export_id}/download"
        headers = {"Authorization": f"Bearer {self._token}"}
        for _ in range(MAX_REDIRECTS + 1):
            conn, response = _open("GET", url, headers, None, self._timeout)
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.getheader("Location") or ""
                    url = urljoin(url, location)
                    headers = {}  # the bearer token is for the API, never for the object store
                    continue
                if response.status != 200:
                    raise _error(response.status, response.read())
                name = _file_name(export_id, response.getheader("Content-Disposition"), url)
                return _save(
                    response,
                    out_dir / name,
                    expected_sha256=expected_sha256,
                    progress=progress,
                )
            finally:
                conn.close()
        raise ApiError(0, f"more than {MAX_REDIRECTS} redirects downloading export {export_id}")

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn, response = _open(method, f"{self.base_url}{path}", headers, payload, self._timeout)
        try:
            data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise _error(response.status, data)
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise ApiError(response.status, "the API answered something other than JSON") from exc
        if not isinstance(document, dict):
            raise ApiError(response.status, "the API answered JSON that is not an object")
        return document


def _open(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send one request and return the connection and its response (headers read)."""
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.netloc, timeout=timeout)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target or "/", body=body, headers=dict(headers))
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise ApiError(0, f"cannot reach {parts.scheme}://{parts.netloc}: {exc}") from exc


def _error(status: int, data: bytes) -> ApiError:
    """Turn an error answer (problem details, S3 XML or anything) into an ApiError."""
    try:
        problem = json.loads(data)
    except ValueError:
        text = data[:300].decode("utf-8", errors="replace").strip()
        return ApiError(status, text or http.client.responses.get(status, "error"))
    if isinstance(problem, dict):
        title = str(problem.get("title") or http.client.responses.get(status, "error"))
        detail = problem.get("detail")
        return ApiError(status, f"{title}: {detail}" if detail else title)
    return ApiError(status, http.client.responses.get(status, "error"))


def _file_name(export_id: str, disposition: str | None, url: str) -> str:
    """Return a safe local file name: the one the server suggests, else from the URL."""
    match = re.search(r'filename="?([^";]+)"?', disposition or "")
    suggested = match.group(1) if match else f"data-export-{export_id}-{_url_name(url)}"
    name = _SAFE_NAME.sub("_", posixpath.basename(suggested)).lstrip(".")
    return name or f"data-export-{export_id}"


def _url_name(url: str) -> str:
    return posixpath.basename(urlsplit(url).path) or "download"


def _save(
    response: http.client.HTTPResponse,
    target: Path,
    *,
    expected_sha256: str,
    progress: Progress | None,
) -> Downloaded:
    """Stream the body to `target` via a partial file, keeping it only if the digest matches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    length_header = response.getheader("Content-Length")
    total = int(length_header) if length_header and length_header.isdigit() else None
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as sink:
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                digest.update(chunk)
                sink.write(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(size, total)
    except (OSError, http.client.HTTPException) as exc:
        partial.unlink(missing_ok=True)
        raise ApiError(0, f"download of {target.name} broke off after {size} bytes: {exc}") from exc
    actual = digest.hexdigest()
    if total is not None and size != total:
        partial.unlink(missing_ok=True)
        raise ApiError(0, f"{target.name}: got {size} bytes of {total}")
    if actual != expected_sha256.lower():
        partial.unlink(missing_ok=True)
        raise DigestMismatchError(
            f"{target.name}: SHA-256 {actual} differs from the recorded {expected_sha256}"
        )
    os.replace(partial, target)
    return Downloaded(target, size, actual)
