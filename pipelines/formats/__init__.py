"""Reading exports back: streaming parsers for every format, and the XSD the XML format follows.

`iter_records(chunks, format=...)` returns a `RecordStream` of the records as PostgreSQL text
tuples, exactly as the row source gave them; its `header`, `trailer` and `counts` fill in as it
is read. Used by verification and restore. No I/O beyond reading the packaged schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Final

from pipelines.formats.csv_reader import read_csv
from pipelines.formats.json_reader import read_json
from pipelines.formats.jsonl_reader import read_jsonl
from pipelines.formats.stream import Event, RecordStream
from pipelines.formats.values import CorruptExportError
from pipelines.formats.xml_reader import read_xml

READERS: Final[dict[str, Callable[[Iterable[bytes]], Iterator[Event]]]] = {
    "json": read_json,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "xml": read_xml,
}

XSD_RESOURCE: Final = "export.xsd"


def iter_records(chunks: Iterable[bytes], *, format: str) -> RecordStream:
    """Return the records of an export in `format`, read from its uncompressed bytes."""
    reader = READERS.get(format)
    if reader is None:
        raise CorruptExportError(f"unknown export format {format!r}")
    return RecordStream(reader(chunks))


def xsd_bytes() -> bytes:
    """Return the XML Schema of the XML format, as shipped in the package."""
    return resources.files(__name__).joinpath(XSD_RESOURCE).read_bytes()


__all__ = ["READERS", "CorruptExportError", "RecordStream", "iter_records", "xsd_bytes"]
