"""Apply `schema.sql` and find where a live database has drifted from it.

What counts as "expected" is not a second hand-written list that could disagree with the file:
`schema_drift` builds `schema.sql` afresh in a scratch schema of the same database, inside a
transaction that is always rolled back, then compares the scratch schema's catalog with the live
one's (tables, columns with type, nullability and default, constraints, indexes, triggers,
functions, views and comments). Both sides come from the same server, so PostgreSQL's own
rendering of each definition can be compared verbatim. This needs CREATE on the database.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from pipelines.errors import PermanentError, RetryableError

SCHEMA_FILE_NAME = "schema.sql"
# Key of the transaction-level advisory lock that serializes concurrent `apply_schema` calls
# (a release step on two hosts at once); the bytes spell "dataexpt" so it is recognisable in
# pg_locks and unlikely to collide with another application's key.
MIGRATION_LOCK_KEY = int.from_bytes(b"dataexpt", "big") & 0x7FFF_FFFF_FFFF_FFFF
# Prefix of the throw-away schema the expected catalog is built in.
SCRATCH_SCHEMA_PREFIX = "schema_check_"

# A catalog entry is keyed by (kind, relation, name); table-level entries have an empty name and
# functions an empty relation. The value is PostgreSQL's own rendering of the definition.
CatalogKey = tuple[str, str, str]
Catalog = dict[CatalogKey, str]

# pg_trigger.tgenabled: "O" is the normal enabled state and renders as nothing.
TRIGGER_STATES = {"D": " (disabled)", "R": " (fires on replicas only)", "A": " (fires always)"}
# Kinds that describe a whole relation; every other kind belongs to one of these.
RELATION_KINDS = ("table", "view")

_RELATIONS = """
SELECT c.relname, c.relkind, pg_get_viewdef(c.oid, true), obj_description(c.oid, 'pg_class')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm')
"""

_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       col_description(c.oid, a.attnum)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0
  AND NOT a.attisdropped
"""

# PostgreSQL 18 also records NOT NULL as constraints (contype 'n'); nullability is compared per
# column instead, so both versions report it the same way.
_CONSTRAINTS = """
SELECT c.relname, k.conname, pg_get_constraintdef(k.oid, true)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND k.contype <> 'n'
"""

# Indexes that back a primary key, unique or exclusion constraint are covered by the constraint.
_INDEXES = """
SELECT t.relname, i.relname, pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %(schema)s
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint k
      WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x')
  )
"""

_TRIGGERS = """
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid, true), t.tgenabled
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT t.tgisinternal
"""

_FUNCTIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       l.lanname, pg_get_function_result(p.oid), p.provolatile, p.prosrc
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = %(schema)s AND p.prokind = 'f'
"""


def schema_sql_text() -> str:
    """Return the text of `schema.sql`, from the installed package or the source checkout."""
    packaged = resources.files("pipelines").joinpath(SCHEMA_FILE_NAME)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parent.parent / SCHEMA_FILE_NAME
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise PermanentError(f"{SCHEMA_FILE_NAME} is neither packaged with pipelines nor at {checkout}")


def apply_schema(conn: psycopg.Connection[Any], *, lock_timeout_ms: int | None = None) -> None:
    """Apply `schema.sql` to the connection's current schema in one serialized transaction.

    `lock_timeout_ms` bounds the wait for table locks, so a migration on a busy database fails
    (retryably) instead of queueing every writer behind it.
    """
    try:
        with conn.transaction():
            conn.execute("SET LOCAL client_min_messages = warning")
            if lock_timeout_ms is not None:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",)
                )
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(schema_sql_text().encode())
    except psycopg.errors.LockNotAvailable as exc:
        raise RetryableError(
            f"applying {SCHEMA_FILE_NAME} waited too long for a lock: {exc}"
        ) from exc
    except psycopg.OperationalError as exc:
        raise RetryableError(f"applying {SCHEMA_FILE_NAME} lost the database: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"applying {SCHEMA_FILE_NAME} failed: {exc}") from exc


def catalog_snapshot(conn: psycopg.Connection[Any], schema: str | None = None) -> Catalog:
    """Return the catalog entries of `schema` (default: the current schema) as comparable text."""
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        target = schema if schema is not None else _current_schema(cur)
        cur.execute("SELECT current_setting('search_path'), quote_ident(%s)", (target,))
        saved_path, quoted = _one(cur)
        # Definitions render names unqualified when their schema is the only one on the path.
        cur.execute("SELECT set_config('search_path', %s, true)", (quoted,))
        catalog = dict(_entries(cur, target, f"{quoted}."))
        cur.execute("SELECT set_config('search_path', %s, true)", (saved_path,))
    return catalog


def expected_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    """Build `schema.sql` in a scratch schema, return its catalog and roll the build back."""
    scratch = f"{SCRATCH_SCHEMA_PREFIX}{secrets.token_hex(8)}"
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
            conn.execute("SELECT set_config('search_path', quote_ident(%s), true)", (scratch,))
            conn.execute("SET LOCAL client_min_messages = warning")
            conn.execute(schema_sql_text().encode())
            return catalog_snapshot(conn, scratch)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermanentError(
            "checking the schema needs CREATE on the database (schema.sql is built in a "
            f"rolled-back scratch schema to compare with): {exc}"
        ) from exc


def schema_drift(conn: psycopg.Connection[Any]) -> list[str]:
    """List every way the current schema differs from what `schema.sql` defines."""
    try:
        expected = expected_catalog(conn)
        actual = catalog_snapshot(conn)
    except psycopg.OperationalError as exc:
        raise RetryableError(f"checking the schema lost the database: {exc}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"checking the schema failed: {exc}") from exc
    return compare_catalogs(expected, actual)


def compare_catalogs(
    expected: Mapping[CatalogKey, str], actual: Mapping[CatalogKey, str]
) -> list[str]:
    """Describe what is missing from, different in or extra on the expected relations of `actual`.

    Objects on relations that `schema.sql` does not define (the application's other tables) are
    not drift; an extra column, constraint, index or trigger on one of its relations is.
    """
    problems: list[str] = []
    for key in sorted(expected, key=_order):
        if _owner_missing(key, expected, actual):
            continue
        if key not in actual:
            # A missing relation or function is named; a missing part also shows its definition.
            detail = "" if key[0] in (*RELATION_KINDS, "function") else f": {expected[key]}"
            problems.append(f"missing {_describe(key)}{detail}")
        elif actual[key] != expected[key]:
            problems.append(
                f"different {_describe(key)}: expected {expected[key]!r}, found {actual[key]!r}"
            )
    expected_relations = {key[1] for key in expected if key[0] in RELATION_KINDS}
    for key in sorted(actual.keys() - expected.keys(), key=_order):
        if key[1] in expected_relations and not _owner_missing(key, expected, actual):
            problems.append(f"unexpected {_describe(key)}: {actual[key]}")
    return problems


def _owner_missing(
    key: CatalogKey, expected: Mapping[CatalogKey, str], actual: Mapping[CatalogKey, str]
) -> bool:
    """Tell whether the object `key` belongs to is itself missing (reported once, not per part)."""
    owners = [owner for owner in _owners(key) if owner in expected]
    return any(owner not in actual for owner in owners)


def _owners(key: CatalogKey) -> Iterator[CatalogKey]:
    kind, relation, name = key
    if kind == "function" or (kind in RELATION_KINDS and not name):
        return
    for relation_kind in RELATION_KINDS:
        yield (relation_kind, relation, "")
    if kind == "comment on column":
        yield ("column", relation, name)


def _order(key: CatalogKey) -> tuple[str, int, str]:
    kinds = ("table", "view", "column", "constraint", "index", "trigger", "function")
    rank = kinds.index(key[0]) if key[0] in kinds else len(kinds)
    return (key[1], rank, key[2])


def _describe(key: CatalogKey) -> str:
    kind, relation, name = key
    if kind == "function":
        return f"function {name}"
    return f"{kind} {relation}.{name}" if name else f"{kind} {relation}"


def _entries(
    cur: psycopg.Cursor[tuple[Any, ...]], schema: str, prefix: str
) -> Iterable[tuple[CatalogKey, str]]:
    params = {"schema": schema}

    def unqualified(text: str) -> str:
        return text.replace(prefix, "")

    for relname, relkind, viewdef, comment in _rows(cur, _RELATIONS, params):
        kind = "view" if relkind in ("v", "m") else "table"
        # Views render over many lines; one line reads better in a drift report.
        yield (
            (kind, relname, ""),
            " ".join(unqualified(viewdef).split()) if kind == "view" else kind,
        )
        if comment is not None:
            yield (f"comment on {kind}", relname, ""), comment
    for relname, column, type_name, not_null, default, identity, generated, comment in _rows(
        cur, _COLUMNS, params
    ):
        yield (
            ("column", relname, column),
            _column_text(type_name, not_null, default, identity, generated),
        )
        if comment is not None:
            yield ("comment on column", relname, column), comment
    for relname, name, definition in _rows(cur, _CONSTRAINTS, params):
        yield ("constraint", relname, name), unqualified(definition)
    for relname, name, definition in _rows(cur, _INDEXES, params):
        yield ("index", relname, name), unqualified(definition)
    for relname, name, definition, enabled in _rows(cur, _TRIGGERS, params):
        yield ("trigger", relname, name), unqualified(definition) + TRIGGER_STATES.get(enabled, "")
    for signature, language, result, volatility, source in _rows(cur, _FUNCTIONS, params):
        body = " ".join(source.split())
        text = f"{language} {volatility} returns {unqualified(result)}: {body}"
        yield ("function", "", signature), text


def _column_text(
    type_name: str, not_null: bool, default: str | None, identity: str, generated: str
) -> str:
    parts = [type_name, "not null" if not_null else "null"]
    if identity:
        parts.append(
            "generated always as identity"
            if identity == "a"
            else "generated by default as identity"
        )
    elif generated:
        parts.append(f"generated always as ({default}) stored")
    elif default is not None:
        parts.append(f"default {default}")
    return " ".join(parts)


def _rows(
    cur: psycopg.Cursor[tuple[Any, ...]], query: str, params: Mapping[str, str]
) -> list[tuple[Any, ...]]:
    # Catalog rows: a few hundred per schema, so reading them whole is bounded.
    cur.execute(query.encode(), params)
    return cur.fetchall()


def _one(cur: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:
        raise PermanentError("catalog query returned no row")
    return row


def _current_schema(cur: psycopg.Cursor[tuple[Any, ...]]) -> str:
    cur.execute("SELECT current_schema(), current_setting('search_path')")
    schema, path = _one(cur)
    if schema is None:
        raise PermanentError(f"no schema on the search_path ({path}) exists in this database")
    return str(schema)
