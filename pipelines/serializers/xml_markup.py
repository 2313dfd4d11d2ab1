"""What both XML record writers share: record names, escapes, the characters XML 1.0 forbids, and
the byte scans that find the few rows needing them.

`pipelines.serializers.xml` writes rows value by value, `pipelines.serializers.xml_columns` a
column at a time; both take these so their bytes cannot drift apart. No I/O here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final

RECORD_ELEMENTS: Final = {"users": "user", "files": "file"}

# Escapes for element content, applied in this order (`&` first). A lone `>` stays as it is (XML
# allows it); `]]>` is escaped because it may not appear in content, `\r` so parsers keep it.
TEXT_ESCAPES: Final = (("&", "&amp;"), ("<", "&lt;"), ("]]>", "]]&gt;"), ("\r", "&#13;"))

# Characters outside XML 1.0's Char production (NUL cannot come from PostgreSQL but is covered).
FORBIDDEN: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# The same, as the UTF-8 a batch holds, for byte scans: the C0 controls from U+0001 (single bytes,
# never part of a multi-byte sequence; each writer decides about NUL, which it may use as a mark)
# and the two noncharacters.
FORBIDDEN_CONTROL_BYTES: Final = bytes([*range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])
NONCHARACTER_BYTES: Final = ("\ufffe".encode(), "\uffff".encode())


def escape_text(text: str) -> str:
    """Return text escaped for element content: `&`, `<`, `]]>` and `\\r` as references."""
    for special, reference in TEXT_ESCAPES:
        text = text.replace(special, reference)
    return text


def nil_element(name: str) -> str:
    """Return the element for a NULL value of column `name`."""
    return f'<{name} xsi:nil="true"/>'


def base64_element(name: str, value: str) -> str:
    """Return the element for a value holding characters XML forbids: base64 of its UTF-8."""
    encoded = base64.b64encode(value.encode("utf-8", "surrogatepass")).decode("ascii")
    return f'<{name} encoding="base64">{encoded}</{name}>'


def find_all(data: bytes, needle: bytes, limit: float | None = None) -> list[int]:
    """Return the offsets of `needle` in `data`, stopping once `limit` are found."""
    found: list[int] = []
    position = data.find(needle)
    while position >= 0 and (limit is None or len(found) < limit):
        found.append(position)
        position = data.find(needle, position + 1)
    return found


def rows_at(
    data: bytes, marker: bytes, positions: Iterable[int], *, first_row: int = 0
) -> list[int]:
    """Return the rows (in order, once each) holding the byte offsets `positions`.

    A row's number is `first_row` plus the count of `marker` before the offset: with a marker
    that starts every row, pass -1; with one between rows, 0. No marker may straddle an offset.
    """
    rows: list[int] = []
    row, counted_to = first_row, 0
    for position in sorted(positions):
        row += data.count(marker, counted_to, position)
        counted_to = position
        if not rows or rows[-1] != row:
            rows.append(row)
    return rows
