"""The catalogue of hostile strings the seeder plants in demo data, and how to find them again.

Every value is something an application really stores and an exporter must carry through
unharmed: unicode, quotes, delimiters, line breaks, control characters, XML and spreadsheet
metacharacters, very long and empty values. Each sample names its category, so the seeder can
report coverage and tests can ask for each category. NUL is absent: PostgreSQL text cannot hold it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# A path this long exercises TOAST, line-length limits and buffer sizes of every reader.
LONG_PATH_CHARS = 12_000


@dataclass(frozen=True)
class Sample:
    """One hostile value and the category it stands for."""

    category: str
    value: str


@dataclass(frozen=True)
class CategoryTest:
    """How SQL finds a category in a text value: a regular expression, or a length bound."""

    pattern: str | None = None
    min_length: int | None = None


# Values this long count as "long"; PostgreSQL regular expressions cannot count that far.
LONG_VALUE_CHARS = 10_000

CATEGORY_TESTS: dict[str, CategoryTest] = {
    "cjk": CategoryTest(pattern="[\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]"),
    "emoji": CategoryTest(pattern="[\U0001f300-\U0001faff]"),
    "combining": CategoryTest(pattern="[\u0300-\u036f]"),
    "rtl": CategoryTest(pattern="[\u0590-\u08ff\u202e]"),
    "single_quote": CategoryTest(pattern="'"),
    "double_quote": CategoryTest(pattern='"'),
    "comma": CategoryTest(pattern=","),
    "semicolon": CategoryTest(pattern=";"),
    "newline": CategoryTest(pattern="[^\r]\n"),
    "crlf": CategoryTest(pattern="\r\n"),
    "tab": CategoryTest(pattern="\t"),
    "control": CategoryTest(pattern="[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]"),
    "noncharacter": CategoryTest(pattern="[\ufffe\uffff]"),
    "cdata_end": CategoryTest(pattern=r"\]\]>"),
    "markup": CategoryTest(pattern="<[a-z]+>|&amp;"),
    "backslash": CategoryTest(pattern=r"\\"),
    "formula": CategoryTest(pattern="^[=+@-]"),
    "long": CategoryTest(min_length=LONG_VALUE_CHARS),
    "empty": CategoryTest(pattern="^$"),
    "null_lookalike": CategoryTest(pattern=r"^(\\N|NULL|null)$"),
}

_LONG_PATH = "/" + "very-long-folder-name-\u00e9\u00e8/" * (LONG_PATH_CHARS // 24) + "end.bin"

DISPLAY_NAMES: tuple[Sample, ...] = (
    Sample("cjk", "王小明 データ 한국어"),
    Sample("emoji", "Ana 👩\u200d👩\u200d👧 🚀🇺🇦"),
    Sample("combining", "Zoe\u0308 Jose\u0301 Z\u0324\u0354\u0367\u0311a\u0316lgo"),
    Sample("rtl", "مرحبا שלום \u202eevil\u202c"),
    Sample("single_quote", "Conan O'Brien"),
    Sample("double_quote", 'The "Boss" Smith'),
    Sample("comma", "Smith, John"),
    Sample("semicolon", "Doe; Jane"),
    Sample("newline", "First line\nsecond line"),
    Sample("crlf", "Windows\r\nline"),
    Sample("tab", "Tab\tSeparated"),
    Sample("control", "bell\x01vt\x0bus\x1fdel\x7f"),
    Sample("noncharacter", "not\ufffeallowed\uffffin xml"),
    Sample("cdata_end", "end ]]> of cdata"),
    Sample("markup", "<b>bold</b> &amp; <script>alert(1)</script>"),
    Sample("backslash", "back\\slash \\N \\\\server\\share"),
    Sample("formula", '=HYPERLINK("http://example.invalid/x","click")'),
    Sample("formula", "+1+1"),
    Sample("formula", "-2+3"),
    Sample("formula", "@SUM(A1:A9)"),
    Sample("empty", ""),
    Sample("null_lookalike", "\\N"),
    Sample("null_lookalike", "NULL"),
    Sample("long", "Long " + "name " * 2_100),
)

# Whole addresses with `{n}` standing for the user's number (keeps them unique). Local parts stay
# valid-looking (RFC 5321/6531): quoted where they hold delimiters.
EMAILS: tuple[Sample, ...] = (
    Sample("single_quote", "o'brien{n}@example.com"),
    Sample("double_quote", '"john smith {n}"@example.com'),
    Sample("comma", '"smith,john{n}"@example.org'),
    Sample("semicolon", '"doe;jane{n}"@example.org'),
    Sample("backslash", '"back\\\\slash{n}"@example.net'),
    Sample("cjk", "用户{n}@例子.测试"),
    Sample("rtl", "مستخدم{n}@example.com"),
    Sample("emoji", "rocket🚀{n}@example.com"),
    Sample("combining", "jose\u0301{n}@example.com"),
    Sample("formula", "=cmd{n}@example.com"),
    Sample("formula", "+tag{n}@example.com"),
    Sample("formula", "-dash{n}@example.com"),
)

# Whole paths: a formula or a null look-alike only bites at the start of a value.
PATHS: tuple[Sample, ...] = (
    Sample("cjk", "/文档/報告書 2024.pdf"),
    Sample("emoji", "/photos/🎉 party 🥳.jpg"),
    Sample("combining", "/cafe\u0301/re\u0301sume\u0301.docx"),
    Sample("rtl", "/מסמכים/تقرير.txt"),
    Sample("single_quote", "/notes/it's mine.txt"),
    Sample("double_quote", '/notes/the "final" version.doc'),
    Sample("comma", "/data/a,b,c.csv"),
    Sample("semicolon", "/data/x;y;z.txt"),
    Sample("newline", "/notes/two\nlines.txt"),
    Sample("crlf", "/notes/dos\r\nname.txt"),
    Sample("tab", "/data/tab\tname.tsv"),
    Sample("control", "/bin/ctl\x01\x0b\x1f.bin"),
    Sample("noncharacter", "/bin/odd\ufffe\uffff.bin"),
    Sample("cdata_end", "/xml/cdata]]>.xml"),
    Sample("markup", "/web/<tag>&amp;.html"),
    Sample("backslash", "C:\\Users\\me\\file.txt"),
    Sample("formula", '=HYPERLINK("http://example.invalid","x")'),
    Sample("formula", "+sum.xlsx"),
    Sample("formula", "-minus.xlsx"),
    Sample("formula", "@at.xlsx"),
    Sample("null_lookalike", "\\N"),
    Sample("null_lookalike", "NULL"),
    # Last on purpose: the seeder draws the long path separately, and rarely.
    Sample("long", _LONG_PATH),
)

CONTENT_TYPES: tuple[Sample, ...] = (
    Sample("empty", ""),
    Sample("double_quote", 'text/csv; header="present"'),
    Sample("comma", "multipart/mixed; boundary=a,b"),
    Sample("semicolon", "text/plain; charset=utf-8; format=flowed"),
    Sample("crlf", "text/plain\r\nX-Injected: 1"),
    Sample("formula", "=cmd|' /C calc'!A0"),
    Sample("cjk", 'text/plain; name="数据.txt"'),
    Sample("backslash", "application/x-back\\slash"),
)

# Free text stored inside jsonb (users.settings->>'signature', files.metadata->>'note').
JSON_TEXTS: tuple[Sample, ...] = tuple(
    sample for sample in DISPLAY_NAMES if sample.category not in {"long"}
)

# Ordinary values the rest of the rows draw from.
FIRST_NAMES = (
    "Ana",
    "Ben",
    "Chloé",
    "Dmitri",
    "Emma",
    "Farah",
    "Giulia",
    "Hiro",
    "Ines",
    "Jonas",
    "Kwame",
    "Lena",
    "Mateo",
    "Nadia",
    "Oscar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Wei",
)
LAST_NAMES = (
    "Andersen",
    "Brown",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Hughes",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "López",
    "Müller",
    "Nakamura",
    "Okafor",
    "Patel",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Williams",
)
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.test")
FOLDERS = (
    "documents",
    "photos/2019",
    "photos/2023/summer",
    "projects/alpha/specs",
    "music",
    "scans",
    "backups/laptop",
    "shared/team",
    "invoices/2021",
    "notes",
)
FILE_STEMS = (
    "report",
    "IMG",
    "scan",
    "notes",
    "draft",
    "invoice",
    "budget",
    "slides",
    "track",
    "backup",
)
CONTENT_TYPE_EXTENSIONS = (
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("text/plain; charset=utf-8", "txt"),
    ("text/csv", "csv"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/zip", "zip"),
    ("audio/mpeg", "mp3"),
    ("video/mp4", "mp4"),
    ("application/octet-stream", "bin"),
)
THEMES = ("light", "dark", "system")
LOCALES = ("en-US", "de-DE", "ja-JP", "ar-EG", "pt-BR", "zh-Hans-CN")

# Numbers that break naive JSON handling: beyond 2**53, tiny, negative, high-precision.
AWKWARD_NUMBERS = {"big": 9007199254740993, "tiny": 1e-7, "negative": -42, "precise": 0.1}


def json_text_samples() -> list[str]:
    """Return the jsonb-embedded hostile texts as JSON documents, one per sample."""
    documents = []
    for position, sample in enumerate(JSON_TEXTS):
        document: dict[str, object] = {"note": sample.value, "tags": [sample.value, "plain"]}
        if position % 3 == 0:
            document["nested"] = {"deep": {"deeper": [None, True, False, "", {}]}}
            document["numbers"] = AWKWARD_NUMBERS
        if position % 4 == 1:
            # A hostile key as well as a hostile value.
            document[sample.value[:40] or "empty-key"] = True
        documents.append(json.dumps(document, ensure_ascii=False))
    return documents


def categories() -> list[str]:
    """Return every category the catalogue plants, in report order."""
    return list(CATEGORY_TESTS)


# Ordinary file metadata the other rows draw from.
METADATA_POOL: tuple[dict[str, object], ...] = (
    {},
    {"source": "upload"},
    {"source": "upload", "tags": ["work"]},
    {"source": "camera", "exif": {"model": "X100V", "iso": 200, "f": 2.8}},
    {"source": "sync", "device": "laptop", "version": 3},
    {"source": "email", "from": "someone@example.com"},
    {"tags": ["2021", "tax", "scan"], "pages": 4},
    {"shared": True, "with": ["team@example.org"]},
)


def metadata_pool() -> list[str]:
    """Return the ordinary metadata documents as JSON text."""
    return [json.dumps(document) for document in METADATA_POOL]
