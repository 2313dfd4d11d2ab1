"""Where a finished export is read from: a local directory or an S3 prefix, behind one interface.

A location lists the names directly under it, reports an object's size, reads small companion
files (manifest, SHA256SUMS, sidecars) whole up to a limit, and streams data objects in bounded
pieces. `open_location` picks the kind from the address; `open_location_or_object` also
recognises the address of one data object (a `LoneObject`); `parse_s3_url` refuses anything that
is not a plain `s3://bucket/prefix/`. Reading only: verification and restore never write here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from pipelines.errors import PermanentError, RetryableError
from pipelines.manifest import MANIFEST_NAME
from pipelines.storage.reader import iter_file_bytes, iter_object_bytes
from pipelines.storage.s3_errors import translate_s3_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Companion files are small (a manifest lists ~400 bytes per object); anything larger than this
# is not one of ours and is refused rather than read into memory.
SMALL_FILE_MAX_BYTES: Final = 64 * 1024 * 1024
# S3's own rule for bucket names (3-63 lowercase letters, digits, dots and hyphens).
_BUCKET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# ListObjectsV2 returns at most 1,000 keys a page.
LIST_PAGE_KEYS: Final = 1000
_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})


class Location(Protocol):
    """A finished export's folder, read-only."""

    @property
    def address(self) -> str: ...

    def names(self) -> Iterator[str]: ...

    def size(self, name: str) -> int | None: ...

    def read_small(self, name: str) -> bytes | None: ...

    def iter_bytes(self, name: str) -> Iterator[bytes]: ...


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/prefix` into a bucket and a prefix ending in `/` (or empty)."""
    if not url.startswith("s3://"):
        raise PermanentError(f"not an s3:// address: {url!r}")
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise PermanentError(f"{url!r} does not name a valid bucket: use s3://BUCKET/PREFIX/")
    if any(ord(char) < 0x20 or char in "\\?#" for char in prefix):
        raise PermanentError(f"{url!r} has control characters, '\\', '?' or '#' in its prefix")
    segments = prefix.rstrip("/").split("/") if prefix.rstrip("/") else []
    if any(segment in {"", ".", ".."} for segment in segments):
        raise PermanentError(f"{url!r} has an empty, '.' or '..' segment in its prefix")
    return bucket, "/".join(segments) + "/" if segments else ""


def _check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise PermanentError(f"{name!r} is not a plain file name")
    return name


class LocalLocation:
    """An export in a local directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @property
    def address(self) -> str:
        """Return the directory path."""
        return str(self._directory)

    def names(self) -> Iterator[str]:
        """Yield the names of the regular files in the directory, sorted."""
        try:
            entries = sorted(self._directory.iterdir())
        except FileNotFoundError as exc:
            raise PermanentError(f"{self._directory} does not exist") from exc
        except OSError as exc:
            raise PermanentError(f"cannot list {self._directory}: {exc}") from exc
        for entry in entries:
            if entry.is_file():
                yield entry.name

    def size(self, name: str) -> int | None:
        """Return the size of `name` in bytes, or None when there is no such file."""
        try:
            return (self._directory / _check_name(name)).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RetryableError(f"cannot stat {self._directory / name}: {exc}") from exc

    def read_small(self, name: str) -> bytes | None:
        """Return the whole of a small file, or None when there is none."""
        size = self.size(name)
        if size is None:
            return None
        if size > SMALL_FILE_MAX_BYTES:
            raise PermanentError(f"{name} has {size} bytes, more than a companion file can have")
        return b"".join(iter_file_bytes(self._directory / name))

    def iter_bytes(self, name: str) -> Iterator[bytes]:
        """Yield the bytes of `name` in bounded pieces."""
        return iter_file_bytes(self._directory / _check_name(name))


class S3Location:
    """An export under a key prefix of a bucket."""

    def __init__(self, client: S3Client, *, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix

    @property
    def address(self) -> str:
        """Return the prefix as s3://bucket/prefix/."""
        return f"s3://{self._bucket}/{self._prefix}"

    def key(self, name: str) -> str:
        """Return the object key of `name`."""
        return self._prefix + _check_name(name)

    def names(self) -> Iterator[str]:
        """Yield the names of the objects directly under the prefix, in key order."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket,
            Prefix=self._prefix,
            Delimiter="/",
            PaginationConfig={"PageSize": LIST_PAGE_KEYS},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self._prefix) :]
        except (BotoCoreError, ClientError) as exc:
            raise translate_s3_error(exc, f"ListObjectsV2 {self.address}") from exc

    def size(self, name: str) -> int | None:
        """Return the size of `name` in bytes, or None when there is no such object."""
        key = self.key(name)
        try:
            answer = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise translate_s3_error(exc, f"HeadObject s3://{self._bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise translate_s3_error(exc, f"HeadObject s3://{self._bucket}/{key}") from exc
        return int(answer["ContentLength"])

    def read_small(self, name: str) -> bytes | None:
        """Return the whole of a small object, or None when there is none."""
        size = self.size(name)
        if size is None:
            return None
        if size > SMALL_FILE_MAX_BYTES:
            raise PermanentError(f"{name} has {size} bytes, more than a companion file can have")
        return b"".join(self.iter_bytes(name))

    def iter_bytes(self, name: str) -> Iterator[bytes]:
        """Yield the bytes of `name` in bounded pieces."""
        return iter_object_bytes(self._client, bucket=self._bucket, key=self.key(name))


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


def open_location(address: str, *, s3_client: Callable[[], S3Client]) -> Location:
    """Open `s3://bucket/prefix/` with a client from `s3_client`, or a local directory."""
    if address.startswith("s3://"):
        bucket, prefix = parse_s3_url(address)
        return S3Location(s3_client(), bucket=bucket, prefix=prefix)
    if "://" in address:
        raise PermanentError(f"{address!r}: only local paths and s3:// addresses are supported")
    path = Path(address)
    if path.is_file():
        path = path.parent  # the manifest itself was named
    if not path.is_dir():
        raise PermanentError(f"{address} is not a directory holding an export")
    return LocalLocation(path)


@dataclass(frozen=True)
class LoneObject:
    """One data object named by its own address, to be read without a manifest."""

    location: Location
    name: str

    @property
    def address(self) -> str:
        """Return the object's own address."""
        return f"{self.location.address.rstrip('/')}/{self.name}"


def open_location_or_object(
    address: str, *, s3_client: Callable[[], S3Client]
) -> Location | LoneObject:
    """Open an export's folder or prefix, or the one data object `address` names.

    A path or key naming `manifest.json` means the export it describes; a path naming any other
    file, or an `s3://` address not ending in `/` that names an existing object, is a lone
    object; anything else is opened as a location.
    """
    if address.startswith("s3://"):
        if address.endswith("/"):
            return open_location(address, s3_client=s3_client)
        client = s3_client()
        bucket, prefix = parse_s3_url(address)
        parent, _, name = prefix.rstrip("/").rpartition("/")
        folder = S3Location(client, bucket=bucket, prefix=f"{parent}/" if parent else "")
        if name == MANIFEST_NAME:
            return folder
        if name and folder.size(name) is not None:
            return LoneObject(folder, name)
        return S3Location(client, bucket=bucket, prefix=prefix)
    path = Path(address)
    if path.is_file() and path.name != MANIFEST_NAME:
        return LoneObject(LocalLocation(path.parent), path.name)
    return open_location(address, s3_client=s3_client)
