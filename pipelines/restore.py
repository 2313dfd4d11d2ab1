"""Restore: load an export's `users` and `files` back into a database, all or nothing.

A source is an export folder or `s3://bucket/prefix/` (data objects plus `manifest.json`), or one
data object (format from its name or first bytes, compression from its magic bytes). Records go in
with `COPY ... FROM STDIN` as PostgreSQL text, in one transaction that commits only after every
object's size, SHA-256 and record counts matched its manifest entry. It never loads an object whole.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import chain, groupby
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql
from psycopg.pq import TransactionStatus

from pipelines.errors import PermanentError, RetryableError
from pipelines.formats import CorruptExportError, RecordStream, iter_records
from pipelines.manifest import (
    COMPRESSION_SUFFIXES,
    MANIFEST_NAME,
    SHA256SUMS_NAME,
    Manifest,
    ManifestObject,
    parse_manifest,
)
from pipelines.records import FILES, Record, Table
from pipelines.schema import apply_schema
from pipelines.serializers import EXTENSIONS
from pipelines.storage.reader import iter_content, iter_file_bytes, iter_object_bytes
from pipelines.storage.s3_errors import translate_s3_error

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# Largest manifest.json or SHA256SUMS read: a 10,000-object bulk export's manifest is ~4 MiB.
MANIFEST_MAX_BYTES: Final = 64 * 1024 * 1024
# Rows between progress reports: frequent enough for a smooth bar, rare enough to cost nothing.
PROGRESS_ROWS: Final = 10_000
# Content bytes looked at to tell the format of an object whose name does not say it.
SNIFF_BYTES: Final = 64
# What each format's content starts with (the documented first bytes of format version 1).
FORMAT_SIGNATURES: Final = (
    (b'{"format":', "json"),
    (b'{"record_type":', "jsonl"),
    (b"record_type,", "csv"),
    (b"<?xml", "xml"),
    (b"<export", "xml"),
)
# The key an export without system fields lacks, derived on request the way the application
# names its objects.
OBJECT_KEY_COLUMN: Final = "object_key"


class RestoreError(PermanentError):
    """The restore was refused: the target or the export does not allow it."""


class RestoreConflictError(RestoreError):
    """A restored row has the id of a row already in the target."""


@dataclass(frozen=True)
class SourceObject:
    """One data object of a source, and what its manifest says about it (if there is one)."""

    name: str
    format: str | None
    compression: str | None
    expected: ManifestObject | None
    open: Callable[[], Iterator[bytes]]


@dataclass(frozen=True)
class RestoreSource:
    """Where an export is: its manifest (None for a lone object) and its data objects in order."""

    location: str
    manifest: Manifest | None
    objects: tuple[SourceObject, ...]


@dataclass(frozen=True)
class RestoreProgress:
    """How far a restore has got: rows loaded and stored bytes read over all objects."""

    object_name: str
    rows: int
    stored_bytes: int


@dataclass(frozen=True)
class RestoreReport:
    """What a restore loaded and how long it took."""

    location: str
    counts: Mapping[str, int]
    objects: int
    stored_bytes: int
    seconds: float
    verified: bool
    schema_applied: bool

    @property
    def rows(self) -> int:
        """Return the rows loaded over all tables."""
        return sum(self.counts.values())

    @property
    def rows_per_second(self) -> float:
        """Return the load rate over the whole restore."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# --- sources -------------------------------------------------------------------------------------


def open_source(location: str, *, s3_client: S3Client | None = None) -> RestoreSource:
    """Describe the export at a local path or `s3://bucket/prefix`, reading its manifest."""
    if location.startswith("s3://"):
        if s3_client is None:
            raise RestoreError(f"{location}: reading from S3 needs S3 settings")
        return _s3_source(s3_client, location)
    path = Path(location)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent  # the manifest names the export it describes
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise RestoreError(
                f"{path} holds no {MANIFEST_NAME}: give the folder of a complete export, or one "
                "data object file"
            )
        sums_path = path / SHA256SUMS_NAME
        sums = (
            _read_small(iter_file_bytes(sums_path), str(sums_path)) if sums_path.is_file() else None
        )
        manifest = _checked_manifest(_read_small(iter_file_bytes(manifest_path), location), sums)
        return _manifest_source(location, manifest, lambda name: iter_file_bytes(path / name))
    if path.is_file():
        lone = _lone_object(path.name, lambda: iter_file_bytes(path))
        return RestoreSource(location, None, (lone,))
    raise RestoreError(f"{location} does not exist")


def _s3_source(client: S3Client, location: str) -> RestoreSource:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    if not bucket:
        raise RestoreError(f"{location}: no bucket named")
    if key and not key.endswith("/") and _s3_exists(client, bucket, key):
        lone = _lone_object(
            key.rsplit("/", 1)[-1], lambda: iter_object_bytes(client, bucket=bucket, key=key)
        )
        return RestoreSource(location, None, (lone,))
    prefix = f"{key}/" if key and not key.endswith("/") else key
    if not _s3_exists(client, bucket, prefix + MANIFEST_NAME):
        raise RestoreError(f"no {MANIFEST_NAME} at s3://{bucket}/{prefix}: not a complete export")
    sums = None
    if _s3_exists(client, bucket, prefix + SHA256SUMS_NAME):
        sums_blobs = iter_object_bytes(client, bucket=bucket, key=prefix + SHA256SUMS_NAME)
        sums = _read_small(sums_blobs, f"s3://{bucket}/{prefix}{SHA256SUMS_NAME}")
    manifest_blobs = iter_object_bytes(client, bucket=bucket, key=prefix + MANIFEST_NAME)
    manifest = _checked_manifest(_read_small(manifest_blobs, location), sums)
    return _manifest_source(
        location,
        manifest,
        lambda name: iter_object_bytes(client, bucket=bucket, key=prefix + name),
    )


def _s3_exists(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 404:
            return False
        raise translate_s3_error(exc, f"HeadObject s3://{bucket}/{key}") from exc
    except BotoCoreError as exc:
        raise translate_s3_error(exc, f"HeadObject s3://{bucket}/{key}") from exc
    return True


def _manifest_source(
    location: str, manifest: Manifest, opener: Callable[[str], Iterator[bytes]]
) -> RestoreSource:
    objects = tuple(
        SourceObject(
            name=item.name,
            format=manifest.format,
            compression=manifest.compression,
            expected=item,
            open=partial(opener, item.name),
        )
        for item in manifest.objects
    )
    return RestoreSource(location, manifest, objects)


def _lone_object(name: str, opener: Callable[[], Iterator[bytes]]) -> SourceObject:
    """Describe a data object without a manifest: format from its name, compression detected."""
    stem = name
    for suffix in COMPRESSION_SUFFIXES.values():
        if suffix and stem.endswith(suffix):
            stem = stem.removesuffix(suffix)
    export_format = next(
        (fmt for fmt, extension in EXTENSIONS.items() if stem.endswith(extension)), None
    )
    return SourceObject(name, export_format, None, None, opener)


def _read_small(blobs: Iterable[bytes], what: str) -> bytes:
    """Return a small document (manifest, checksums) whole, refusing one past the size bound."""
    pieces: list[bytes] = []
    size = 0
    for blob in blobs:
        size += len(blob)
        if size > MANIFEST_MAX_BYTES:
            raise RestoreError(f"{what} is larger than {MANIFEST_MAX_BYTES} bytes")
        pieces.append(blob)
    return b"".join(pieces)


def _checked_manifest(data: bytes, sums: bytes | None) -> Manifest:
    """Parse the manifest and check that `SHA256SUMS`, when present, lists the same digests."""
    manifest = parse_manifest(data)
    if sums is None:
        return manifest
    listed: dict[str, str] = {}
    for line in sums.decode("utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name.lstrip("*")] = digest
    for item in manifest.objects:
        if listed.get(item.name) != item.sha256:
            raise CorruptExportError(
                f"{SHA256SUMS_NAME} and {MANIFEST_NAME} disagree on {item.name}: "
                f"{listed.get(item.name, 'missing')} against {item.sha256}"
            )
    return manifest


# --- reading with checks -------------------------------------------------------------------------


class _CheckedObject:
    """One object's records, read while its stored bytes and content are digested and counted."""

    def __init__(self, source: SourceObject) -> None:
        self.source = source
        self.stored_bytes = 0
        self.content_bytes = 0
        self._stored_hash = hashlib.sha256()
        self._content_hash = hashlib.sha256()
        self._content = self._tap_content(
            iter_content(self._tap_stored(source.open()), source.compression)
        )
        export_format = source.format
        if export_format is None:
            export_format, self._content = _sniff_format(self._content, source.name)
        self.records: RecordStream = iter_records(self._content, format=export_format)

    def _tap_stored(self, blobs: Iterator[bytes]) -> Iterator[bytes]:
        for blob in blobs:
            self._stored_hash.update(blob)
            self.stored_bytes += len(blob)
            yield blob

    def _tap_content(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            self._content_hash.update(piece)
            self.content_bytes += len(piece)
            yield piece

    def finish(self) -> None:
        """Read what the parser left, then compare digests and counts; raise on any mismatch."""
        for _ in self._content:
            pass
        problems: list[str] = []
        counts = {name: count for name, count in self.records.counts.items() if count}
        trailer = self.records.trailer
        if trailer is not None and {k: v for k, v in trailer.counts.items() if v} != counts:
            problems.append(f"its metadata counts {dict(trailer.counts)} but it holds {counts}")
        expected = self.source.expected
        if expected is not None:
            checks = (
                ("stored size", expected.size_bytes, self.stored_bytes),
                ("SHA-256", expected.sha256, self._stored_hash.hexdigest()),
                ("content size", expected.content_bytes, self.content_bytes),
                ("content SHA-256", expected.content_sha256, self._content_hash.hexdigest()),
                ("record counts", {k: v for k, v in expected.records.items() if v}, counts),
            )
            problems += [
                f"{what} is {got}, the manifest says {want}"
                for what, want, got in checks
                if want != got
            ]
        if problems:
            raise CorruptExportError("; ".join(problems))


def _sniff_format(content: Iterator[bytes], name: str) -> tuple[str, Iterator[bytes]]:
    """Tell an object's format from its first content bytes; return it and the whole content."""
    head = b""
    pieces: list[bytes] = []
    for piece in content:
        pieces.append(piece)
        head += piece[: SNIFF_BYTES - len(head)]
        if len(head) >= SNIFF_BYTES:
            break
    for signature, export_format in FORMAT_SIGNATURES:
        if head.startswith(signature):
            return export_format, chain(pieces, content)
    raise RestoreError(
        f"{name}: neither its name nor its first bytes say which export format it is"
    )


# --- loading -------------------------------------------------------------------------------------


def restore(
    conn: psycopg.Connection[Any],
    source: RestoreSource,
    *,
    allow_non_empty: bool = False,
    fill_object_keys: bool = False,
    progress: Callable[[RestoreProgress], None] | None = None,
) -> RestoreReport:
    """Load every record of `source` into the database in one transaction, checked as it is read.

    The target gets `schema.sql` when it has neither table. A target holding users or files rows
    is refused unless `allow_non_empty`; then a restored id already present is a conflict and the
    whole restore rolls back (no merge: a disaster-recovery restore must not silently pick one
    version of a row). Columns an export lacks (system fields) get their defaults, except
    `files.object_key`, which has none: such an export is refused unless `fill_object_keys`
    derives `files/<owner_id>/<id>`, the application's own naming. Users load before files.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("restore needs a connection with no transaction open")
    if source.manifest is not None:
        _check_manifest_restorable(source.manifest, fill_object_keys=fill_object_keys)
    started = time.monotonic()
    loader = _Loader(fill_object_keys=fill_object_keys, progress=progress)
    current = "the target"
    try:
        with conn.transaction():
            schema_applied, empty = _prepare_target(conn, allow_non_empty=allow_non_empty)
            with _foreign_keys_deferred(conn, defer=empty), conn.cursor() as cursor:
                for item in source.objects:
                    current = item.name
                    loader.load(cursor, item)
                current = "the check that every file's owner was restored"
    except psycopg.errors.UniqueViolation as exc:
        raise RestoreConflictError(
            f"{current}: a restored row has the id of a row already in the target "
            f"({_diagnostic(exc)}); nothing was restored"
        ) from exc
    except psycopg.OperationalError as exc:
        raise RetryableError(f"restore lost the database while loading {current}: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(
            f"{current}: the target refused a row ({_diagnostic(exc)}); nothing was restored"
        ) from exc
    except RestoreError:
        raise
    except CorruptExportError as exc:
        raise CorruptExportError(
            f"the export is corrupt: {current}: {exc}; nothing was restored"
        ) from exc
    except PermanentError as exc:
        raise PermanentError(f"cannot restore {current}: {exc}; nothing was restored") from exc
    except RetryableError as exc:
        raise RetryableError(f"restore stopped at {current}: {exc}; nothing was restored") from exc
    seconds = time.monotonic() - started
    report = RestoreReport(
        location=source.location,
        counts=dict(loader.counts),
        objects=len(source.objects),
        stored_bytes=loader.stored_bytes,
        seconds=seconds,
        verified=source.manifest is not None,
        schema_applied=schema_applied,
    )
    logger.info(
        "restore %s: %s rows in %.2f s (%.0f rows/s)",
        source.location,
        report.counts,
        seconds,
        report.rows_per_second,
    )
    return report


def _check_manifest_restorable(manifest: Manifest, *, fill_object_keys: bool) -> None:
    """Refuse before reading anything an export the target cannot take whole."""
    system = bool(manifest.options.get("includeSystemFields"))
    if not system and manifest.totals.get(FILES.name, 0) and not fill_object_keys:
        raise RestoreError(_MISSING_KEYS)


_MISSING_KEYS = (
    "the export has no system fields, so its files lack object_key, which the target requires: "
    "restore an export made with includeSystemFields, or pass --fill-object-keys to derive "
    "files/<owner_id>/<id>"
)


def _prepare_target(conn: psycopg.Connection[Any], *, allow_non_empty: bool) -> tuple[bool, bool]:
    """Apply the schema to a target without tables, lock the tables, refuse a non-empty target.

    Returns whether the schema was applied and whether both tables are empty.
    """
    row = conn.execute(
        "SELECT to_regclass('users') IS NOT NULL, to_regclass('files') IS NOT NULL"
    ).fetchone()
    assert row is not None
    applied = False
    if not row[0] and not row[1]:
        apply_schema(conn)
        applied = True
    elif not (row[0] and row[1]):
        raise RestoreError("the target has only one of the users and files tables")
    # Writers wait until the restore ends, so the emptiness seen here still holds at commit.
    conn.execute("LOCK TABLE users, files IN SHARE ROW EXCLUSIVE MODE")
    found = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM users), EXISTS (SELECT 1 FROM files)"
    ).fetchone()
    assert found is not None
    empty = not (found[0] or found[1])
    if not empty and not allow_non_empty:
        raise RestoreError(
            "the target already holds users or files rows: restore into an empty database, "
            "or pass --allow-non-empty to add to it (an id already present is then an error)"
        )
    return applied, empty


@contextmanager
def _foreign_keys_deferred(conn: psycopg.Connection[Any], *, defer: bool) -> Iterator[None]:
    """Drop the foreign keys of `files` around the load into empty tables, then add them back.

    A per-row key check more than halves the load rate (measured: ~40k against ~90k rows/s);
    adding the key afterwards checks every row in one join. Inside the restore's transaction, so
    a failure restores the definitions with everything else. Kept row by row on a non-empty
    target, where adding the key back would scan rows the restore did not write.
    """
    if not defer:
        yield
        return
    keys = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'files'::regclass AND contype = 'f' ORDER BY conname"
    ).fetchall()  # a table's foreign keys: a handful of catalog rows
    for name, _ in keys:
        conn.execute(sql.SQL("ALTER TABLE files DROP CONSTRAINT {}").format(sql.Identifier(name)))
    yield
    for name, definition in keys:
        # The definition text comes from the catalog, never from the export.
        conn.execute(
            sql.SQL("ALTER TABLE files ADD CONSTRAINT {} {}").format(
                sql.Identifier(name), sql.SQL(definition)
            )
        )


class _Loader:
    """Copies each object's records into the target, table run by table run."""

    def __init__(
        self, *, fill_object_keys: bool, progress: Callable[[RestoreProgress], None] | None
    ) -> None:
        self.counts: dict[str, int] = {}
        self.stored_bytes = 0
        self._rows = 0
        self._fill_object_keys = fill_object_keys
        self._progress = progress

    def load(self, cursor: psycopg.Cursor[Any], item: SourceObject) -> None:
        """Copy one object's records, then check it against its manifest entry."""
        checked = _CheckedObject(item)
        before = self.stored_bytes
        for table, run in groupby(checked.records, key=attrgetter("table")):
            self._copy(cursor, table, run, checked, before)
        checked.finish()
        self.stored_bytes = before + checked.stored_bytes
        self._report(item.name, self.stored_bytes)

    def _copy(
        self,
        cursor: psycopg.Cursor[Any],
        table: Table,
        run: Iterable[Record],
        checked: _CheckedObject,
        before: int,
    ) -> None:
        columns = table.column_names
        derive: Callable[[Record], tuple[str | None, ...]] | None = None
        if table.name == FILES.name and OBJECT_KEY_COLUMN not in columns:
            if not self._fill_object_keys:
                raise RestoreError(_MISSING_KEYS)
            derive = _object_key_deriver(table)
            columns = (*columns, OBJECT_KEY_COLUMN)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        count = 0
        with cursor.copy(statement) as copy:
            for record in run:
                copy.write_row(record.values if derive is None else derive(record))
                count += 1
                if count % PROGRESS_ROWS == 0:
                    self._rows += PROGRESS_ROWS
                    self._report(checked.source.name, before + checked.stored_bytes)
        self._rows += count % PROGRESS_ROWS
        self.counts[table.name] = self.counts.get(table.name, 0) + count

    def _report(self, name: str, stored_bytes: int) -> None:
        if self._progress is not None:
            self._progress(RestoreProgress(name, self._rows, stored_bytes))


def _object_key_deriver(table: Table) -> Callable[[Record], tuple[str | None, ...]]:
    """Return a function adding `files/<owner_id>/<id>` to a files record without object_key."""
    id_index = table.column_names.index("id")
    owner_index = table.column_names.index("owner_id")

    def derive(record: Record) -> tuple[str | None, ...]:
        values = record.values
        return (*values, f"files/{values[owner_index]}/{values[id_index]}")

    return derive


def _diagnostic(exc: psycopg.Error) -> str:
    """Return the server's message and context (which COPY line) for an error."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc), diag.message_detail, diag.context]
    return "; ".join(" ".join(part.split()) for part in parts if part)
