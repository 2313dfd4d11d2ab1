"""A small client of the export API for the CLI and the demo: JSON calls and verified downloads.

Speaks HTTP with the standard library. A download follows the API's redirect to the presigned
URL without the bearer token (it must never reach the object store), streams the body to a file
in fixed-size chunks while hashing it, and keeps the file only when its SHA-256 matches the digest
the API recorded. A download that breaks off resumes from the bytes it has (`Range` with
`If-Range`, through the API again so a presigned URL is fresh), up to MAX_RESUMES times; an
object that changed meanwhile is fetched whole. Errors become `ApiError` with the problem
details' title and detail.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
# Times a download that broke off is resumed, and the pause before each resume.
MAX_RESUMES = 5
RESUME_PAUSE_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

logger = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]


class ApiError(ExportError):
    """The API (or the object store behind a download URL) refused or failed a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


class DigestMismatchError(ExportError):
    """A downloaded file's SHA-256 differs from the digest the API recorded."""


@dataclass
class _Partial:
    """The bytes of a download received so far, in `<name>.partial`, and how to ask for more."""

    path: Path
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    etag: str | None = None

    def restart(self) -> None:
        """Forget what was received: the next answer is the whole object."""
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.sha256()
        self.size = 0
        self.etag = None

    def resume_headers(self) -> dict[str, str]:
        """Ask for the rest, but only of the same object (otherwise the whole of it)."""
        if self.size == 0 or self.etag is None:
            return {}
        return {"Range": f"bytes={self.size}-", "If-Range": self.etag}


class _BrokenOffError(Exception):
    """The answer's body stopped early; what arrived is kept for a resume."""


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
        partial: _Partial | None = None
        for resume in range(MAX_RESUMES + 1):
            try:
                return self._download_once(export_id, out_dir, partial, expected_sha256, progress)
            except _BrokenOffError as broken:
                partial = broken.args[0]
                assert isinstance(partial, _Partial)
                if resume == MAX_RESUMES:
                    partial.restart()
                    raise ApiError(
                        0, f"download of export {export_id} broke off {resume + 1} times: "
                        f"{broken.__cause__}",
                    ) from broken  # fmt: skip
                logger.warning(
                    "download of export %s broke off after %d bytes (%s); resuming (%d of %d)",
                    export_id, partial.size, broken.__cause__, resume + 1, MAX_RESUMES,
                )  # fmt: skip
                time.sleep(RESUME_PAUSE_SECONDS[min(resume, len(RESUME_PAUSE_SECONDS) - 1)])
        raise AssertionError("unreachable")

    def _download_once(
        self,
        export_id: str,
        out_dir: Path,
        partial: _Partial | None,
        expected_sha256: str,
        progress: Progress | None,
    ) -> Downloaded:
        """Ask the API for the export (or its missing bytes) and receive the answer."""
        url = f"{self.base_url}/api/exports/{export_id}/download"
        wanted = partial.resume_headers() if partial is not None else {}
        headers = {"Authorization": f"Bearer {self._token}", **wanted}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                conn, response = _open("GET", url, headers, None, self._timeout)
            except ApiError as exc:
                if partial is not None and partial.size:
                    raise _BrokenOffError(partial) from exc  # keep the bytes for the next try
                raise
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.getheader("Location") or ""
                    url = urljoin(url, location)
                    headers = dict(wanted)  # the bearer token is for the API only
                    continue
                if response.status not in (200, 206):
                    error = _error(response.status, response.read())
                    if partial is not None and partial.size and response.status >= 500:
                        raise _BrokenOffError(partial) from error  # the server may recover
                    if partial is not None:
                        partial.restart()
                    raise error
                if partial is None:
                    name = _file_name(export_id, response.getheader("Content-Disposition"), url)
                    target = out_dir / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = _Partial(target.with_name(target.name + ".partial"))
                return _receive(response, partial, expected_sha256=expected_sha256,
                                progress=progress)  # fmt: skip
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


def _receive(
    response: http.client.HTTPResponse,
    partial: _Partial,
    *,
    expected_sha256: str,
    progress: Progress | None,
) -> Downloaded:
    """Append the answer to the partial file (from scratch unless it is the range asked for);
    keep the file under its name only if the whole object arrived with the expected digest."""
    total = _answer_total(response, partial)
    if response.status != 206:
        partial.restart()
    partial.etag = response.getheader("ETag")
    target = partial.path.with_name(partial.path.name.removesuffix(".partial"))
    try:
        with partial.path.open("ab" if partial.size else "wb") as sink:
            while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                partial.digest.update(chunk)
                sink.write(chunk)
                partial.size += len(chunk)
                if progress is not None:
                    progress(partial.size, total)
    except (OSError, http.client.HTTPException) as exc:
        raise _BrokenOffError(partial) from exc
    if total is not None and partial.size < total:
        raise _BrokenOffError(partial) from ApiError(0, f"got {partial.size} bytes of {total}")
    actual = partial.digest.hexdigest()
    size = partial.size
    if total is not None and size != total:
        partial.restart()
        raise ApiError(0, f"{target.name}: got {size} bytes of {total}")
    if actual != expected_sha256.lower():
        partial.restart()
        raise DigestMismatchError(
            f"{target.name}: SHA-256 {actual} differs from the recorded {expected_sha256}"
        )
    os.replace(partial.path, target)
    return Downloaded(target, size, actual)


def _answer_total(response: http.client.HTTPResponse, partial: _Partial) -> int | None:
    """Return the whole object's size; a range that does not continue the file is refused."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.getheader("Content-Range") or "")
        if match is None or int(match.group(1)) != partial.size:
            error = ApiError(206, f"the answer is not the range asked for ({partial.size}-)")
            partial.restart()
            raise error
        return int(match.group(3))
    length = response.getheader("Content-Length")
    return int(length) if length and length.isdigit() else None
