"""Fill the application's `users` and `files` tables with skewed, hostile, deterministic demo data.

All rows are generated inside PostgreSQL by the set-based statements of `queries`, in one
transaction, so a failed run leaves nothing behind; Python only chooses parameters and reports what
it made. It refuses a non-empty `users` table unless told to replace its contents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from exportctl.seeding import queries, samples
from pipelines.errors import PermanentError, RetryableError

DEFAULT_SEED = 1
# The measured data set (notes/performance.md): 5,000,000 files for 100,000 users.
DEFAULT_FILES_PER_USER = 50
# Caps the heaviest user near the largest one of the measured data set (17,789 files).
DEFAULT_MAX_FILES = 20_000
# Share of users without any file (the measured data set has 9.3 %).
NONE_SHARE = 0.09
# Spread (sigma of the log) of files per user among users with files; the total sets the scale.
# With 50 files per user this gives a median of 7, ~0.65 % of users at 1,000+ and ~0.01 % at
# 10,000+, like the measured data set.
LOG_SIGMA = 1.95
# Share of rows drawing a hostile value beyond the first rows, which cycle through every sample.
NASTY_SHARE = 0.02
# Files with a 12,000-character path beyond the guaranteed one: about 10 in 5,000,000.
LONG_SHARE = 0.000002
DELETED_SHARE = 0.03
ADMIN_SHARE = 0.004
INTERNAL_SHARE = 0.01
EMPTY_JSON_SHARE = 0.05
# Timestamps spread over these years; fixed so that the same seed gives the same rows.
SINCE = "2014-01-01T00:00:00Z"
UNTIL = "2026-11-01T00:00:00Z"
# Index builds after the bulk insert sort millions of keys: give them room.
INDEX_BUILD_MEMORY = "256MB"

logger = logging.getLogger(__name__)


class TableNotEmptyError(PermanentError):
    """The users table already holds rows and replacing them was not asked for."""


@dataclass(frozen=True)
class SeedReport:
    """What one seeding run made: counts, the skew of files per user and string coverage."""

    users: int
    files: int
    seed: int
    median_files: int
    p99_files: int
    max_files: int
    users_without_files: int
    users_with_1000_plus: int
    users_with_10000_plus: int
    # Category -> the columns where it was found; categories found nowhere are absent.
    coverage: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def missing_categories(self) -> list[str]:
        """Return the hostile-string categories that no seeded column holds."""
        return [name for name in samples.categories() if name not in self.coverage]


# Where each sample list lands, as (label, table, SQL expression of the text value).
COVERAGE_FIELDS: tuple[tuple[str, str, str, tuple[samples.Sample, ...]], ...] = (
    ("users.display_name", "users", "display_name", samples.DISPLAY_NAMES),
    ("users.email", "users", "email", samples.EMAILS),
    ("users.settings", "users", "settings->>'note'", samples.JSON_TEXTS),
    ("files.path", "files", "path", samples.PATHS),
    ("files.content_type", "files", "content_type", samples.CONTENT_TYPES),
    ("files.metadata", "files", "metadata->>'note'", samples.JSON_TEXTS),
)


def seed_database(
    conn: psycopg.Connection[Any],
    *,
    users: int,
    max_files: int = DEFAULT_MAX_FILES,
    seed: int = DEFAULT_SEED,
    files: int | None = None,
    replace: bool = False,
) -> SeedReport:
    """Generate `users` users and `files` files (default 50 per user) in one transaction."""
    started = time.monotonic()
    total_files = DEFAULT_FILES_PER_USER * users if files is None else files
    params = _parameters(users=users, files=total_files, max_files=max_files, seed=seed)
    try:
        with conn.transaction():
            _session_settings(conn)
            _prepare_tables(conn, replace=replace)
            conn.execute("DROP TABLE IF EXISTS pg_temp.seed_plan")
            conn.execute(queries.CREATE_PLAN, params)
            skew = conn.execute(queries.PLAN_SUMMARY).fetchone()
            assert skew is not None
            if skew[1] != total_files:
                raise PermanentError(
                    f"cannot give {total_files} files to {users} users with at most "
                    f"{max_files} each: raise --max-files or lower --files"
                )
            conn.execute(queries.INSERT_USERS, params)
            logger.info("seed: %d users at %.1f s", users, time.monotonic() - started)
            with _files_constraints_deferred(conn):
                inserted = conn.execute(queries.INSERT_FILES, params).rowcount
                logger.info("seed: %d files at %.1f s", inserted, time.monotonic() - started)
            logger.info("seed: constraints rebuilt at %.1f s", time.monotonic() - started)
            if inserted != total_files:
                raise PermanentError(f"inserted {inserted} files, planned {total_files}")
            conn.execute("DROP TABLE pg_temp.seed_plan")
            conn.execute("ANALYZE users")
            conn.execute("ANALYZE files")
        logger.info("seed: committed at %.1f s", time.monotonic() - started)
        coverage = find_coverage(conn)
    except psycopg.OperationalError as exc:
        raise RetryableError(f"seeding failed: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"seeding failed: {exc}") from exc
    return SeedReport(
        users=skew[0],
        files=skew[1],
        seed=seed,
        median_files=skew[2],
        p99_files=skew[3],
        max_files=skew[4],
        users_without_files=skew[5],
        users_with_1000_plus=skew[6],
        users_with_10000_plus=skew[7],
        coverage=coverage,
        seconds=time.monotonic() - started,
    )


def find_coverage(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, ...]]:
    """Return, for each hostile-string category, the seeded columns that hold it."""
    found: dict[str, list[str]] = {}
    with conn.transaction():
        for label, table, expression, field_samples in COVERAGE_FIELDS:
            for category in sorted({sample.category for sample in field_samples}):
                query, args = _category_query(table, expression, category)
                row = conn.execute(query, args).fetchone()
                if row is not None and row[0]:
                    found.setdefault(category, []).append(label)
    return {name: tuple(found[name]) for name in samples.categories() if name in found}


def _category_query(table: str, expression: str, category: str) -> tuple[sql.Composed, list[str]]:
    test = samples.CATEGORY_TESTS[category]
    if test.min_length is not None:
        condition = sql.SQL("length({}) >= {}").format(
            sql.SQL(expression), sql.Literal(test.min_length)
        )
        args: list[str] = []
    else:
        assert test.pattern is not None
        condition = sql.SQL("{} ~ %s").format(sql.SQL(expression))
        args = [test.pattern]
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
        sql.Identifier(table), condition
    )
    return query, args


def _parameters(*, users: int, files: int, max_files: int, seed: int) -> dict[str, Any]:
    if users < 0 or files < 0 or max_files < 1:
        raise PermanentError("users and files must be zero or more, max_files at least 1")
    if not 0 <= seed < 2**31:
        raise PermanentError("seed must be between 0 and 2**31 - 1")
    content_types = [kind for kind, _ in samples.CONTENT_TYPE_EXTENSIONS]
    return {
        "seed": seed,
        "users": users,
        "files": files,
        "max_files": max_files,
        "none_share": NONE_SHARE,
        "log_sigma": LOG_SIGMA,
        "nasty_share": NASTY_SHARE,
        "long_share": LONG_SHARE,
        "deleted_share": DELETED_SHARE,
        "admin_share": ADMIN_SHARE,
        "internal_share": INTERNAL_SHARE,
        "empty_json_share": EMPTY_JSON_SHARE,
        "since": SINCE,
        "until": UNTIL,
        "name_samples": [sample.value for sample in samples.DISPLAY_NAMES],
        "email_samples": [sample.value for sample in samples.EMAILS],
        "json_samples": samples.json_text_samples(),
        "path_samples": [sample.value for sample in samples.PATHS],
        "type_samples": [sample.value for sample in samples.CONTENT_TYPES],
        "first_names": list(samples.FIRST_NAMES),
        "last_names": list(samples.LAST_NAMES),
        "domains": list(samples.EMAIL_DOMAINS),
        "themes": list(samples.THEMES),
        "locales": list(samples.LOCALES),
        "folders": list(samples.FOLDERS),
        "stems": list(samples.FILE_STEMS),
        "content_types": content_types,
        "extensions": [extension for _, extension in samples.CONTENT_TYPE_EXTENSIONS],
        "metadata_pool": samples.metadata_pool(),
        "from_file": 0,
        "to_file": files,
    }


def _session_settings(conn: psycopg.Connection[Any]) -> None:
    # Demo data can be regenerated: skip the WAL flush wait at each commit. Local to the
    # transaction, so a caller's connection keeps its own settings.
    conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
    conn.execute("SELECT set_config('statement_timeout', '0', true)")
    conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [INDEX_BUILD_MEMORY])


def _prepare_tables(conn: psycopg.Connection[Any], *, replace: bool) -> None:
    with conn.transaction():
        row = conn.execute(
            "SELECT to_regclass('users') IS NOT NULL AND to_regclass('files') IS NOT NULL"
        ).fetchone()
        if row is None or not row[0]:
            raise PermanentError(
                "tables users and files do not exist: apply the schema first (exportctl db migrate)"
            )
        existing = conn.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()
        if existing is not None and existing[0]:
            if not replace:
                raise TableNotEmptyError(
                    "the users table is not empty: pass --replace to delete its users and files "
                    "and seed again"
                )
            # Exports are never deleted and keep their users (ON DELETE NO ACTION), and the audit
            # trail refuses TRUNCATE: so truncate only files and delete users row by row, which
            # cascades to permissions and the like and fails if an export refers to a user.
            conn.execute("TRUNCATE files")
            try:
                with conn.transaction():
                    conn.execute("DELETE FROM users")
            except psycopg.errors.ForeignKeyViolation as exc:
                raise TableNotEmptyError(
                    f"cannot replace the users: other rows refer to them ({exc.diag.table_name})"
                ) from exc


@contextmanager
def _files_constraints_deferred(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Drop the keys, foreign keys and indexes of `files` around a bulk insert, then rebuild them.

    Checking a foreign key and inserting into two b-trees per row costs about three times the
    insert itself; building them once afterwards is a sort and a join. Runs inside the caller's
    transaction: if anything fails, the rollback restores every definition.
    """
    dependents = conn.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE confrelid = 'files'::regclass AND contype = 'f' ORDER BY conrelid, conname"
    ).fetchall()
    own = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid), contype = 'f' FROM pg_constraint"
        " WHERE conrelid = 'files'::regclass AND contype IN ('p', 'u', 'x', 'f')"
        " ORDER BY contype = 'f', conname"
    ).fetchall()
    indexes = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index AS i
        WHERE i.indrelid = 'files'::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
        """
    ).fetchall()
    for table, name, _ in dependents:
        conn.execute(_alter(table, "DROP CONSTRAINT", name))
    for name, _, _ in reversed(own):
        conn.execute(_alter("files", "DROP CONSTRAINT", name))
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    yield
    for name, definition, _ in own:
        conn.execute(_alter("files", "ADD CONSTRAINT", name, definition))
    for _, definition in indexes:
        conn.execute(sql.SQL(definition))
    for table, name, definition in dependents:
        conn.execute(_alter(table, "ADD CONSTRAINT", name, definition))


def _alter(table: str, action: str, name: str, definition: str = "") -> sql.Composed:
    """Compose ALTER TABLE from catalog-given names and definition text (never user input)."""
    statement = sql.SQL("ALTER TABLE {} {} {} ").format(
        sql.SQL(table), sql.SQL(action), sql.Identifier(name)
    )
    return statement + sql.SQL(definition)
