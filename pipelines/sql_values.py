"""SQL expressions that give column values the text the export formats write.

PostgreSQL converts a value in a fraction of the time a Python call per value takes, so sources
that know their format ask for these instead of the raw column: timestamps as ISO 8601 UTC with
`Z` (`pipelines.formats.values.iso_timestamp`: infinities and BC dates as printed), booleans as
`true`/`false`, and for CSV text that a spreadsheet would run as a formula behind a `'`. Pure SQL
composition: no I/O here.
"""

from __future__ import annotations

from typing import Final

from psycopg import sql

from pipelines.records import Column

# The first code point of a value that spreadsheet software would run as a formula, plus the
# escape character itself (= + - @ TAB CR '), as `ascii()` returns them: the CSV serializer's
# FORMULA_TRIGGERS.
_TRIGGER_CODES: Final = sql.SQL("61, 43, 45, 64, 9, 13, 39")
# The first timestamp PostgreSQL prints without a BC suffix; earlier ones are written as printed.
_FIRST_AD_INSTANT: Final = sql.Literal("0001-01-01 00:00:00+00")


def export_timestamp(value: sql.Composable) -> sql.Composable:
    """Return `value` (a timestamptz) as 2024-03-01T12:00:00.5Z; infinities and BC as printed."""
    return sql.SQL(
        "CASE WHEN isfinite({v}) AND {v} >= {first}::timestamptz"
        " THEN replace(timezone('UTC', {v})::text, ' ', 'T') || 'Z' ELSE {v}::text END"
    ).format(v=value, first=_FIRST_AD_INSTANT)


def export_value(column: Column) -> sql.Composable:
    """Return `column` as the JSON, JSON Lines and XML formats write it: timestamps and booleans
    converted, every other kind as PostgreSQL prints it."""
    name = sql.Identifier(column.name)
    if column.kind == "timestamptz":
        return export_timestamp(name)
    if column.kind == "boolean":
        return export_boolean(name)
    return name


def export_boolean(value: sql.Composable) -> sql.Composable:
    """Return `value` (a boolean) as `true` or `false`, NULL kept."""
    return sql.SQL("CASE {v} WHEN true THEN 'true' WHEN false THEN 'false' END").format(v=value)


def neutralised_text(value: sql.Composable) -> sql.Composable:
    """Return `value` (text) behind a `'` when it starts with a formula trigger."""
    return sql.SQL("CASE WHEN ascii({v}) IN ({codes}) THEN '''' || {v} ELSE {v} END").format(
        v=value, codes=_TRIGGER_CODES
    )


def neutralised_jsonb(value: sql.Composable) -> sql.Composable:
    """Return `value` (jsonb) as text, behind a `'` when it is a negative number (starts `-`)."""
    return sql.SQL(
        "CASE WHEN jsonb_typeof({v}) = 'number' AND {v} < '0'::jsonb"
        " THEN '''' || {v}::text ELSE {v}::text END"
    ).format(v=value)
