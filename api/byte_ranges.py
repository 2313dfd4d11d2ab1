"""Read a streamed download's `Range` and `If-Range` headers (RFC 9110 sections 14.2 and 13.1.5).

One byte range is served, so a broken download of a large export resumes where it stopped
instead of starting over. A header this module cannot honour (another unit, several ranges, a
malformed or backwards range) is ignored and the whole object is sent, as RFC 9110 allows; an
`If-Range` that is a date rather than an entity tag cannot be checked and also sends it whole.
Whether a range fits the object is the bucket's answer, not this module's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_BYTES_RANGE: Final = re.compile(r"^bytes=(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))$")
_ENTITY_TAG: Final = re.compile(r'^"[\x21\x23-\x7e\x80-\xff]*"$')


@dataclass(frozen=True)
class ByteRange:
    """Bytes `first` to `last` (inclusive; to the end when `last` is None), or the last `suffix`."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def header(self) -> str:
        """Return the range as a `Range` header value, as the bucket takes it."""
        if self.suffix is not None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"


def parse_range(value: str | None) -> ByteRange | None:
    """Return the one byte range `value` asks for, or None to send the whole object."""
    if not value:
        return None
    match = _BYTES_RANGE.match(value.strip().replace(" ", ""))
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        return ByteRange(suffix=int(suffix))
    if last and int(last) < int(first):
        return None  # a backwards range is invalid: ignored
    return ByteRange(first=int(first), last=int(last) if last else None)


def strong_entity_tag(value: str | None) -> str | None:
    """Return `If-Range`'s entity tag when it is a strong one; None for a date or a weak tag."""
    if not value:
        return None
    tag = value.strip()
    return tag if _ENTITY_TAG.match(tag) else None
