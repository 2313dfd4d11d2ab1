"""Write XML records from rows PostgreSQL sent as CSV, a column at a time with Arrow's kernels.

Arrow's CSV reader turns a `CsvRowBatch` into one string array per column, and one element-wise
join writes every record from them: C++ passes over columns instead of Python work per value,
which is what brings XML close to the cost of CSV (bench/RESULTS.md).

Values that need escaping or hold a character XML 1.0 forbids are rare, so their rows are found
in the batch's bytes first (one pass flagging the bytes that start one, one search for `]]>`) and
only those rows' values are written in Python: escaped, or as base64 elements. When such rows are
common in a batch, Arrow escapes whole columns and a regex finds the forbidden values instead.
Either way the bytes are exactly those `pipelines.serializers.xml` writes from rows; the tests
hold the two to that on adversarial values. Pure: no I/O here.
"""

from __future__ import annotations

from typing import Any, Final

import pyarrow.compute as pc

from pipelines.records import CsvRowBatch, Table
from pipelines.serializers.arrow_columns import CsvColumns, Piece, joined_records, replaced, text
from pipelines.serializers.xml_markup import (
    FORBIDDEN,
    FORBIDDEN_CONTROL_BYTES,
    NONCHARACTER_BYTES,
    RECORD_ELEMENTS,
    TEXT_ESCAPES,
    base64_element,
    escape_text,
    find_all,
    nil_element,
    rows_at,
)

# Bytes that start something a value cannot be written with as it is: a markup character (`&`,
# `<`, `\r`; `]]>` is searched for apart), a C0 control XML forbids (single UTF-8 bytes, never part
# of a multi-byte sequence) or the lead byte of U+FFFE/U+FFFF (which also leads other characters).
# One pass maps them all to a flag byte, NUL, which PostgreSQL text never holds.
_FLAG: Final = b"\x00"
_FORBIDDEN_CONTROLS: Final = _FLAG + FORBIDDEN_CONTROL_BYTES  # NUL too: it is forbidden as well
_MARKED: Final = _FORBIDDEN_CONTROLS + b"&<\r\xef"
_FLAG_MARKED: Final = bytes.maketrans(_MARKED, _FLAG * len(_MARKED))
_FLAG_FORBIDDEN: Final = bytes.maketrans(_FORBIDDEN_CONTROLS, _FLAG * len(_FORBIDDEN_CONTROLS))
_CDATA_END: Final = b"]]>"
# The characters XML 1.0 forbids that valid UTF-8 can hold, as RE2 (Arrow's regex engine) writes
# them.
_FORBIDDEN_PATTERN: Final = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{fffe}\x{ffff}]"
# Columns whose values may hold markup or forbidden characters; ids, numbers and converted
# timestamps and booleans never do.
_FREE_TEXT_KINDS: Final = frozenset({"text", "jsonb"})
# Above this share of a batch's rows needing a look, Arrow escapes and searches whole columns.
DENSE_SHARE: Final = 0.05


class ColumnarRecordWriter:
    """Write the records of one table's `CsvRowBatch`es as UTF-8 XML record elements.

    `dense_share` is the share of a batch's rows needing escapes or base64 above which whole
    columns are escaped and searched rather than those rows.
    """

    def __init__(self, table: Table, *, dense_share: float = DENSE_SHARE) -> None:
        record = RECORD_ELEMENTS[table.name]
        self._read = CsvColumns(table)
        self._table = table
        self._dense_share = dense_share
        self._free_text = [i for i, c in enumerate(table.columns) if c.kind in _FREE_TEXT_KINDS]
        self._opening, self._closing = f"\n<{record}>", f"</{record}>"
        # Every record starts with its quoted table name, which a value cannot imitate
        # (`pipelines.database_csv`): what precedes a record other than the first.
        self._record_boundary = b'\n"' + table.name.encode() + b'",'

    def __call__(self, batch: CsvRowBatch) -> bytes:
        """Return the batch's records, each `\\n<record>...</record>`, as UTF-8."""
        columns = self._read(batch)
        if not batch.records:
            return b""
        data = batch.data
        escaped, encoded = self._special_values(data, columns)
        pieces: list[Piece] = [self._opening]
        for position, column in enumerate(self._table.columns):
            name, values = column.name, columns[position]
            found = encoded.get(position, {})
            if not values.null_count and not found:
                pieces += [f"<{name}>", escaped[position], f"</{name}>"]
                continue
            elements = pc.binary_join_element_wise(
                text(f"<{name}>"), escaped[position], text(f"</{name}>"), text("")
            )
            if values.null_count:
                elements = pc.fill_null(elements, text(nil_element(name)))
            if found:
                elements = replaced(elements, found)
            pieces.append(elements)
        pieces.append(self._closing)
        return joined_records(pieces)

    def _special_values(
        self, data: bytes, columns: list[Any]
    ) -> tuple[list[Any], dict[int, dict[int, str]]]:
        """Return the columns with markup escaped, and per column position the base64 elements
        of values holding forbidden characters, by row."""
        limit = len(columns[0]) * self._dense_share
        positions = find_all(data.translate(_FLAG_MARKED), _FLAG, limit + 1)
        positions += find_all(data, _CDATA_END, limit + 1)
        if len(positions) > limit:
            return self._escaped_columns(data, columns), self._forbidden_by_regex(data, columns)
        escaped = list(columns)
        encoded: dict[int, dict[int, str]] = {}
        rows = rows_at(data, self._record_boundary, positions)
        for index in self._free_text:
            changed: dict[int, str] = {}
            for row in rows:
                value = columns[index][row].as_py()
                if value is None:
                    continue
                if FORBIDDEN.search(value) is not None:
                    name = self._table.columns[index].name
                    encoded.setdefault(index, {})[row] = base64_element(name, value)
                elif (escaped_value := escape_text(value)) != value:
                    changed[row] = escaped_value
            if changed:
                escaped[index] = replaced(columns[index], changed)
        return escaped, encoded

    def _escaped_columns(self, data: bytes, columns: list[Any]) -> list[Any]:
        """Return the columns with every free-text column escaped by Arrow."""
        escaped = list(columns)
        for special, reference in TEXT_ESCAPES:
            if special.encode() in data:
                for index in self._free_text:
                    escaped[index] = pc.replace_substring(escaped[index], special, reference)
        return escaped

    def _forbidden_by_regex(self, data: bytes, columns: list[Any]) -> dict[int, dict[int, str]]:
        """Return the base64 elements of values holding forbidden characters, found by regex."""
        encoded: dict[int, dict[int, str]] = {}
        if _FLAG not in data.translate(_FLAG_FORBIDDEN) and not any(
            noncharacter in data for noncharacter in NONCHARACTER_BYTES
        ):
            return encoded
        for index in self._free_text:
            values = columns[index]
            matches = pc.fill_null(pc.match_substring_regex(values, _FORBIDDEN_PATTERN), False)
            if pc.any(matches).as_py():
                name = self._table.columns[index].name
                rows = pc.indices_nonzero(matches).to_pylist()
                originals = values.filter(matches).to_pylist()
                encoded[index] = {
                    row: base64_element(name, value)
                    for row, value in zip(rows, originals, strict=True)
                }
        return encoded
