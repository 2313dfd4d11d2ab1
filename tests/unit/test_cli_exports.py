"""`exportctl exports` and its API client: settings, file names, digest-checked saving."""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest

from exportctl.api_client import (
    ApiClient,
    ApiError,
    DigestMismatchError,
    _BrokenOffError,
    _error,
    _file_name,
    _Partial,
    _receive,
)
from exportctl.cli import build_parser
from exportctl.commands.exports import (
    EXIT_UNUSABLE,
    EXIT_USABLE,
    EXIT_WATCH_GAVE_UP,
    client_from_args,
    show_status,
)
from exportctl.follow import describe, settled
from pipelines.errors import PermanentError

BODY = b"id,name\n1,Ada\n" * 10_000


class Response(io.BytesIO):
    """A 200 answer's body with the headers `_receive` reads."""

    status = 200

    def __init__(self, data: bytes, *, length: int | None = None) -> None:
        super().__init__(data)
        self._length = len(data) if length is None else length

    def getheader(self, name: str) -> str | None:
        return str(self._length) if name == "Content-Length" else None


def _args(**values: str | None) -> argparse.Namespace:
    return argparse.Namespace(api=values.get("api"), token=values.get("token"))


def _partial(path: Path) -> _Partial:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _Partial(path.with_name(path.name + ".partial"))


def test_matching_digest_keeps_the_file_and_reports_progress(tmp_path: Path) -> None:
    seen: list[int] = []
    saved = _receive(
        Response(BODY),  # type: ignore[arg-type]
        _partial(tmp_path / "out" / "export.csv"),
        expected_sha256=hashlib.sha256(BODY).hexdigest().upper(),
        progress=lambda done, total: seen.append(done),
    )
    assert saved.path.read_bytes() == BODY
    assert saved.size_bytes == len(BODY)
    assert seen[-1] == len(BODY)
    assert list(saved.path.parent.iterdir()) == [saved.path]


def test_digest_mismatch_leaves_no_file_behind(tmp_path: Path) -> None:
    with pytest.raises(DigestMismatchError, match="differs"):
        _receive(
            Response(BODY),  # type: ignore[arg-type]
            _partial(tmp_path / "export.csv"),
            expected_sha256="0" * 64,
            progress=None,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_short_body_keeps_what_arrived_for_a_resume(tmp_path: Path) -> None:
    partial = _partial(tmp_path / "export.csv")
    with pytest.raises(_BrokenOffError) as broken:
        _receive(
            Response(BODY, length=len(BODY) + 10_000),  # type: ignore[arg-type]
            partial,
            expected_sha256=hashlib.sha256(BODY).hexdigest(),
            progress=None,
        )
    assert "got 140000 bytes of 150000" in str(broken.value.__cause__)
    assert partial.size == len(BODY)
    assert partial.path.read_bytes() == BODY
    assert partial.resume_headers() == {}  # no ETag: nothing proves the rest is the same object


def test_file_name_comes_from_the_server_but_never_leaves_the_folder() -> None:
    disposition = 'attachment; filename="data-export-1-user.csv.zst"'
    assert _file_name("1", disposition, "http://s3/x") == "data-export-1-user.csv.zst"
    assert _file_name("1", 'attachment; filename="../../etc/passwd"', "") == "passwd"
    assert _file_name("1", None, "http://s3/b/exports/1/manifest.json?X=1") == (
        "data-export-1-manifest.json"
    )
    assert _file_name("1", 'attachment; filename=".."', "") == "data-export-1"


def test_problem_details_become_a_readable_error() -> None:
    error = _error(409, b'{"title": "Conflict", "detail": "this one is running."}')
    assert str(error) == "HTTP 409: Conflict: this one is running."
    assert error.status == 409
    assert str(_error(403, b"<Error><Code>AccessDenied</Code></Error>")).startswith("HTTP 403: <")


def test_client_needs_an_api_url_and_a_token() -> None:
    with pytest.raises(PermanentError, match="EXPORTCTL_API_URL and --token"):
        client_from_args(_args(), {})
    client = client_from_args(_args(token="t"), {"EXPORTCTL_API_URL": "http://127.0.0.1:8000/"})
    assert client.base_url == "http://127.0.0.1:8000"
    with pytest.raises(ApiError, match="http"):
        ApiClient("127.0.0.1:8000", "t")


def test_an_export_settles_when_failed_or_verified() -> None:
    running = {"status": "running", "progress": 40, "verification": {"status": "pending"}}
    verifying = {"status": "completed", "verification": {"status": "pending"}}
    verified = {"status": "completed", "verification": {"status": "passed"}}
    failed = {"status": "failed", "error": {"message": "too large"}, "verification": {}}
    assert [settled(d) for d in (running, verifying, verified, failed)] == [
        False,
        False,
        True,
        True,
    ]
    assert describe(running, "-") == "running 40%"
    assert describe(verifying, "-") == "verifying"
    assert describe(verified, "-") == "verified"
    assert describe(failed, "-") == "FAILED: too large"
    assert describe(None, "due at 10:00:05") == "due at 10:00:05"


EXPORT_ID = "0b6f8a52-6a3e-4f3c-9a57-3f1f4c1d2e10"


class StatusApi:
    """Answers every status request with the next document, then keeps giving the last one."""

    def __init__(self, *documents: dict[str, Any]) -> None:
        self._documents = list(documents)

    def get(self, path: str, params: Any = None) -> dict[str, Any]:
        assert path == f"/api/exports/{EXPORT_ID}/status"
        document = self._documents.pop(0) if len(self._documents) > 1 else self._documents[0]
        return {"export": document}


def _document(status: str, verification: str = "pending", **extra: Any) -> dict[str, Any]:
    return {
        "id": EXPORT_ID,
        "type": "user",
        "status": status,
        "format": "json",
        "compression": "zstd",
        "userId": "u1",
        "verification": {"status": verification},
        **extra,
    }


def _status(api: StatusApi, *, watch: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = show_status(
        api,  # type: ignore[arg-type]
        EXPORT_ID,
        watch=watch,
        out=out,
        err=err,
        watch_seconds=0,
    )
    return code, out.getvalue(), err.getvalue()


def test_status_of_a_verified_export_exits_0() -> None:
    code, out, err = _status(StatusApi(_document("completed", "passed")), watch=True)
    assert (code, err) == (EXIT_USABLE, "")
    assert "verified" in out


def test_status_of_an_export_whose_verification_failed_exits_1_saying_so() -> None:
    code, out, err = _status(StatusApi(_document("completed", "failed")))
    assert code == EXIT_UNUSABLE
    assert "verification FAILED" in out
    assert f"export {EXPORT_ID} completed, but its verification FAILED" in err


def test_status_of_an_expired_export_exits_1_saying_so() -> None:
    code, _, err = _status(StatusApi(_document("expired", "passed")), watch=True)
    assert code == EXIT_UNUSABLE
    assert f"export {EXPORT_ID} expired" in err


def test_status_of_a_failed_export_exits_1_with_its_reason() -> None:
    failed = _document("failed", error={"code": "stuck", "message": "the worker w1 stopped"})
    code, _, err = _status(StatusApi(failed))
    assert code == EXIT_UNUSABLE
    assert f"export {EXPORT_ID} failed: the worker w1 stopped" in err


def test_watch_that_gives_up_on_a_running_export_exits_3() -> None:
    running = _document("running", progress=40)
    code, out, err = _status(StatusApi(running), watch=True)
    assert code == EXIT_WATCH_GAVE_UP
    assert "running 40%" in out
    assert "is still running 40% after 0 s of --watch" in err


def test_watch_that_gives_up_while_verification_is_pending_exits_3() -> None:
    code, _, err = _status(StatusApi(_document("completed")), watch=True)
    assert code == EXIT_WATCH_GAVE_UP
    assert "is still verifying" in err


def test_status_without_watch_of_a_running_export_exits_0() -> None:
    assert _status(StatusApi(_document("running", progress=10)))[0] == EXIT_USABLE


def test_watch_reports_an_export_that_settled_after_follow_gave_up() -> None:
    api = StatusApi(_document("running"), _document("completed", "passed"))
    assert _status(api, watch=True)[0] == EXIT_USABLE


def test_status_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["exports", "status", "--help"])
    help_text = capsys.readouterr().out
    assert "exit status:" in help_text
    for code in (EXIT_USABLE, EXIT_UNUSABLE, EXIT_WATCH_GAVE_UP):
        assert f"\n  {code}  " in help_text
