"""Rows as PostgreSQL's `COPY (SELECT name, ...) TO STDOUT (FORMAT csv, FORCE_QUOTE *)` writes
them beside the same rows as `RowBatch`es, and hypothesis strategies for rows of each column kind,
for the columnar writers' tests."""

from __future__ import annotations

from hypothesis import strategies as st

from pipelines.records import CsvRowBatch, Row, RowBatch, SourceBatch, Table

# Values of each kind as the database sends them for JSON, JSON Lines and XML: timestamps and
# booleans converted (`pipelines.sql_values`), everything else as PostgreSQL prints it.
KIND_VALUES: dict[str, st.SearchStrategy[str]] = {
    "uuid": st.uuids().map(str),
    "bigint": st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    "boolean": st.sampled_from(["true", "false"]),
    "timestamptz": st.sampled_from(
        ["2024-03-01T12:00:00.5Z", "infinity", "-infinity", "0044-03-15 12:00:00+00 BC"]
    ),
}


def row_lists(
    table: Table, text: st.SearchStrategy[str], jsonb: st.SearchStrategy[str]
) -> st.SearchStrategy[list[Row]]:
    """Return lists of rows of `table`, any value NULL, text and jsonb drawn from the given."""
    kinds = {**KIND_VALUES, "text": text, "jsonb": jsonb}
    values = [st.none() | kinds[column.kind] for column in table.columns]
    return st.lists(st.tuples(*values), max_size=6)


def copy_csv(table: Table, rows: list[Row]) -> bytes:
    """Return `rows` as `COPY (SELECT name, ...) TO STDOUT (FORMAT csv, FORCE_QUOTE *)` writes."""
    lines = []
    for row in rows:
        fields = [table.name, *row]
        cells = ["" if v is None else '"' + v.replace('"', '""') + '"' for v in fields]
        lines.append(",".join(cells) + "\n")
    return "".join(lines).encode()


def both_ways(
    users_table: Table, files_table: Table, users: list[Row], files: list[Row], split: int
) -> tuple[list[SourceBatch], list[SourceBatch]]:
    """Return the same users and files as rows and as CSV rows (files cut in two at `split`)."""
    from_rows: list[SourceBatch] = [
        RowBatch(users_table, users, None, export_values=True),
        RowBatch(files_table, files, None, export_values=True),
    ]
    from_csv: list[SourceBatch] = [
        CsvRowBatch(users_table, copy_csv(users_table, users), len(users), None),
        CsvRowBatch(files_table, copy_csv(files_table, files[:split]), len(files[:split]), None),
        CsvRowBatch(files_table, copy_csv(files_table, files[split:]), len(files[split:]), None),
    ]
    return from_rows, from_csv
