"""Example tests for the serializers: the documented encodings, the stream contract, the XSD."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lxml import etree

from pipelines.formats import xsd_bytes
from pipelines.records import (
    FILES,
    USERS,
    EncodedBatch,
    ExportHeader,
    Row,
    RowBatch,
    Table,
    export_tables,
)
from pipelines.serializers import ENCODERS, encode_csv, encode_json, encode_xml
from pipelines.serializers.common import ResumePoint

HEADER = ExportHeader(
    export_id="e-1",
    export_type="user",
    snapshot_time=datetime(2026, 11, 3, 9, 30, tzinfo=UTC),
    generator_name="data-export",
    generator_version="0.1.0",
)
TABLES = export_tables(False)
USER_ID = "0b5f7c1e-0000-4000-8000-000000000001"


def user(name: str, email: str = "ann@example.com") -> Row:
    return (
        USER_ID,
        email,
        name,
        "user",
        "{}",
        "2024-03-01 12:00:00.5+00",
        "2024-03-01 12:00:00+00",
    )


def encoded(encoder: object, rows: list[Row], tables: tuple[Table, ...] = TABLES) -> bytes:
    chunks = ENCODERS[encoder](  # type: ignore[index]
        [RowBatch(tables[0], rows, "c1")], tables=tables, header=HEADER, include_metadata=False
    )
    return b"".join(chunk.data for chunk in chunks)


@pytest.mark.parametrize("cell", ["=1+2", "+1", "-1", "@A1", "\tx", "\rx", "'x"])
def test_csv_prefixes_formula_triggers_and_the_escape_itself(cell: str) -> None:
    line = encoded("csv", [user(cell)]).split(b"\r\n")[1]
    assert f'"ann@example.com","\'{cell}","user"'.encode() in line


def test_csv_writes_null_unquoted_and_empty_string_quoted() -> None:
    rows = [(USER_ID, "", "n", "user", "{}", "2024-03-01 12:00:00+00", None)]
    line = encoded("csv", rows).split(b"\r\n")[1]
    assert (
        line
        == b'"users","' + USER_ID.encode() + b'","","n","user","{}","2024-03-01T12:00:00Z",,,,,,,'
    )


def test_csv_header_lists_record_type_then_the_union_of_columns() -> None:
    first = encoded("csv", []).split(b"\r\n")[0].decode()
    assert first.split(",") == [
        "record_type", "id", "email", "display_name", "role", "settings", "created_at",
        "updated_at", "owner_id", "path", "size_bytes", "content_type", "sha256", "metadata",
    ]  # fmt: skip


def test_json_writes_typed_values_and_iso_timestamps() -> None:
    files = [(USER_ID, USER_ID, "p", "9223372036854775807", "t/p", "a" * 64,
              "2024-03-01 12:00:00.123456+00", "infinity", '{"k": [1, 2.50]}')]  # fmt: skip
    chunks = encode_json(
        [RowBatch(TABLES[1], files, 1)], tables=TABLES, header=HEADER, include_metadata=False
    )
    data = b"".join(c.data for c in chunks)
    assert b'"size_bytes":9223372036854775807,' in data
    assert b'"created_at":"2024-03-01T12:00:00.123456Z","updated_at":"infinity"' in data
    assert b'"metadata":{"k": [1, 2.50]}}' in data


def test_xml_writes_only_the_rows_with_forbidden_characters_value_by_value() -> None:
    rows = [user("plain <&>"), user("nul\x00"), user("ok ]]>"), user("nonchar \uffff"), user("z")]

    data = encoded("xml", rows)

    assert b"<display_name>plain &lt;&amp;></display_name>" in data
    assert b'<display_name encoding="base64">bnVsAA==</display_name>' in data
    assert b"<display_name>ok ]]&gt;</display_name>" in data
    assert b'<display_name encoding="base64">bm9uY2hhciDvv78=</display_name>' in data
    assert b"<display_name>z</display_name>" in data
    assert data.count(b'encoding="base64"') == 2
    assert b"\x00" not in data


def test_xml_base64_encodes_values_with_forbidden_characters_even_lone_surrogates() -> None:
    data = encoded("xml", [user("bell\x07"), user("half \ud800")])
    assert b'<display_name encoding="base64">YmVsbAc=</display_name>' in data
    assert b'<display_name encoding="base64">aGFsZiDtoIA=</display_name>' in data
    etree.XMLSchema(etree.fromstring(xsd_bytes())).assertValid(etree.fromstring(data))


def test_xml_keeps_carriage_returns_and_defuses_cdata_end() -> None:
    data = encoded("xml", [user("a\r\nb]]>c<d&e>f")])
    assert b"<display_name>a&#13;\nb]]&gt;c&lt;d&amp;e>f</display_name>" in data


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_batches_out_of_table_order_are_refused(fmt: str) -> None:
    batches = [RowBatch(TABLES[1], [], 1), RowBatch(TABLES[0], [], 2)]
    with pytest.raises(ValueError, match="order"):
        list(ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=True))


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_a_row_of_the_wrong_width_is_refused(fmt: str) -> None:
    batches = [RowBatch(TABLES[0], [(USER_ID,)], 1)]
    with pytest.raises(ValueError, match="values"):
        list(ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=True))


@pytest.mark.parametrize("fmt", sorted(ENCODERS))
def test_every_batch_yields_one_chunk_with_its_cursor_and_resume_point(fmt: str) -> None:
    batches = [RowBatch(TABLES[0], [user("a"), user("b")], "u"), RowBatch(TABLES[1], [], "f")]
    chunks = list(ENCODERS[fmt](batches, tables=TABLES, header=HEADER, include_metadata=True))
    with_cursor = [c for c in chunks if c.cursor is not None]
    assert [(c.cursor, c.records) for c in with_cursor] == [("u", 2), ("f", 0)]
    assert with_cursor[0].resume == ResumePoint("users", {"users": 2, "files": 0})
    assert with_cursor[1].resume == ResumePoint("files", {"users": 2, "files": 0})
    assert ResumePoint.from_fields(with_cursor[1].resume.to_fields()) == with_cursor[1].resume


def test_empty_export_still_writes_every_table_section() -> None:
    data = b"".join(
        c.data for c in encode_xml([], tables=TABLES, header=HEADER, include_metadata=True)
    )
    assert b'\n<users>\n</users>\n<files>\n</files>\n<metadata records="0">' in data
    json_data = b"".join(
        c.data for c in encode_json([], tables=TABLES, header=HEADER, include_metadata=False)
    )
    assert (
        json_data == b'{"format":"data-export","formatVersion":1,\n"users":[\n],\n"files":[\n]\n}\n'
    )


def test_xsd_lists_exactly_the_model_columns_in_order() -> None:
    schema = etree.fromstring(xsd_bytes())
    xs = "{http://www.w3.org/2001/XMLSchema}"
    for table, type_name in ((USERS, "User"), (FILES, "File")):
        complex_type = schema.find(f"{xs}complexType[@name='{type_name}']")
        assert complex_type is not None
        elements = complex_type.findall(f"{xs}sequence/{xs}element")
        assert [e.get("name") for e in elements] == list(table.column_names)
        optional = [e.get("name") for e in elements if e.get("minOccurs") == "0"]
        assert optional == [c.name for c in table.columns if c.system]


def test_csv_metadata_rows_carry_header_and_counts_as_json() -> None:
    chunks = encode_csv(
        [RowBatch(TABLES[0], [user("a")], 1)], tables=TABLES, header=HEADER, include_metadata=True
    )
    lines = b"".join(c.data for c in chunks).split(b"\r\n")
    assert lines[0].endswith(b",export_info")
    assert lines[1].startswith(b'"header",,')
    assert b'""exportId"":""e-1""' in lines[1]
    assert (
        lines[3]
        == b'"metadata",,,,,,,,,,,,,,"{""counts"":{""users"":1,""files"":0},""records"":1}"'
    )


@pytest.mark.parametrize("export_format", ["json", "jsonl", "xml"])
def test_records_the_database_wrote_as_csv_are_refused_by_the_other_serializers(
    export_format: str,
) -> None:
    batch = EncodedBatch(TABLES[0], "csv", b'"users","x"\r\n', 1, "c1")
    chunks = ENCODERS[export_format]([batch], tables=TABLES, header=HEADER, include_metadata=False)

    with pytest.raises(ValueError, match="already written as csv"):
        list(chunks)


def test_the_csv_serializer_refuses_converted_values_it_would_convert_again() -> None:
    batch = RowBatch(TABLES[0], [user("ann")], "c1", export_values=True)
    chunks = encode_csv([batch], tables=TABLES, header=HEADER, include_metadata=False)

    with pytest.raises(ValueError, match="needs PostgreSQL's own text"):
        list(chunks)


def test_json_writes_converted_values_as_it_writes_postgres_text() -> None:
    converted = (
        USER_ID,
        "a@example.com",
        "Ann",
        "user",
        "{}",
        "2024-03-01T12:00:00.5Z",
        "2024-03-01T12:00:00Z",
    )
    as_printed = (
        USER_ID,
        "a@example.com",
        "Ann",
        "user",
        "{}",
        "2024-03-01 12:00:00.5+00",
        "2024-03-01 12:00:00+00",
    )

    def written(row: Row, export_values: bool) -> bytes:
        batch = RowBatch(TABLES[0], [row], "c1", export_values=export_values)
        chunks = encode_json([batch], tables=TABLES, header=HEADER, include_metadata=False)
        return b"".join(chunk.data for chunk in chunks)

    assert written(converted, True) == written(as_printed, False)
    assert b'"created_at":"2024-03-01T12:00:00.5Z"' in written(converted, True)
