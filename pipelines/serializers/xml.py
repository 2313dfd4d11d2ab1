"""Encode an export stream as one XML 1.0 document valid against `pipelines/formats/export.xsd`.

One element per table holding one element per record, one child per column. NULL is `xsi:nil`;
a text or jsonb value holding characters XML 1.0 forbids is written as base64 of its UTF-8 with
`encoding="base64"`; `\\r` is written `&#13;` and `]]>` as `]]&gt;`.
No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

import orjson

from pipelines.formats.metadata import format_instant
from pipelines.records import (
    CsvRowBatch,
    ExportHeader,
    ExportTrailer,
    Row,
    RowBatch,
    SourceBatch,
    Table,
)
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of
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

NAMESPACE: Final = "urn:data-export:export:1"
XSI_NAMESPACE: Final = "http://www.w3.org/2001/XMLSchema-instance"

# Markup is laid out with NUL (which PostgreSQL text never holds) in place of `<`, so a whole batch
# can be escaped with a few C-speed replaces and the markup restored after; NUL in a value makes
# its row go the careful way, like any other character XML forbids.
_MARK: Final = "\x00"
_MARK_BYTES: Final = _MARK.encode()
# C0 controls XML 1.0 forbids, as UTF-8 bytes (never part of a multi-byte sequence), all mapped to
# one byte so a batch is searched for them in one pass; and the two forbidden noncharacters.
_FLAG: Final = b"\x01"
_FLAG_FORBIDDEN: Final = bytes.maketrans(
    FORBIDDEN_CONTROL_BYTES, _FLAG * len(FORBIDDEN_CONTROL_BYTES)
)
_PG_UTC_TIMESTAMP: Final = rb"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d{1,6})?)\+00"
# What the batch-wide pass escapes in values (markup holds none of them): `&` first.
_BATCH_ESCAPES: Final = tuple((s.encode(), r.encode()) for s, r in TEXT_ESCAPES)


def escape_attribute(text: str) -> str:
    """Return text escaped for a double-quoted attribute, whitespace kept by references."""
    if FORBIDDEN.search(text) is not None:
        raise ValueError(f"attribute value holds a character XML 1.0 forbids: {text!r}")
    return escape_text(text).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def _element(name: str, value: str | None) -> str:
    """Return one column element in batch form: NUL for `<`, the value not yet escaped."""
    if value is None:
        return _MARK + nil_element(name)[1:]
    if FORBIDDEN.search(value) is None:
        return f"{_MARK}{name}>{value}{_MARK}/{name}>"
    return base64_element(name, value).replace("<", _MARK)


class _RecordWriter:
    """Write rows of one table as UTF-8 record elements, a batch at a time.

    Each row fills a %-template (one per pattern of NULL columns); a row holding a character XML
    forbids is written value by value, with those values in base64. Then the batch is escaped,
    markup restored and, unless the database already did (`export_values`), timestamps and
    booleans rewritten, each in one C-speed pass.
    """

    def __init__(self, table: Table) -> None:
        record = RECORD_ELEMENTS[table.name]
        self._names = table.column_names
        self._width = len(self._names)
        self._opening, self._closing = f"\n{_MARK}{record}>", f"{_MARK}/{record}>"
        self._row_start = self._opening.encode()
        self._templates: dict[tuple[bool, ...], str] = {}
        self._plain = self._template((False,) * self._width)
        self._single_null = [
            self._template(tuple(i == j for j in range(self._width))) for i in range(self._width)
        ]
        self._rewrites = _batch_rewrites(table)

    def __call__(self, rows: Sequence[Row], export_values: bool) -> bytes:
        lines, marks = self._fill(rows)
        text = "".join(lines)
        try:
            data = text.encode()
        except UnicodeEncodeError:  # a lone surrogate, which only a careful row can write
            data = self._rewritten(rows, lines, range(len(lines)))
        else:
            if data.count(_MARK_BYTES) != marks:  # a value holds NUL: look at every row
                data = self._rewritten(rows, lines, range(len(lines)))
            elif any(noncharacter in data for noncharacter in NONCHARACTER_BYTES):
                found = [p for n in NONCHARACTER_BYTES for p in find_all(data, n)]
                found += find_all(data.translate(_FLAG_FORBIDDEN), _FLAG)
                suspects = rows_at(data, self._row_start, found, first_row=-1)
                data = self._rewritten(rows, lines, suspects)
            else:
                data = self._spliced(rows, data)
        for special, reference in _BATCH_ESCAPES:
            if special in data:
                data = data.replace(special, reference)
        data = data.replace(_MARK_BYTES, b"<")
        if not export_values:
            for pattern, replacement in self._rewrites:
                data = pattern.sub(replacement, data)
        return data

    def _template(self, nulls: tuple[bool, ...]) -> str:
        found = self._templates.get(nulls)
        if found is None:
            body = "".join(
                _element(name, None if null else "%s")
                for name, null in zip(self._names, nulls, strict=True)
            )
            found = self._templates[nulls] = self._opening + body + self._closing
        return found

    def _fill(self, rows: Sequence[Row]) -> tuple[list[str], int]:
        """Return each row in its template, and how many markup NULs they hold together."""
        lines: list[str] = []
        append = lines.append
        plain, single_null = self._plain, self._single_null
        # Markup NULs in a row: two per element, one per nil element, two for the record.
        full = 2 * self._width + 2
        nulls_seen = 0
        for row in rows:
            if None not in row:
                append(plain % row)
            elif row.count(None) == 1:
                position = row.index(None)
                append(single_null[position] % (row[:position] + row[position + 1 :]))
                nulls_seen += 1
            else:
                nulls = tuple(value is None for value in row)
                append(self._template(nulls) % tuple(v for v in row if v is not None))
                nulls_seen += sum(nulls)
        return lines, full * len(rows) - nulls_seen

    def _spliced(self, rows: Sequence[Row], data: bytes) -> bytes:
        """Return the batch with every row holding a forbidden control written value by value.

        One translate pass flags the controls; each flagged row is found between its record
        markers and replaced, and the search goes on after it.
        """
        flagged = data.translate(_FLAG_FORBIDDEN)
        position = flagged.find(_FLAG)
        if position < 0:
            return data
        pieces: list[bytes] = []
        rows_before, counted_to, kept_to = 0, 0, 0
        while position >= 0:
            start = data.rfind(self._row_start, 0, position)
            rows_before += data.count(self._row_start, counted_to, start)
            counted_to = start
            end = data.find(self._row_start, position)
            end = len(data) if end < 0 else end
            pieces += (data[kept_to:start], self._careful(rows[rows_before]).encode())
            kept_to = end
            position = flagged.find(_FLAG, end)
        pieces.append(data[kept_to:])
        return b"".join(pieces)

    def _rewritten(self, rows: Sequence[Row], lines: list[str], suspects: Iterable[int]) -> bytes:
        """Return the batch with the `suspects` rows written value by value."""
        for index in suspects:
            lines[index] = self._careful(rows[index])
        return "".join(lines).encode()

    def _careful(self, row: Row) -> str:
        body = "".join(_element(name, value) for name, value in zip(self._names, row, strict=True))
        return self._opening + body + self._closing


def _batch_rewrites(table: Table) -> list[tuple[re.Pattern[bytes], bytes]]:
    """Return substitutions turning timestamp and boolean columns of a batch into XML form.

    Each pattern starts with the column's opening tag (values hold no `<` on the fast path), so it
    only matches that column and the regex engine scans for it as a literal.
    """
    rewrites: list[tuple[re.Pattern[bytes], bytes]] = []
    for column in table.columns:
        opening = f"<{column.name}>".encode()
        closing = re.escape(f"</{column.name}>".encode())
        if column.kind == "timestamptz":
            pattern = re.escape(opening) + _PG_UTC_TIMESTAMP + b"(?=" + closing + b")"
            rewrites.append((re.compile(pattern), opening + b"\\1T\\2Z"))
        elif column.kind == "boolean":
            for short, word in ((b"t", b"true"), (b"f", b"false")):
                pattern = re.escape(opening + short) + b"(?=" + closing + b")"
                rewrites.append((re.compile(pattern), opening + word))
    return rewrites


def _header_element(header: ExportHeader) -> str:
    attributes = {
        "exportId": header.export_id,
        "exportType": header.export_type,
        "snapshotTime": format_instant(header.snapshot_time),
        "generatorName": header.generator_name,
        "generatorVersion": header.generator_version,
    }
    text = "\n<header"
    for name, value in attributes.items():
        text += f' {name}="{escape_attribute(value)}"'
    text += ">"
    for option, option_value in header.options.items():
        json_text = orjson.dumps(option_value).decode()
        if FORBIDDEN.search(json_text) is not None:
            raise ValueError(f"option {option} holds a character XML 1.0 forbids")
        text += f'<option name="{escape_attribute(option)}">{escape_text(json_text)}</option>'
    return text + "</header>"


def _metadata_element(trailer: ExportTrailer) -> str:
    text = f'\n<metadata records="{trailer.records}">'
    for name, count in trailer.counts.items():
        text += f'<count table="{escape_attribute(name)}">{count}</count>'
    return text + "</metadata>"


def _transition(closing: Table | None, opening: Table | None) -> str:
    text = f"\n</{closing.name}>" if closing is not None else ""
    return text + (f"\n<{opening.name}>" if opening is not None else "")


def encode_xml(
    batches: Iterable[SourceBatch],
    *,
    tables: Sequence[Table],
    header: ExportHeader,
    include_metadata: bool,
    resume: ResumePoint | None = None,
) -> Iterator[Chunk]:
    """Yield the XML document for `batches`, or only its tail after `resume`."""
    sections = Sections(tables, resume)
    encoders = {table.name: _RecordWriter(table) for table in sections.tables}
    columnar: dict[str, Callable[[CsvRowBatch], bytes]] = {}
    if resume is None:
        text = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<export xmlns="{NAMESPACE}" xmlns:xsi="{XSI_NAMESPACE}" formatVersion="1">'
        )
        if include_metadata:
            text += _header_element(header)
        yield Chunk(text.encode(), None, 0)
    for batch in batches:
        data = "".join(_transition(*step) for step in sections.enter(batch)).encode()
        if isinstance(batch, CsvRowBatch):
            writer = columnar.get(batch.table.name)
            if writer is None:
                # Arrow is imported by the first export that needs it, not by every process.
                from pipelines.serializers.xml_columns import ColumnarRecordWriter

                writer = columnar[batch.table.name] = ColumnarRecordWriter(batch.table)
            records_data = writer(batch)
            # Most batches open no section: hand the records on without copying them.
            data = data + records_data if data else records_data
            records = batch.records
        else:
            rows = rows_of(batch, "xml", export_values=True)
            export_values = isinstance(batch, RowBatch) and batch.export_values
            if rows:
                data += encoders[batch.table.name](rows, export_values)
            records = len(rows)
        point = sections.add(batch.table, records)
        yield Chunk(data, batch.cursor, records, point)
    text = "".join(_transition(*step) for step in sections.finish())
    if include_metadata:
        text += _metadata_element(sections.trailer())
    yield Chunk((text + "\n</export>\n").encode(), None, 0)
