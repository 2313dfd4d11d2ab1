"""Encode an export stream as one XML 1.0 document valid against `pipelines/formats/export.xsd`.

One element per table holding one element per record, one child per column. NULL is `xsi:nil`;
a text or jsonb value holding characters XML 1.0 forbids is written as base64 of its UTF-8 with
`encoding="base64"`; `\\r` is written `&#13;` and `]]>` as `]]&gt;`.
No I/O here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

import orjson

from pipelines.formats.metadata import format_instant
from pipelines.formats.values import export_boolean, iso_timestamp
from pipelines.records import ExportHeader, ExportTrailer, Row, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint, Sections, rows_of

NAMESPACE: Final = "urn:data-export:export:1"
XSI_NAMESPACE: Final = "http://www.w3.org/2001/XMLSchema-instance"
RECORD_ELEMENTS: Final = {"users": "user", "files": "file"}

# Characters outside XML 1.0's Char production (NUL cannot come from PostgreSQL but is covered).
FORBIDDEN: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

# NULL is formatted as a NUL-based marker (PostgreSQL text never holds NUL) and turned into
# `xsi:nil` once per batch; a base64 value carries a marker that becomes its attribute.
_NIL: Final = "\x00N"
_BASE64: Final = "\x00B"
_NIL_ELEMENT: Final = re.compile(b"<([A-Za-z_][A-Za-z0-9_]*)>\x00N</\\1>")
_BASE64_ELEMENT: Final = re.compile(b"<([A-Za-z_][A-Za-z0-9_]*)>\x00B")
# C0 controls XML 1.0 forbids, as UTF-8 bytes (never part of a multi-byte sequence); NUL is left
# out because it only ever comes from the markers above.
_FORBIDDEN_BYTES: Final = bytes([*range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])
_NONCHARACTERS: Final = ("\ufffe".encode(), "\uffff".encode())
_PG_UTC_TIMESTAMP: Final = rb"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d{1,6})?)\+00"


def escape_text(text: str) -> str:
    """Return text escaped for element content: `&`, `<`, `]]>` and `\\r` as references.

    A lone `>` stays as it is (XML allows it), which keeps the batch-wide fast path and this
    value-by-value path byte-identical.
    """
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace("]]>", "]]&gt;")
        .replace("\r", "&#13;")
    )


def escape_attribute(text: str) -> str:
    """Return text escaped for a double-quoted attribute, whitespace kept by references."""
    if FORBIDDEN.search(text) is not None:
        raise ValueError(f"attribute value holds a character XML 1.0 forbids: {text!r}")
    return escape_text(text).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def _encoded(text: str) -> str:
    if FORBIDDEN.search(text) is None:
        return escape_text(text)
    return _BASE64 + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def _escaped_timestamp(text: str) -> str:
    return escape_text(iso_timestamp(text))


_CAREFUL_CONVERTERS: Final[dict[str, Callable[[str], str]]] = {
    "text": _encoded,
    "jsonb": _encoded,
    "uuid": escape_text,
    "bigint": escape_text,
    "boolean": export_boolean,
    "timestamptz": _escaped_timestamp,
}


def _row_elements(table: Table) -> Callable[[Sequence[Row]], bytes]:
    """Return a function writing rows of `table` as UTF-8 record elements.

    The fast path formats a whole batch, then escapes and converts with a few C-speed passes over
    it; a batch holding `<` or a character XML forbids takes the careful path, value by value.
    """
    record = RECORD_ELEMENTS[table.name]
    template = f"\n<{record}>"
    for column in table.columns:
        template += f"<{column.name}>%s</{column.name}>"
    template += f"</{record}>"
    markup_lt = template.count("<")
    converters = [
        (position, _CAREFUL_CONVERTERS[column.kind])
        for position, column in enumerate(table.columns)
        if column.kind in _CAREFUL_CONVERTERS
    ]
    rewrites = _batch_rewrites(table)

    def careful(rows: Sequence[Row]) -> bytes:
        lines: list[str] = []
        for row in rows:
            values = [_NIL if value is None else value for value in row]
            for position, convert in converters:
                value = values[position]
                if value is not _NIL:
                    values[position] = convert(value)
            lines.append(template % tuple(values))
        return "".join(lines).encode()

    def fast(rows: Sequence[Row]) -> bytes | None:
        lines: list[str] = []
        append = lines.append
        for row in rows:
            append(
                template % (tuple(_NIL if v is None else v for v in row) if None in row else row)
            )
        try:
            data = "".join(lines).encode()
        except UnicodeEncodeError:  # a lone surrogate
            return None
        if (
            data.count(b"<") != markup_lt * len(rows)
            or len(data.translate(None, _FORBIDDEN_BYTES)) != len(data)
            or any(noncharacter in data for noncharacter in _NONCHARACTERS)
        ):
            return None
        for pattern, replacement in rewrites:
            data = pattern.sub(replacement, data)
        # Markup holds none of these, so they can be escaped in the whole batch at once.
        for special, reference in ((b"&", b"&amp;"), (b"]]>", b"]]&gt;"), (b"\r", b"&#13;")):
            if special in data:
                data = data.replace(special, reference)
        if b"\x00" in data:
            data = _NIL_ELEMENT.sub(b'<\\1 xsi:nil="true"/>', data)
            if b"\x00" in data:  # a NUL that was not a marker: only the careful path is safe
                return None
        return data

    def elements(rows: Sequence[Row]) -> bytes:
        data = fast(rows)
        if data is None:
            data = careful(rows)
            data = _NIL_ELEMENT.sub(b'<\\1 xsi:nil="true"/>', data)
            data = _BASE64_ELEMENT.sub(b'<\\1 encoding="base64">', data)
        return data

    return elements


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
    encoders = {table.name: _row_elements(table) for table in sections.tables}
    if resume is None:
        text = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<export xmlns="{NAMESPACE}" xmlns:xsi="{XSI_NAMESPACE}" formatVersion="1">'
        )
        if include_metadata:
            text += _header_element(header)
        yield Chunk(text.encode(), None, 0)
    for batch in batches:
        rows = rows_of(batch, "xml")
        parts = [_transition(*step) for step in sections.enter(batch)]
        data = "".join(parts).encode()
        if rows:
            data += encoders[batch.table.name](rows)
        point = sections.add(batch.table, len(rows))
        yield Chunk(data, batch.cursor, len(rows), point)
    text = "".join(_transition(*step) for step in sections.finish())
    if include_metadata:
        text += _metadata_element(sections.trailer())
    yield Chunk((text + "\n</export>\n").encode(), None, 0)
