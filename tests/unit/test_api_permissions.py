"""The permission model: role ceiling, grant rows narrowing it, scopes narrowing a token."""

from __future__ import annotations

import uuid

import pytest

from api.auth import Principal
from api.permissions import DEFAULT_GRANT, Action, Grant, authorize_export, can_view, require
from api.problems import ProblemError
from pipelines.options import ExportOptions, parse_options

USER = uuid.UUID("2f5e9a0c-7d3b-4e4f-9a8c-9a1b2c3d4e5f")


def principal(*scopes: str) -> Principal:
    granted = frozenset(scopes)
    return Principal(user_id=USER, is_admin="admin" in granted, scopes=granted)


def options(export_format: str = "json", *, system: bool = False) -> ExportOptions:
    return parse_options(export_format, {"includeSystemFields": system}, default_compression="zstd")


def test_a_user_without_a_row_exports_own_data_in_any_format() -> None:
    for export_format in ("json", "jsonl", "csv", "xml"):
        authorize_export(principal(), DEFAULT_GRANT, options(export_format), bulk=False)


def test_a_grant_row_never_lifts_a_user_to_bulk_or_system_fields() -> None:
    generous = Grant(can_export_bulk=True, can_include_system_fields=True, explicit=True)
    with pytest.raises(ProblemError) as bulk:
        authorize_export(principal(), generous, options(), bulk=True)
    assert bulk.value.problem_type.status == 403
    with pytest.raises(ProblemError):
        authorize_export(principal(), generous, options(system=True), bulk=False)


def test_a_grant_row_takes_rights_from_an_admin() -> None:
    admin = principal("admin")
    authorize_export(admin, DEFAULT_GRANT, options(system=True), bulk=True)
    narrowed = Grant(can_export_bulk=False, can_include_system_fields=False, explicit=True)
    with pytest.raises(ProblemError):
        authorize_export(admin, narrowed, options(), bulk=True)
    with pytest.raises(ProblemError):
        authorize_export(admin, narrowed, options(system=True), bulk=False)


def test_allowed_formats_restrict_exports() -> None:
    csv_only = Grant(allowed_formats=frozenset({"csv"}), explicit=True)
    authorize_export(principal(), csv_only, options("csv"), bulk=False)
    with pytest.raises(ProblemError) as refused:
        authorize_export(principal(), csv_only, options("xml"), bulk=False)
    assert "csv" in str(refused.value.description)


@pytest.mark.parametrize(
    ("scopes", "action", "allowed"),
    [
        ((), Action.CREATE, True),
        (("exports:read",), Action.READ, True),
        (("exports:read",), Action.CREATE, False),
        (("exports:write",), Action.VERIFY, True),
        (("admin", "exports:read"), Action.CLEANUP, False),
        (("admin", "exports:admin"), Action.CLEANUP, True),
        (("admin",), Action.SYSTEM_STATS, True),
        (("exports:admin",), Action.BULK, False),
    ],
)
def test_scopes_narrow_a_token(scopes: tuple[str, ...], action: Action, allowed: bool) -> None:
    if allowed:
        require(principal(*scopes), action)
    else:
        with pytest.raises(ProblemError):
            require(principal(*scopes), action)


def test_only_owners_and_admins_see_an_export() -> None:
    mine = {"user_id": USER}
    theirs = {"user_id": uuid.uuid4()}
    assert can_view(principal(), mine)
    assert not can_view(principal(), theirs)
    assert can_view(principal("admin"), theirs)
