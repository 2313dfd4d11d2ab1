"""Write JSON records from rows PostgreSQL sent as CSV, a column at a time with Arrow's kernels.

Arrow's CSV reader turns a `CsvRowBatch` into one string array per column, and one element-wise
join writes every record from them, so no Python runs per row or per value: what brought JSON and
JSON Lines exports under the `row_to_json | zstd -3` floor (bench/RESULTS.md).

Every value is written as `pipelines.serializers.json.row_objects` writes it: ids, timestamps and
text quoted, bigint, boolean and jsonb as PostgreSQL printed them, NULL as `null`. A regex finds
the text columns of a batch holding a character JSON escapes; in those, Arrow escapes quotes and
backslashes for the whole column (Windows paths are full of backslashes), and only the rare values
holding a control character are written by orjson, one at a time. The bytes are exactly those of
the row serializer; the tests hold the two to that on adversarial values. Pure: no I/O here.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pyarrow.compute as pc

from pipelines.records import CsvRowBatch, Table
from pipelines.serializers.arrow_columns import (
    CsvColumns,
    Piece,
    joined_records,
    replaced,
    text,
)

# Kinds written as JSON strings; the others (bigint, boolean, jsonb) are JSON text already.
_QUOTED_KINDS: Final = frozenset({"uuid", "text", "timestamptz"})
# What JSON must escape in a string (RFC 8259 §7), as RE2 (Arrow's regex engine) writes it. Ids
# and the database's timestamps never hold any; free text may.
_NEEDS_ESCAPE: Final = r'[\x{0}-\x{1f}"\\]'
_CONTROL: Final = r"[\x{0}-\x{1f}]"
# The two printable characters JSON escapes, as orjson escapes them: the backslash first.
_PRINTABLE_ESCAPES: Final = (("\\", "\\\\"), ('"', '\\"'))


class ColumnarJsonWriter:
    """Write the records of one table's `CsvRowBatch`es as JSON objects, back to back.

    Each record is `before`, then `{`, then `prefix` (members written before the columns, with
    their trailing comma), then one member per column, then `}` and `after`.
    """

    def __init__(
        self, table: Table, *, before: str = "", prefix: str = "", after: str = ""
    ) -> None:
        self._read = CsvColumns(table)
        self._table = table
        self._opening = before + "{" + prefix
        self._closing = "}" + after
        self._names = [orjson.dumps(name).decode() + ":" for name in table.column_names]

    def __call__(self, batch: CsvRowBatch) -> bytes:
        """Return the batch's records as UTF-8."""
        columns = self._read(batch)
        if not batch.records:
            return b""
        pieces: list[Piece] = [self._opening]
        for position, column in enumerate(self._table.columns):
            pieces.append(("," if position else "") + self._names[position])
            values = columns[position]
            if column.kind not in _QUOTED_KINDS:
                pieces.append(pc.fill_null(values, text("null")) if values.null_count else values)
                continue
            if column.kind == "text" and _needs_escapes(values):
                strings = _escaped_strings(values)
            elif not values.null_count:
                pieces += ['"', values, '"']
                continue
            else:
                strings = pc.binary_join_element_wise(text('"'), values, text('"'), text(""))
            if values.null_count:
                strings = pc.fill_null(strings, text("null"))
            pieces.append(strings)
        pieces.append(self._closing)
        return joined_records(pieces)


def _needs_escapes(values: Any) -> bool:
    """Return whether any of the text values holds a character JSON escapes."""
    return bool(pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPE)).as_py())


def _escaped_strings(values: Any) -> Any:
    """Return the text values as JSON strings, quotes included, NULL kept.

    Quotes and backslashes are escaped a column at a time; a value holding a control character is
    written whole by orjson, which knows the escape for each.
    """
    escaped = values
    for special, escape in _PRINTABLE_ESCAPES:
        escaped = pc.replace_substring(escaped, special, escape)
    strings = pc.binary_join_element_wise(text('"'), escaped, text('"'), text(""))
    controls = pc.fill_null(pc.match_substring_regex(values, _CONTROL), False)
    if not pc.any(controls).as_py():
        return strings
    rows = pc.indices_nonzero(controls).to_pylist()
    originals = values.filter(controls).to_pylist()
    return replaced(
        strings,
        {row: orjson.dumps(value).decode() for row, value in zip(rows, originals, strict=True)},
    )
