"""Write JSON records from rows PostgreSQL sent as CSV, a column at a time with Arrow's kernels.

Arrow's CSV reader turns a `CsvRowBatch` into one string array per column, and one element-wise
join writes every record from them, so no Python runs per row or per value: what brought JSON and
JSON Lines exports under the `row_to_json | zstd -3` floor (bench/RESULTS.md).

Every value is written as `pipelines.serializers.json.row_objects` writes it: ids, timestamps and
text quoted, bigint, boolean and jsonb as PostgreSQL printed them, NULL as `null`. A regex finds
the text values holding a character JSON escapes. They are usually rare, and orjson writes them
one at a time; when a column holds many (Windows paths are full of backslashes), Arrow escapes
quotes and backslashes for the whole column and orjson writes only the values holding a control
character. Either way the bytes are exactly those of the row serializer; the tests hold them to
that on adversarial values. Pure: no I/O here.
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
# The control characters among them, left to orjson: each has its own escape (`\n`, `\u001f`).
_CONTROL: Final = r"[\x{0}-\x{1f}]"
# The two printable characters JSON escapes, as orjson escapes them: the backslash first.
_PRINTABLE_ESCAPES: Final = (("\\", "\\\\"), ('"', '\\"'))
# Above this share of a column's values needing escapes, Arrow escapes the whole column.
DENSE_SHARE: Final = 0.05


class ColumnarJsonWriter:
    """Write the records of one table's `CsvRowBatch`es as JSON objects, back to back.

    Each record is `before`, then `{`, then `prefix` (members written before the columns, with
    their trailing comma), then one member per column, then `}` and `after`. `dense_share` is the
    share of a text column's values needing escapes above which the whole column is escaped.
    """

    def __init__(
        self,
        table: Table,
        *,
        before: str = "",
        prefix: str = "",
        after: str = "",
        dense_share: float = DENSE_SHARE,
    ) -> None:
        self._read = CsvColumns(table)
        self._dense_share = dense_share
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
            escapes = _escapes(values) if column.kind == "text" else None
            if escapes is None and not values.null_count:
                pieces += ['"', values, '"']
                continue
            if escapes is None:
                strings = _quoted(values)
            elif pc.sum(escapes).as_py() > len(values) * self._dense_share:
                strings = _escaped_column(values)
            else:
                strings = replaced(_quoted(values), _orjson_strings(values, escapes))
            if values.null_count:
                strings = pc.fill_null(strings, text("null"))
            pieces.append(strings)
        pieces.append(self._closing)
        return joined_records(pieces)


def _escapes(values: Any) -> Any:
    """Return which text values hold a character JSON escapes (NULL for NULL), or None if none."""
    matches = pc.match_substring_regex(values, _NEEDS_ESCAPE)
    return matches if pc.any(matches).as_py() else None


def _quoted(values: Any) -> Any:
    """Return the values between quotes, NULL kept."""
    return pc.binary_join_element_wise(text('"'), values, text('"'), text(""))


def _orjson_strings(values: Any, chosen: Any) -> dict[int, str]:
    """Return, by row, the chosen values (a boolean array) as JSON strings written by orjson."""
    chosen = pc.fill_null(chosen, False)
    rows = pc.indices_nonzero(chosen).to_pylist()
    originals = values.filter(chosen).to_pylist()
    return {row: orjson.dumps(value).decode() for row, value in zip(rows, originals, strict=True)}


def _escaped_column(values: Any) -> Any:
    """Return the text values as JSON strings, quotes included, NULL kept.

    Quotes and backslashes are escaped for the whole column; a value holding a control character
    is written whole by orjson, which knows the escape for each.
    """
    escaped = values
    for special, escape in _PRINTABLE_ESCAPES:
        escaped = pc.replace_substring(escaped, special, escape)
    strings = _quoted(escaped)
    controls = pc.match_substring_regex(values, _CONTROL)
    if not pc.any(controls).as_py():
        return strings
    return replaced(strings, _orjson_strings(values, controls))
