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

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipelines.records import CsvRowBatch, Table
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
# Field name given to the record-type column each CSV record starts with (the table's name).
_RECORD_TYPE_FIELD: Final = "record type"
# Arrow's CSV reader takes its block size as a 32-bit count.
_MAX_BLOCK_BYTES: Final = 1 << 30
# Above this share of a batch's rows needing a look, Arrow escapes and searches whole columns.
DENSE_SHARE: Final = 0.05

# A literal (tags) or an Arrow string array (one value per row) in a record's layout.
Piece: TypeAlias = Any


class ColumnarRecordWriter:
    """Write the records of one table's `CsvRowBatch`es as UTF-8 XML record elements.

    `dense_share` is the share of a batch's rows needing escapes or base64 above which whole
    columns are escaped and searched rather than those rows.
    """

    def __init__(self, table: Table, *, dense_share: float = DENSE_SHARE) -> None:
        record = RECORD_ELEMENTS[table.name]
        self._table = table
        self._dense_share = dense_share
        self._fields = [_RECORD_TYPE_FIELD, *table.column_names]
        self._free_text = [i for i, c in enumerate(table.columns) if c.kind in _FREE_TEXT_KINDS]
        self._opening, self._closing = f"\n<{record}>", f"</{record}>"
        # Every record starts with its quoted table name, which a value cannot imitate
        # (`pipelines.database_csv`): what precedes a record other than the first.
        self._record_boundary = b'\n"' + table.name.encode() + b'",'
        # Every value is quoted by PostgreSQL, so an unquoted empty field is NULL and a quoted one
        # the empty string. Values may hold line breaks inside their quotes.
        self._parse = pa_csv.ParseOptions(newlines_in_values=True)
        self._convert = pa_csv.ConvertOptions(
            column_types={name: pa.large_string() for name in self._fields},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            include_columns=list(table.column_names),
        )

    def __call__(self, batch: CsvRowBatch) -> bytes:
        """Return the batch's records, each `\\n<record>...</record>`, as UTF-8."""
        if batch.table != self._table:
            raise ValueError(f"a {batch.table.name} batch given to the {self._table.name} writer")
        if not batch.records:
            return b""
        data = batch.data
        # One block for a batch (blocks are split where a record ends), within Arrow's 32-bit size.
        block_size = min(len(data) + 1, _MAX_BLOCK_BYTES)
        read = pa_csv.ReadOptions(
            column_names=self._fields, use_threads=False, block_size=block_size
        )
        parsed = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=read,
            parse_options=self._parse,
            convert_options=self._convert,
        )
        if parsed.num_rows != batch.records:
            raise ValueError(
                f"{batch.table.name} batch holds {parsed.num_rows} records, not {batch.records}"
            )
        columns = [chunked.combine_chunks() for chunked in parsed.columns]
        escaped, encoded = self._special_values(data, columns)
        pieces: list[Piece] = [self._opening]
        for position, column in enumerate(self._table.columns):
            name, values = column.name, columns[position]
            found = encoded.get(position, {})
            if not values.null_count and not found:
                pieces += [f"<{name}>", escaped[position], f"</{name}>"]
                continue
            elements = pc.binary_join_element_wise(
                _text(f"<{name}>"), escaped[position], _text(f"</{name}>"), _text("")
            )
            if values.null_count:
                elements = pc.fill_null(elements, _text(nil_element(name)))
            if found:
                elements = _replaced(elements, found)
            pieces.append(elements)
        pieces.append(self._closing)
        return _joined_bytes(pc.binary_join_element_wise(*_merged(pieces), _text("")))

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
                elif (text := escape_text(value)) != value:
                    changed[row] = text
            if changed:
                escaped[index] = _replaced(columns[index], changed)
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


def _replaced(values: Any, by_row: dict[int, str]) -> Any:
    """Return the string array `values` with the rows of `by_row` replaced by its strings."""
    mask = [False] * len(values)
    for row in by_row:
        mask[row] = True
    replacements = pa.array([by_row[row] for row in sorted(by_row)], pa.large_string())
    return pc.replace_with_mask(values, pa.array(mask, pa.bool_()), replacements)


def _merged(pieces: Sequence[Piece]) -> list[Piece]:
    """Return `pieces` with neighbouring literals joined (fewer inputs to the join), as scalars
    of the arrays' type."""
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return [_text(piece) if isinstance(piece, str) else piece for piece in merged]


def _text(literal: str) -> Any:
    """Return `literal` as an Arrow scalar of the type the columns are read as."""
    return pa.scalar(literal, pa.large_string())


def _joined_bytes(records: Any) -> bytes:
    """Return the values of a large-string array back to back: a slice of its data buffer."""
    _, offsets_buffer, data_buffer = records.buffers()
    offsets = memoryview(offsets_buffer).cast("q")
    start, end = offsets[records.offset], offsets[records.offset + len(records)]
    return memoryview(data_buffer)[start:end].tobytes()
