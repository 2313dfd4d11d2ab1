"""Chunked serializers: export streams to bytes in JSON, JSON Lines, CSV or XML.

A stream is `RowBatch`es of rows or `CsvRowBatch`es of rows the database sent as CSV (what the
sources yield for JSON, JSON Lines and XML), or for CSV `EncodedBatch`es the database wrote itself.

Each `encode_*` is a generator of `Chunk`s with the same keyword options; `ENCODERS` maps a format
name to it. Output never depends on batch sizes, and `resume=` continues after any batch's chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Literal, Protocol

from pipelines.records import ExportHeader, SourceBatch, Table
from pipelines.serializers.common import Chunk, ResumePoint
from pipelines.serializers.csv import encode_csv
from pipelines.serializers.json import encode_json
from pipelines.serializers.jsonl import encode_jsonl
from pipelines.serializers.xml import encode_xml

Format = Literal["json", "jsonl", "csv", "xml"]


class Encoder(Protocol):
    """The signature every serializer shares."""

    def __call__(
        self,
        batches: Iterable[SourceBatch],
        *,
        tables: Sequence[Table],
        header: ExportHeader,
        include_metadata: bool,
        resume: ResumePoint | None = None,
    ) -> Iterator[Chunk]: ...


ENCODERS: Final[dict[str, Encoder]] = {
    "json": encode_json,
    "jsonl": encode_jsonl,
    "csv": encode_csv,
    "xml": encode_xml,
}

# What a person needs to open the file: the extension and the media type of each format.
EXTENSIONS: Final = {"json": ".json", "jsonl": ".jsonl", "csv": ".csv", "xml": ".xml"}
MEDIA_TYPES: Final = {
    "json": "application/json",
    "jsonl": "application/jsonl",
    "csv": "text/csv; charset=utf-8; header=present",
    "xml": "application/xml",
}

__all__ = [
    "ENCODERS",
    "EXTENSIONS",
    "MEDIA_TYPES",
    "Chunk",
    "Encoder",
    "Format",
    "ResumePoint",
    "encode_csv",
    "encode_json",
    "encode_jsonl",
    "encode_xml",
]
