"""Arrow helpers for serializers that write a `CsvRowBatch` a column at a time.

`CsvColumns` reads a batch (PostgreSQL's CSV: every value quoted, NULL an unquoted empty field)
into one string array per column; the other helpers build records from arrays and literals with
one element-wise join and hand the result on as bytes without a Python step per value. Arrow's
kernels run in C++ outside the GIL. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipelines.records import CsvRowBatch, Table

# Field name given to the record-type column each CSV record starts with (the table's name).
_RECORD_TYPE_FIELD: Final = "record type"
# Arrow's CSV reader takes its block size as a 32-bit count.
MAX_BLOCK_BYTES: Final = 1 << 30

# A literal (markup) or an Arrow string array (one value per row) in a record's layout.
Piece: TypeAlias = Any


class CsvColumns:
    """Read the `CsvRowBatch`es of one table into one large-string array per column."""

    def __init__(self, table: Table) -> None:
        self.table = table
        fields = [_RECORD_TYPE_FIELD, *table.column_names]
        self._fields = fields
        # Every value is quoted by PostgreSQL, so an unquoted empty field is NULL and a quoted one
        # the empty string. Values may hold line breaks inside their quotes.
        self._parse = pa_csv.ParseOptions(newlines_in_values=True)
        self._convert = pa_csv.ConvertOptions(
            column_types={name: pa.large_string() for name in fields},
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            include_columns=list(table.column_names),
        )

    def __call__(self, batch: CsvRowBatch) -> list[Any]:
        """Return the batch's values, one array per column of the table, in order."""
        if batch.table != self.table:
            raise ValueError(f"a {batch.table.name} batch given to the {self.table.name} writer")
        data = batch.data
        if not data and not batch.records:
            return [pa.array([], pa.large_string()) for _ in self.table.columns]
        # One block for a batch (blocks are split where a record ends), within Arrow's 32-bit size.
        block_size = min(len(data) + 1, MAX_BLOCK_BYTES)
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
        return [chunked.combine_chunks() for chunked in parsed.columns]


def replaced(values: Any, by_row: dict[int, str]) -> Any:
    """Return the string array `values` with the rows of `by_row` replaced by its strings."""
    mask = [False] * len(values)
    for row in by_row:
        mask[row] = True
    replacements = pa.array([by_row[row] for row in sorted(by_row)], pa.large_string())
    return pc.replace_with_mask(values, pa.array(mask, pa.bool_()), replacements)


def joined_records(pieces: Sequence[Piece]) -> bytes:
    """Return one record per row, each the row's `pieces` in order, back to back as UTF-8."""
    return joined_bytes(pc.binary_join_element_wise(*_merged(pieces), text("")))


def text(literal: str) -> Any:
    """Return `literal` as an Arrow scalar of the type the columns are read as."""
    return pa.scalar(literal, pa.large_string())


def joined_bytes(records: Any) -> bytes:
    """Return the values of a large-string array back to back: a slice of its data buffer."""
    _, offsets_buffer, data_buffer = records.buffers()
    offsets = memoryview(offsets_buffer).cast("q")
    start, end = offsets[records.offset], offsets[records.offset + len(records)]
    return memoryview(data_buffer)[start:end].tobytes()


def _merged(pieces: Sequence[Piece]) -> list[Piece]:
    """Return `pieces` with neighbouring literals joined (fewer inputs to the join), as scalars
    of the arrays' type."""
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return [text(piece) if isinstance(piece, str) else piece for piece in merged]
