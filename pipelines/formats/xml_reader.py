"""Read the XML format back with a pull parser, clearing each record once read.

Memory stays at one record: record elements are removed from their table element as soon as
they end. `xsi:nil` gives NULL, `encoding="base64"` gives back the original characters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from typing import Final, cast
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

import orjson

from pipelines.formats.metadata import parse_instant
from pipelines.formats.stream import Event, KeyedRecords
from pipelines.formats.values import CorruptExportError, from_export_text
from pipelines.records import FORMAT_VERSION, ExportHeader, ExportTrailer, ExportType, Record

NAMESPACE: Final = "urn:data-export:export:1"
_NS: Final = "{" + NAMESPACE + "}"
_NIL: Final = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_TABLES: Final = {f"{_NS}users": "users", f"{_NS}files": "files"}
_RECORDS: Final = {f"{_NS}user": "users", f"{_NS}file": "files"}


def _text(element: Element) -> str | None:
    if element.get(_NIL) in ("true", "1"):
        return None
    text = element.text or ""
    if element.get("encoding") == "base64":
        try:
            return base64.b64decode(text, validate=True).decode("utf-8", "surrogatepass")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CorruptExportError(f"bad base64 in <{element.tag}>") from exc
    return text


def _record(records: KeyedRecords, name: str, element: Element) -> Record:
    children = list(element)
    keys = tuple(child.tag.removeprefix(_NS) for child in children)
    table = records.table(name, keys)
    values: list[str | None] = []
    for column, child in zip(table.columns, children, strict=True):
        text = _text(child)
        values.append(None if text is None else from_export_text(column.kind, text))
    return Record(table, tuple(values))


def _header(element: Element) -> ExportHeader:
    try:
        export_type = element.attrib["exportType"]
        if export_type not in ("user", "bulk"):
            raise CorruptExportError(f"unknown export type {export_type!r}")
        options = {
            option.attrib["name"]: orjson.loads(option.text or "")
            for option in element.iter(f"{_NS}option")
        }
        return ExportHeader(
            export_id=element.attrib["exportId"],
            export_type=cast(ExportType, export_type),
            snapshot_time=parse_instant(element.attrib["snapshotTime"]),
            generator_name=element.attrib["generatorName"],
            generator_version=element.attrib["generatorVersion"],
            options=options,
        )
    except KeyError as exc:
        raise CorruptExportError(f"export header lacks {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise CorruptExportError(f"export option is not JSON: {exc}") from exc


def _trailer(element: Element) -> ExportTrailer:
    try:
        counts = {c.attrib["table"]: int(c.text or "") for c in element.iter(f"{_NS}count")}
        total = int(element.attrib["records"])
    except (KeyError, ValueError) as exc:
        raise CorruptExportError(f"malformed export metadata: {exc!r}") from exc
    trailer = ExportTrailer(counts)
    if trailer.records != total:
        raise CorruptExportError(
            f"metadata says {total} records but its counts add to {trailer.records}"
        )
    return trailer


def read_xml(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the header, records and metadata of an XML export."""
    parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
    records = KeyedRecords()
    section: Element | None = None

    def events(chunk: bytes | None) -> list[tuple[str, Element]]:
        # The events of one chunk: bounded by the chunk size, and parse errors surface here.
        try:
            if chunk is None:
                parser.close()
            else:
                parser.feed(chunk)
            return list(parser.read_events())  # type: ignore[arg-type]
        except ParseError as exc:
            raise CorruptExportError(f"malformed or truncated XML: {exc}") from exc

    depth = 0  # of the element an event is about: the root is 0, header and tables 1
    for chunk in _then_end(chunks):
        for event, element in events(chunk):
            tag = element.tag
            if event == "start":
                depth += 1
                if depth == 1:
                    if tag != f"{_NS}export":
                        raise CorruptExportError(f"root element {tag} is not a data-export")
                    if element.get("formatVersion") != str(FORMAT_VERSION):
                        raise CorruptExportError("unsupported XML format version")
                elif depth == 2 and tag in _TABLES:
                    section = element
                continue
            depth -= 1
            if depth == 2 and tag in _RECORDS and section is not None:
                yield _record(records, _RECORDS[tag], element)
                section.remove(element)
            elif depth == 1 and tag == f"{_NS}header":
                yield _header(element)
            elif depth == 1 and tag == f"{_NS}metadata":
                yield _trailer(element)
            elif depth == 1 and tag in _TABLES:
                section = None


def _then_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    yield from chunks
    yield None
