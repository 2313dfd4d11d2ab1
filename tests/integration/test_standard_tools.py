"""The standard tools a person would reach for read real exports: jq, xmllint with the shipped
XSD, zstd across independent frames, and Python's csv module.

These tools are system packages (`apt-get install -y jq libxml2-utils zstd`): where one is missing
its tests are skipped with that command, except under `.ci/run`, which installs them and fails
instead (`tests/system_tools.py`).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import zstandard
from system_tools import system_tool

from pipelines.formats import xsd_bytes
from pipelines.records import ExportHeader, Row, RowBatch, export_tables
from pipelines.serializers import ENCODERS

# The Debian package of each tool.
PACKAGES = {"jq": "jq", "xmllint": "libxml2-utils", "zstd": "zstd"}
TABLES = export_tables(True)
HEADER = ExportHeader(
    export_id="e-tools",
    export_type="user",
    snapshot_time=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
    generator_name="data-export",
    generator_version="0.1.0",
    options={"includeMetadata": True, "includeSystemFields": True},
)
OWNER = "0b5f7c1e-0000-4000-8000-000000000001"
USERS: list[Row] = [
    (OWNER, "ann@example.com", '=HYPERLINK("http://x"),\r\n]]>', "user", '{"tz": "Europe/Zürich"}',
     "2024-03-01 12:00:00.5+00", "2024-03-01 12:00:00+00", None, "f"),
]  # fmt: skip
FILES: list[Row] = [
    (f"1b5f7c1e-0000-4000-8000-{n:012d}", OWNER, f"docs/{n}, \"q\"\x07😀.txt", str(n * 1000),
     "text/plain", "0" * 64, "2024-03-01 12:00:00+00", "2024-03-02 00:00:00.000001+00",
     '{"tags": ["a", "b"], "n": 1.50}', f"objects/{n}", None if n % 2 else "2024-05-01 00:00:00+00")
    for n in range(50)
]  # fmt: skip


def tool(name: str) -> str:
    """Return the path of a system tool, skipping (or failing under CI) when it is absent."""
    return system_tool(name, package=PACKAGES[name])


def export(fmt: str) -> bytes:
    batches = [RowBatch(TABLES[0], USERS, 1)] + [
        RowBatch(TABLES[1], FILES[i : i + 7], 2 + i) for i in range(0, len(FILES), 7)
    ]
    chunks = ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=True)
    return b"".join(chunk.data for chunk in chunks)


def run(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(args, input=stdin, capture_output=True, check=True, timeout=60).stdout


def test_jq_reads_the_json_document() -> None:
    out = run(tool("jq"), "-c", "[(.users|length), (.files|length), .metadata.records,"
              " .users[0].display_name, .files[1].metadata.n]", stdin=export("json"))  # fmt: skip
    assert json.loads(out) == [1, 50, 51, USERS[0][2], 1.5]


def test_jq_reads_every_json_line() -> None:
    out = run(
        tool("jq"), "-c", 'select(.record_type == "files") | .size_bytes', stdin=export("jsonl")
    )
    assert [int(line) for line in out.split()] == [n * 1000 for n in range(50)]


def test_xmllint_validates_the_xml_against_the_shipped_xsd(tmp_path: Path) -> None:
    schema = tmp_path / "export.xsd"
    schema.write_bytes(xsd_bytes())
    document = tmp_path / "export.xml"
    document.write_bytes(export("xml"))
    result = subprocess.run(
        [tool("xmllint"), "--noout", "--schema", str(schema), str(document)],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert b"validates" in result.stderr


def test_zstd_decompresses_independent_frames_into_a_document_jq_reads() -> None:
    data = export("json")
    middle = len(data) // 2
    compressor = zstandard.ZstdCompressor(level=3)
    framed = compressor.compress(data[:middle]) + compressor.compress(data[middle:])
    plain = run(tool("zstd"), "-dc", stdin=framed)
    assert plain == data
    assert json.loads(run(tool("jq"), "-c", ".metadata.counts", stdin=plain)) == {
        "users": 1,
        "files": 50,
    }


def test_python_csv_reads_the_csv_with_formulas_neutralised() -> None:
    rows = list(csv.reader(io.StringIO(export("csv").decode("utf-8"), newline="")))
    header, users, files = rows[0], rows[2], rows[3:-1]
    assert header[0] == "record_type"
    assert users[header.index("display_name")] == "'" + USERS[0][2]
    assert [row[header.index("path")] for row in files] == [f[2] for f in FILES]
    assert rows[-1][0] == "metadata"
