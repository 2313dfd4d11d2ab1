"""Restore: load an export's `users` and `files` back into a database, all or nothing.

A source is an export folder or `s3://bucket/prefix/` (data objects plus `manifest.json`), or one
data object (format from its name or first bytes, compression from its magic bytes), opened with
`locations.open_location_or_object`. A manifest whose totals or `SHA256SUMS` disagree with its
list of objects is refused before anything is read. Records go in through `loading` in one
transaction that commits only after every object's size, SHA-256 and record counts matched its
manifest entry and its own trailer (required once a header was read). It never loads an object
whole.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import orjson
import psycopg
from psycopg.pq import TransactionStatus

from pipelines.companions import check_manifest_totals, check_sha256sums
from pipelines.detection import UnknownFormatError, format_from_name, sniff_format
from pipelines.errors import PermanentError, RetryableError
from pipelines.formats import CorruptExportError, RecordStream, iter_records
from pipelines.loading import (
    MISSING_KEYS,
    RestoreConflictError,
    RestoreError,
    TableLoader,
    diagnostic,
    foreign_keys_deferred,
    prepare_target,
)
from pipelines.locations import Location, LoneObject, open_location_or_object
from pipelines.manifest import (
    MANIFEST_NAME,
    SHA256SUMS_NAME,
    Manifest,
    ManifestObject,
    parse_manifest,
)
from pipelines.records import FILES
from pipelines.storage.reader import iter_content
from pipelines.verification_problems import Problem, metadata_problems

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

# SQLSTATE class 54, "program limit exceeded" (stack depth, statement too complex): permanent.
PROGRAM_LIMIT_EXCEEDED: Final = "54"

__all__ = [
    "RestoreConflictError",
    "RestoreError",
    "RestoreProgress",
    "RestoreReport",
    "RestoreSource",
    "SourceObject",
    "open_source",
    "restore",
]


@dataclass(frozen=True)
class SourceObject:
    """One data object of a source, and what its manifest says about it (if there is one)."""

    name: str
    format: str | None
    compression: str | None
    expected: ManifestObject | None
    open: Callable[[], Iterator[bytes]]
    # The manifest's includeMetadata option and export id; None for a lone object.
    include_metadata: bool | None = None
    export_id: str | None = None


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

    def client() -> S3Client:
        if s3_client is None:
            raise RestoreError(f"{location}: reading from S3 needs S3 settings")
        return s3_client

    found = open_location_or_object(location, s3_client=client)
    if isinstance(found, LoneObject):
        lone = SourceObject(
            found.name,
            format_from_name(found.name),
            None,
            None,
            partial(found.location.iter_bytes, found.name),
        )
        return RestoreSource(location, None, (lone,))
    return RestoreSource(location, *_manifest_objects(found))


def _manifest_objects(location: Location) -> tuple[Manifest, tuple[SourceObject, ...]]:
    """Read and check the manifest at `location`; describe its objects in manifest order."""
    data = location.read_small(MANIFEST_NAME)
    if data is None:
        raise RestoreError(
            f"{location.address} holds no {MANIFEST_NAME}: give the folder of a complete export, "
            "or one data object file"
        )
    manifest = parse_manifest(data)
    problems = _manifest_problems(location, data, manifest)
    if problems:
        raise CorruptExportError(
            f"the export at {location.address} is incomplete or inconsistent, so nothing was "
            "restored: " + "; ".join(problem.message for problem in problems)
        )
    include_metadata = manifest.options.get("includeMetadata")
    objects = tuple(
        SourceObject(
            name=item.name,
            format=manifest.format,
            compression=manifest.compression,
            expected=item,
            open=partial(location.iter_bytes, item.name),
            include_metadata=include_metadata if isinstance(include_metadata, bool) else None,
            export_id=manifest.export_id,
        )
        for item in manifest.objects
    )
    return manifest, objects


def _manifest_problems(location: Location, data: bytes, manifest: Manifest) -> list[Problem]:
    """Return what verification finds wrong with the manifest's totals and `SHA256SUMS`.

    Each object is checked against its own entry while it is read, so an entry missing from the
    manifest shows only here: in totals that its objects no longer add up to, and in a
    `SHA256SUMS` listing an object the manifest does not.
    """
    problems = check_manifest_totals(orjson.loads(data), manifest)
    sums = location.read_small(SHA256SUMS_NAME)
    if sums is None:
        # Verification fails such an export, but the data is still checked against every
        # manifest entry and the totals: on the day it is needed, a lost companion file must
        # not stand between an operator and the rows.
        logger.warning(
            "%s has no %s: restoring on the manifest's totals and digests alone",
            location.address,
            SHA256SUMS_NAME,
        )
    else:
        problems.extend(check_sha256sums(sums, manifest.objects))
    return problems


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
            try:
                export_format, self._content = sniff_format(self._content, source.name)
            except UnknownFormatError as exc:
                raise RestoreError(str(exc)) from exc
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
        problems = self._metadata_problems()
        counts = {name: count for name, count in self.records.counts.items() if count}
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

    def _metadata_problems(self) -> list[str]:
        """Compare the object's own header and trailer with what was read, as verification does.

        A header says the writer included metadata, so its trailer must follow: without it an
        object cut at a record boundary would otherwise pass as whole.
        """
        name = self.source.name
        stream = self.records
        include_metadata = bool(self.source.include_metadata) or stream.header is not None
        found = metadata_problems(
            name, stream, stream.counts, include_metadata, self.source.export_id
        )
        return [problem.message.removeprefix(f"{name}: ") for problem in found]


# --- restoring -----------------------------------------------------------------------------------


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
    loader = _ObjectLoader(TableLoader(fill_object_keys=fill_object_keys), progress)
    current = "the target"
    try:
        with conn.transaction():
            schema_applied, empty = prepare_target(conn, allow_non_empty=allow_non_empty)
            with foreign_keys_deferred(conn, defer=empty), conn.cursor() as cursor:
                for item in source.objects:
                    current = item.name
                    loader.load(cursor, item)
                current = "the check that every file's owner was restored"
    except psycopg.errors.UniqueViolation as exc:
        raise RestoreConflictError(
            f"{current}: a restored row has the id of a row already in the target "
            f"({diagnostic(exc)}); nothing was restored"
        ) from exc
    except psycopg.OperationalError as exc:
        if (exc.sqlstate or "").startswith(PROGRAM_LIMIT_EXCEEDED):
            # Operational to psycopg, but a retry meets the same limit: a jsonb value nested
            # deeper than the target's max_stack_depth lets COPY read, for one.
            raise PermanentError(
                f"{current}: a row exceeds a limit of the target ({diagnostic(exc)}); "
                "nothing was restored"
            ) from exc
        raise RetryableError(f"restore lost the database while loading {current}: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(
            f"{current}: the target refused a row ({diagnostic(exc)}); nothing was restored"
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
        counts=dict(loader.tables.counts),
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
        raise RestoreError(MISSING_KEYS)


class _ObjectLoader:
    """Loads each object's records table run by table run, checking the object once read."""

    def __init__(
        self, tables: TableLoader, progress: Callable[[RestoreProgress], None] | None
    ) -> None:
        self.tables = tables
        self.stored_bytes = 0
        self._progress = progress

    def load(self, cursor: psycopg.Cursor[Any], item: SourceObject) -> None:
        """Copy one object's records, then check it against its manifest entry."""
        checked = _CheckedObject(item)
        before = self.stored_bytes

        def report() -> None:
            self._report(item.name, before + checked.stored_bytes)

        for table, run in groupby(checked.records, key=attrgetter("table")):
            self.tables.copy(cursor, table, run, on_progress=report)
        checked.finish()
        self.stored_bytes = before + checked.stored_bytes
        self._report(item.name, self.stored_bytes)

    def _report(self, name: str, stored_bytes: int) -> None:
        if self._progress is not None:
            self._progress(RestoreProgress(name, self.tables.rows, stored_bytes))
