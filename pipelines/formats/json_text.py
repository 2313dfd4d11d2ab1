"""JSON object lines split into their members' exact text, at any nesting depth.

The exact reader of the JSON formats' record lines: each top-level member's value is found and
checked by a loop over tokens with an explicit stack (one byte per open array or object), never by
recursion, so a jsonb value nested as deep as PostgreSQL allows (thousands of levels, past both
orjson's limit and the interpreter's recursion limit) reads back as the exact text it was written
with. No tree of the value is built: memory is the line plus its stack.
"""

from __future__ import annotations

import json
import re
from typing import Final

from pipelines.formats.values import CorruptExportError

# One JSON token after optional whitespace. A string is matched whole (escapes checked), so what
# is inside a string is never taken for structure; possessive quantifiers keep long ones linear.
_TOKEN: Final = re.compile(
    r"""[ \t\n\r]*+(?:
      (?P<string>"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+")
    | (?P<punct>[\[\]{},:])
    | (?P<scalar>-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null)
    )""",
    re.VERBOSE,
)
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*+")
_OPENER: Final = {"]": "[", "}": "{"}

# What the scanner expects next, and what each token it may find there does.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE = range(6)
_OPEN, _CLOSE, _END, _NEXT = "open", "close", "end", "next"
_STEPS: Final[dict[tuple[int, str], int | str]] = {
    **{(state, kind): _END for state in (_VALUE, _VALUE_OR_CLOSE) for kind in ("string", "scalar")},
    **{(state, kind): _OPEN for state in (_VALUE, _VALUE_OR_CLOSE) for kind in "[{"},
    (_VALUE_OR_CLOSE, "]"): _CLOSE,
    (_KEY, "string"): _COLON,
    (_KEY_OR_CLOSE, "string"): _COLON,
    (_KEY_OR_CLOSE, "}"): _CLOSE,
    (_COLON, ":"): _VALUE,
    (_COMMA_OR_CLOSE, ","): _NEXT,
    (_COMMA_OR_CLOSE, "]"): _CLOSE,
    (_COMMA_OR_CLOSE, "}"): _CLOSE,
}


def _invalid(text: str, position: int) -> CorruptExportError:
    return CorruptExportError(f"invalid JSON at character {position}: {text[position:][:40]!r}")


def _kind(token: re.Match[str]) -> str:
    """Return `string`, `scalar`, or the punctuation character a token is."""
    kind = str(token.lastgroup)  # one alternative always matched
    return token[0][-1] if kind == "punct" else kind


def _skip_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match is not None else position


def value_end(text: str, start: int) -> tuple[int, int]:
    """Return where the JSON value at `start` (after any whitespace) begins and ends.

    The value is checked to be valid JSON as it is scanned; raise `CorruptExportError` if not.
    """
    begin = position = _skip_whitespace(text, start)
    stack: list[str] = []  # the open arrays and objects, innermost last
    expect = _VALUE
    while True:
        token = _TOKEN.match(text, position)
        kind = _kind(token) if token is not None else ""
        step = _STEPS.get((expect, kind))
        if token is None or step is None:
            raise _invalid(text, position)
        position = token.end()
        if step == _OPEN:
            stack.append(kind)
            expect = _VALUE_OR_CLOSE if kind == "[" else _KEY_OR_CLOSE
            continue
        if step == _NEXT:
            expect = _VALUE if stack[-1] == "[" else _KEY
            continue
        if isinstance(step, int):
            expect = step
            continue
        if step == _CLOSE and stack.pop() != _OPENER[kind]:
            raise _invalid(text, token.end() - 1)
        # A value (scalar, string or closed container) just ended.
        if not stack:
            return begin, position
        expect = _COMMA_OR_CLOSE


def object_members(line: bytes) -> list[tuple[str, str]]:
    """Return the keys and exact value texts of the JSON object that is the whole of `line`.

    Keys are decoded; values are the text between the colon and the next separator, without
    surrounding whitespace. Raise `CorruptExportError` unless the line is one valid JSON object.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptExportError(f"not UTF-8: {exc}") from exc
    members: list[tuple[str, str]] = []
    token = _TOKEN.match(text)
    if token is None or _kind(token) != "{":
        raise CorruptExportError("not a JSON object")
    position = token.end()
    expect_close = True  # `}` may follow `{` directly
    while True:
        token = _TOKEN.match(text, position)
        if token is not None and _kind(token) == "}":
            if not expect_close:
                raise _invalid(text, position)
            break
        if token is None or _kind(token) != "string":
            raise _invalid(text, position)
        key = json.loads(token["string"])  # a string: no nesting to recurse into
        colon = _TOKEN.match(text, token.end())
        if colon is None or _kind(colon) != ":":
            raise _invalid(text, token.end())
        begin, position = value_end(text, colon.end())
        members.append((key, text[begin:position]))
        token = _TOKEN.match(text, position)
        if token is not None and _kind(token) == ",":
            position = token.end()
            expect_close = False
            continue
        if token is None or _kind(token) != "}":
            raise _invalid(text, position)
        break
    if _skip_whitespace(text, token.end()) != len(text):
        raise _invalid(text, token.end())
    return members
