"""Tell what a data object holds when no manifest says: its format from its name or first bytes.

Used for a lone object (one file or key named without its export's manifest). The compression is
told from the magic bytes by `storage.reader.iter_content`. Looks at names and bytes only: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Final

from pipelines.errors import PermanentError
from pipelines.manifest import COMPRESSION_SUFFIXES
from pipelines.serializers import EXTENSIONS

# Content bytes looked at to tell the format of an object whose name does not say it.
SNIFF_BYTES: Final = 64
# What each format's content starts with (the documented first bytes of format version 1).
FORMAT_SIGNATURES: Final = (
    (b'{"format":', "json"),
    (b'{"record_type":', "jsonl"),
    (b"record_type,", "csv"),
    (b"<?xml", "xml"),
    (b"<export", "xml"),
)


class UnknownFormatError(PermanentError):
    """Neither an object's name nor its first bytes say which export format it is."""


def format_from_name(name: str) -> str | None:
    """Return the format an object's name says (`x.csv.zst` is CSV), or None."""
    stem = name
    for suffix in COMPRESSION_SUFFIXES.values():
        if suffix and stem.endswith(suffix):
            stem = stem.removesuffix(suffix)
    return next((fmt for fmt, extension in EXTENSIONS.items() if stem.endswith(extension)), None)


def sniff_format(content: Iterator[bytes], name: str) -> tuple[str, Iterator[bytes]]:
    """Tell an object's format from its first content bytes; return it and the whole content."""
    head = b""
    pieces: list[bytes] = []
    for piece in content:
        pieces.append(piece)
        head += piece[: SNIFF_BYTES - len(head)]
        if len(head) >= SNIFF_BYTES:
            break
    for signature, export_format in FORMAT_SIGNATURES:
        if head.startswith(signature):
            return export_format, chain(pieces, content)
    raise UnknownFormatError(
        f"{name}: neither its name nor its first bytes say which export format it is"
    )
